"""The agent manager: the agents this pod serves, keyed by (tenant, chatbot id), each with a config hash.

Definitions come from the `AgentRegistry` (the config file plus a watched definitions path);
their parsed form is shared by content hash through the `ParseCache` (see parse_cache.py for
the hash, which a client may send as ``md5_checksum``). An agent whose definition changed is
swapped on its next use; a turn already running keeps the `Agent` it started with. A
checksum this pod does not serve makes the registry look at its definitions path at once (the
operator may just have delivered it). Idle agents are evicted by a cleanup loop, and parsed
configs no served agent uses are dropped with them.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from strata_runtime.agents.parse_cache import ParsedConfig, definition_hash
from strata_runtime.agents.registry import AgentRegistry
from strata_runtime.config import AgentConfig
from strata_runtime.errors import NotFound
from strata_runtime.tasks import cancel_and_wait


def agent_config_hash(agent: AgentConfig) -> str:
    return definition_hash(agent)


@dataclass
class Agent:
    config: AgentConfig
    config_hash: str
    parsed: ParsedConfig | None = None
    loaded_at: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.monotonic)

    @property
    def id(self) -> str:
        return self.config.id

    @property
    def tenant(self) -> str:
        return self.config.tenant


class AgentManager:
    def __init__(self, registry: AgentRegistry, *, idle_seconds: float = 300.0,
                 cleanup_interval_seconds: float = 60.0):
        self.registry = registry
        self.idle_seconds = idle_seconds
        self.cleanup_interval_seconds = cleanup_interval_seconds
        self._agents: dict[tuple[str, str], Agent] = {}
        self._task: asyncio.Task[None] | None = None
        self.reloads = 0
        self.evictions = 0
        self.checksum_mismatches = 0

    def get(self, tenant: str, chatbot_id: str, md5_checksum: str | None = None) -> Agent:
        key = (tenant, chatbot_id)
        served = self.registry.lookup(tenant, chatbot_id)
        if served is None:
            self._agents.pop(key, None)
            raise NotFound(f"no agent {chatbot_id!r} for this tenant", field="chatbot_id",
                           details={"code": "agent_not_found"})
        agent = self._agents.get(key)
        if agent is None or agent.config_hash != served.config_hash:
            if agent is not None:
                self.reloads += 1
            agent = Agent(config=served.config, config_hash=served.config_hash, parsed=served.parsed)
            self._agents[key] = agent
        if md5_checksum and md5_checksum.lower() != agent.config_hash:
            self.checksum_mismatches += 1
            self.registry.poke()
        agent.last_used = time.monotonic()
        return agent

    def evict_idle(self) -> int:
        cutoff = time.monotonic() - self.idle_seconds
        stale = [k for k, a in self._agents.items() if a.last_used < cutoff]
        for key in stale:
            del self._agents[key]
        served = {s.config_hash for s in self.registry.served().values()}
        in_use = {a.config_hash for a in self._agents.values()}
        # parsed configs stay while a served definition or a live agent refers to them
        self.registry.cache.retain(in_use | served)
        self.evictions += len(stale)
        return len(stale)

    def stats(self) -> dict[str, Any]:
        return {**self.registry.cache.stats(), "agents": len(self._agents),
                "served_agents": len(self.registry.served()),
                "evictions": self.evictions, "parsed_evictions": self.registry.cache.counters.evictions,
                "reloads": self.reloads,
                "checksum_mismatches": self.checksum_mismatches, "definition_reloads": self.registry.reloads}

    async def start(self) -> None:
        await self.registry.start()

        async def loop() -> None:
            while True:
                await asyncio.sleep(self.cleanup_interval_seconds)
                self.evict_idle()

        self._task = asyncio.create_task(loop(), name="agent-idle-eviction")

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        await self.registry.close()
