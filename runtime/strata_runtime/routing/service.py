"""Routing one message of a tenant's agent: the one entry point of `/api/v1/query`, `/internal/route`
and `/internal/llm/proxy`, so they all decide the same way."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from strata_runtime.errors import Forbidden, NotFound
from strata_runtime.gateway.contract import CallContext
from strata_runtime.messages import text_of
from strata_runtime.routing.decision import RouteDecision
from strata_runtime.routing.prompt import chosen_skill, system_prompt

if TYPE_CHECKING:
    from strata_runtime.services import Services


class MessageRejected(Forbidden):
    code = "message_rejected"


async def route_message(services: Services, tenant: str, agent_id: str, message: str, *,
                        md5_checksum: str | None = None, channel_id: str | None = None,
                        request_id: str | None = None, enforce: bool = True) -> RouteDecision:
    """The decision for `message`; with `enforce`, a `reject` decision raises MessageRejected (403)."""
    agent = services.conversations.agents.get(tenant, agent_id, md5_checksum)
    ctx = CallContext(tenant=tenant, agent_id=agent.id, channel_id=channel_id, request_id=request_id,
                      caching_disabled=agent.config.caching_disabled)
    decision = await services.router.route(agent.config, message, ctx)
    if enforce and decision.route == "reject":
        raise MessageRejected("the message was rejected by the agent's routing policy",
                              details={"layer": decision.layer})
    return decision


async def route_proxy_body(services: Services, body: dict[str, Any], ctx: CallContext) -> RouteDecision | None:
    """`/internal/llm/proxy` with the id of a configured agent: route its last user message and put the
    chosen skill's instructions into the system message of `body` (in place). Other calls pass as they are."""
    if ctx.agent_id is None:
        return None
    try:
        agent = services.conversations.agents.get(ctx.tenant, ctx.agent_id)
    except NotFound:
        return None  # an agent id used only to attribute usage
    messages = body.get("messages")
    last_user = next((m for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "user"), None) \
        if isinstance(messages, list) else None
    if last_user is None or not text_of(last_user).strip():
        return None
    decision = await services.router.route(agent.config, text_of(last_user), ctx)
    if decision.route == "reject":
        raise MessageRejected("the message was rejected by the agent's routing policy",
                              details={"layer": decision.layer})
    skill = chosen_skill(agent.config, decision)
    if skill is not None and isinstance(messages, list):
        addition = system_prompt(agent.config.model_copy(update={"system_prompt": ""}), decision)
        first = messages[0] if messages else None
        if isinstance(first, dict) and first.get("role") == "system" and isinstance(first.get("content"), str):
            messages[0] = {**first, "content": f"{first['content']}\n\n{addition}"}
        else:
            messages.insert(0, {"role": "system", "content": addition})
    return decision
