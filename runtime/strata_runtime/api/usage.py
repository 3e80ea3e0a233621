"""`GET /api/v1/usage?agent=&model=&tenant=&start=&end=&groupBy=`: aggregated usage and cost.

A tenant (API key) sees only its own usage; an internal caller (service token) sees all.
Dates are UTC `YYYY-MM-DD`, inclusive; the default range is the last 7 days.
"""

from __future__ import annotations

import datetime as dt

import orjson
from fastapi import APIRouter, Response

from strata_runtime.api.deps import ANY_CALLER, AnyCaller, ServicesDep
from strata_runtime.errors import BadRequest
from strata_runtime.ids import checked_id
from strata_runtime.usage import UsageQuery
from strata_runtime.usage.recorder import MAX_RANGE_DAYS

router = APIRouter(dependencies=ANY_CALLER)

_GROUPS = ("date", "tenant", "agent", "model")


def _date(value: str | None, field: str, default: dt.date) -> dt.date:
    if value is None:
        return default
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise BadRequest(f"{field} must be a date YYYY-MM-DD", field=field) from None


@router.get("/api/v1/usage")
async def usage(services: ServicesDep, caller: AnyCaller, *, tenant: str | None = None, agent: str | None = None,
                model: str | None = None, start: str | None = None, end: str | None = None,
                groupBy: str | None = None) -> Response:
    tenant = checked_id(tenant, "tenant")
    if not caller.internal and services.auth.mode != "none":  # a tenant reads its own usage only
        tenant = services.auth.tenant_of(caller, tenant, field="tenant")
    today = dt.datetime.now(dt.UTC).date()
    end_date = _date(end, "end", today)
    # the default week ends at `end`, and starts no earlier than the first day a date can hold
    start_date = _date(start, "start", end_date - dt.timedelta(days=min(6, (end_date - dt.date.min).days)))
    if start_date > end_date:
        raise BadRequest("start is after end", field="start")
    if (end_date - start_date).days >= MAX_RANGE_DAYS:
        raise BadRequest(f"the range may span at most {MAX_RANGE_DAYS} days", field="start")
    group_by = tuple(g.strip() for g in (groupBy or "tenant,agent,model").split(",") if g.strip())
    if not group_by or any(g not in _GROUPS for g in group_by):
        raise BadRequest(f"groupBy is a comma list of {', '.join(_GROUPS)}", field="groupBy")
    query = UsageQuery(start=start_date, end=end_date, tenant=tenant,
                       agent=checked_id(agent, "agent"), model=model, group_by=group_by)
    result = await services.gateway.usage.query(query)
    return Response(orjson.dumps(result), media_type="application/json")
