-- Argo CD health of a strata.dev CachePolicy or RoutingPolicy: Ready=True means valid.
local hs = {status = "Progressing", message = "Waiting for the Strata operator"}
if obj.status == nil or obj.status.conditions == nil then
  return hs
end
for _, c in ipairs(obj.status.conditions) do
  if c.type == "Ready" then
    if c.status == "True" then
      hs.status = "Healthy"
    else
      hs.status = "Degraded"
    end
    hs.message = c.reason .. ": " .. (c.message or "")
  end
end
return hs
