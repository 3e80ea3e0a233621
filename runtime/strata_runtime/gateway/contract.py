"""The gateway's in-process interface, used by the HTTP routes and by the agent engine.

Requests and responses are OpenAI chat-completion bodies (plain dicts): the format every
upstream and client already speaks, so nothing is translated twice.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol

CacheResult = Literal["hit_exact", "hit_semantic", "miss", "bypass", "disabled"]


@dataclass(frozen=True)
class CallContext:
    """Who a call is for; the tenant always comes from authentication, never from a body."""

    tenant: str
    agent_id: str | None = None
    channel_id: str | None = None
    user: str | None = None
    request_id: str | None = None
    caching_disabled: bool = False
    # A narrower sharing boundary inside the tenant (a team, a document ACL group): answers are
    # only ever shared between calls with the same scope. Part of every cache key and partition.
    acl_scope: str | None = None
    # False when a public client named an agent that is not configured for its tenant: the name
    # is kept for usage accounting, but the call spends the one budget all such names share.
    agent_configured: bool = True

    @property
    def budget_agent(self) -> str | None:
        """The agent whose rate-limit budget the call spends."""
        if self.agent_id is None or self.agent_configured:
            return self.agent_id
        return UNLISTED_AGENTS


UNLISTED_AGENTS = "~unlisted"  # not a valid id, so it is never a configured agent's name


@dataclass
class ChatResult:
    response: dict[str, Any]  # an OpenAI `chat.completion` object
    provider: str
    model_resolved: str
    cache: CacheResult


@dataclass
class ChatStream:
    chunks: AsyncIterator[dict[str, Any]]  # OpenAI `chat.completion.chunk` objects
    provider: str
    model_resolved: str
    cache: CacheResult


class ChatGateway(Protocol):
    async def complete(self, body: dict[str, Any], ctx: CallContext) -> ChatResult: ...
    async def stream(self, body: dict[str, Any], ctx: CallContext) -> ChatStream: ...
