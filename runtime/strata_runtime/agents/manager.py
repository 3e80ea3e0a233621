"""The agent manager: agents from the config keyed by (tenant, chatbot id), each with a config hash.

The hash is MD5 over the agent's stable JSON (sorted keys, camelCase, no whitespace), so a
client can compute the same value and send it as ``md5_checksum``. Parsed agents are cached
per hash and shared by every (tenant, chatbot) whose config is identical. A checksum that
differs from the cached one makes the manager re-read the agent from the current config
(the operator may have delivered a new one); idle agents are evicted by a cleanup loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from strata_runtime.config import AgentConfig, RuntimeConfig, canonical_json
from strata_runtime.errors import NotFound


def agent_config_hash(agent: AgentConfig) -> str:
    return hashlib.md5(canonical_json(agent.model_dump(mode="json", by_alias=True)), usedforsecurity=False).hexdigest()


@dataclass
class Agent:
    config: AgentConfig
    config_hash: str
    loaded_at: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.monotonic)

    @property
    def id(self) -> str:
        return self.config.id

    @property
    def tenant(self) -> str:
        return self.config.tenant


class AgentManager:
    def __init__(self, config_source: Callable[[], RuntimeConfig], *, idle_seconds: float = 1800.0,
                 cleanup_interval_seconds: float = 60.0):
        self._config_source = config_source
        self.idle_seconds = idle_seconds
        self.cleanup_interval_seconds = cleanup_interval_seconds
        self._agents: dict[tuple[str, str], Agent] = {}
        self._parsed: dict[str, AgentConfig] = {}
        self._task: asyncio.Task[None] | None = None
        self.reloads = 0
        self.evictions = 0

    def _lookup(self, tenant: str, chatbot_id: str) -> Agent:
        for candidate in self._config_source().agents:
            if candidate.tenant == tenant and candidate.id == chatbot_id:
                digest = agent_config_hash(candidate)
                parsed = self._parsed.setdefault(digest, candidate)
                return Agent(config=parsed, config_hash=digest)
        raise NotFound(f"no agent {chatbot_id!r} for this tenant", field="chatbot_id",
                       details={"code": "agent_not_found"})

    def get(self, tenant: str, chatbot_id: str, md5_checksum: str | None = None) -> Agent:
        key = (tenant, chatbot_id)
        agent = self._agents.get(key)
        if agent is None or (md5_checksum and md5_checksum.lower() != agent.config_hash):
            if agent is not None:
                self.reloads += 1
            agent = self._lookup(tenant, chatbot_id)
            self._agents[key] = agent
        agent.last_used = time.monotonic()
        return agent

    def evict_idle(self) -> int:
        cutoff = time.monotonic() - self.idle_seconds
        stale = [k for k, a in self._agents.items() if a.last_used < cutoff]
        for key in stale:
            del self._agents[key]
        in_use = {a.config_hash for a in self._agents.values()}
        for digest in [d for d in self._parsed if d not in in_use]:
            del self._parsed[digest]
        self.evictions += len(stale)
        return len(stale)

    def stats(self) -> dict[str, int]:
        return {"agents": len(self._agents), "parsed_configs": len(self._parsed), "reloads": self.reloads,
                "evictions": self.evictions}

    async def start(self) -> None:
        async def loop() -> None:
            while True:
                await asyncio.sleep(self.cleanup_interval_seconds)
                self.evict_idle()

        self._task = asyncio.create_task(loop(), name="agent-idle-eviction")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
