// An MCP client we did not write: the TypeScript SDK's Client over streamable HTTP, from the npm
// install of hack/mcp-everything.sh. Runs a list of steps against one server and prints one JSON line
// with what each step gave, so a test can drive it as a process.
//
//   node mcp_ts_client.mjs <install dir> <url> <bearer key or ""> '<steps as JSON>'
//   steps: [{"op": "list"} | {"op": "call", "name": ..., "arguments": {...}, "progress": true?}, ...]
//   output: {"connected": true, "session": <id or null>, "protocol": ..., "steps": [{"ok": true, "result": ...,
//            "progress": [<notifications/progress params>]} | {"ok": false, "code": <JSON-RPC code or null>,
//            "message": ...}]}  or  {"connected": false, ...}
import { pathToFileURL } from "node:url";

const [install, url, key, stepsJson] = process.argv.slice(2);
const sdk = (path) =>
  import(pathToFileURL(`${install}/node_modules/@modelcontextprotocol/sdk/dist/esm/${path}`).href);
const { Client } = await sdk("client/index.js");
const { StreamableHTTPClientTransport } = await sdk("client/streamableHttp.js");

const headers = key ? { Authorization: `Bearer ${key}` } : {};
const transport = new StreamableHTTPClientTransport(new URL(url), { requestInit: { headers } });
const client = new Client({ name: "strata-interop", version: "1.0.0" });
const failure = (error) => ({ ok: false, code: typeof error?.code === "number" ? error.code : null,
                              message: String(error?.message ?? error) });

try {
  await client.connect(transport);
} catch (error) {
  console.log(JSON.stringify({ connected: false, ...failure(error) }));
  process.exit(0);
}
const steps = [];
for (const step of JSON.parse(stepsJson)) {
  const progress = [];
  const options = step.progress ? { onprogress: (note) => progress.push(note) } : undefined;
  try {
    const result = step.op === "list"
      ? await client.listTools()
      : await client.callTool({ name: step.name, arguments: step.arguments ?? {} }, undefined, options);
    steps.push({ ok: true, result, progress });
  } catch (error) {
    steps.push(failure(error));
  }
}
console.log(JSON.stringify({ connected: true, session: transport.sessionId ?? null,
                             protocol: transport.protocolVersion ?? null, steps }));
await client.close();
process.exit(0);
