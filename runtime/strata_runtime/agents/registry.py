"""The agent definitions this pod serves: the config file's agents plus a watched definitions path.

`agentManager.definitionsPath` is a file or a directory (typically a mounted ConfigMap, one
key per tenant). Each file holds `agents: [...]` (or a list, or one agent). The path is polled;
a change is detected through each file's inode/mtime/size and, for a ConfigMap, the target of
its `..data` symlink (the kubelet swaps that link atomically when the ConfigMap changes).
On a change every file is re-read and each agent parsed through the `ParseCache`:

* a file that cannot be read or parsed keeps its previous agents, and the error is recorded;
* an agent that fails validation (unknown field, wrong type: the error names the field path),
  names an unknown model or tool, or fails the guard under `guard: enforce` keeps its previous
  definition serving (a new agent is simply not added);
* an agent that disappeared from every file is removed.

In a pod whose definitions ConfigMap is named in `STRATA_AGENTS_CONFIGMAP`, the ConfigMap is also
watched through the API server (`configmap_watch`), which hears a change within a second instead of
at the kubelet's next volume sync. Both sources go through the same validation; the content hash of
the definition texts decides: content already applied is not applied twice, and a file copy whose
content the watch has already delivered is an older version and is skipped.

Lookups are synchronous dictionary reads of an immutable snapshot that is swapped whole, so
a request sees either the old or the new set; a turn that already started keeps the agent
(and prompt) it started with.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from strata_runtime.agents.configmap_watch import ConfigMapWatch
from strata_runtime.agents.parse_cache import ParseCache, ParsedConfig, validate_agent
from strata_runtime.agents.pod_annotation import PodAnnotator
from strata_runtime.config import AgentConfig, AgentManagerConfig, ConfigError, RuntimeConfig, agents_hash
from strata_runtime.tasks import cancel_and_wait, wait_for_event

log = logging.getLogger("strata.agents")

Key = tuple[str, str]
SUFFIXES = (".yaml", ".yml", ".json")
PREHEAT_CONCURRENCY = 32  # parallel Redis lookups while preheating
API_HISTORY = 64  # content hashes remembered from the ConfigMap watch (to tell a lagging file copy)


@dataclass(frozen=True)
class Served:
    config: AgentConfig
    parsed: ParsedConfig
    source: str

    @property
    def config_hash(self) -> str:
        return self.parsed.config_hash


@dataclass
class ReloadResult:
    changed: bool = False
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _fingerprint(path: Path) -> tuple[Any, ...]:
    """What changes when the definitions change (blocking: run in a thread)."""
    if not path.exists():
        return ("missing",)
    if path.is_file():
        st = path.stat()
        return (os.path.realpath(path), st.st_ino, st.st_mtime_ns, st.st_size)
    data_link = path / "..data"
    target = os.path.realpath(data_link) if data_link.exists() else None
    files = []
    for entry in sorted(_definition_files(path)):
        with contextlib.suppress(OSError):
            st = entry.stat()
            files.append((entry.name, st.st_ino, st.st_mtime_ns, st.st_size))
    return (target, tuple(files))


def _definition_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return [p for p in path.iterdir() if not p.name.startswith(".") and p.suffix in SUFFIXES and p.is_file()]


def _read_files(path: Path) -> dict[str, str | OSError]:
    out: dict[str, str | OSError] = {}
    if not path.exists():
        return out
    for entry in sorted(_definition_files(path)):
        try:
            out[entry.name] = entry.read_text(encoding="utf-8")
        except OSError as e:
            out[entry.name] = e
    return out


def _digest(texts: dict[str, str | OSError]) -> str | None:
    """Content hash of the definition texts (None when a file could not be read)."""
    h = hashlib.sha256()
    for name, text in sorted(texts.items()):
        if isinstance(text, OSError):
            return None
        h.update(f"{len(name)}:{name}{len(text)}:".encode())
        h.update(text.encode())
    return h.hexdigest()


def agents_of(text: str, *, source: str) -> list[Any]:
    """The raw agent mappings of one definitions file."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML/JSON: {e}") from None
    if doc is None:
        return []
    if isinstance(doc, list):
        return doc
    if isinstance(doc, dict) and "agents" in doc:
        unknown = sorted(set(doc) - {"agents"})
        if unknown:
            raise ConfigError(f"{source}.{unknown[0]}: unknown top-level field (expected only `agents`)")
        if not isinstance(doc["agents"], list):
            raise ConfigError(f"{source}.agents: must be a list")
        return list(doc["agents"])
    if isinstance(doc, dict):
        return [doc]
    raise ConfigError(f"{source}: expected `agents: [...]`, a list of agents or one agent")


class AgentRegistry:
    def __init__(self, config_source: Callable[[], RuntimeConfig], cache: ParseCache,
                 settings: AgentManagerConfig | None = None):
        self._config_source = config_source
        self.cache = cache
        self.settings = settings or config_source().agent_manager
        self._static: dict[Key, Served] | None = None
        self._files: dict[str, dict[Key, Served]] = {}
        self._served: dict[Key, Served] = {}
        self._fingerprint: tuple[Any, ...] | None = None
        self.errors: dict[str, list[str]] = {}
        self.reloads = 0
        self.last_reload: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._poke = asyncio.Event()
        # called with the agents a reload added or changed (the router indexes their skills)
        self.on_change: Callable[[list[AgentConfig]], Awaitable[None]] | None = None
        self._notified: set[asyncio.Task[None]] = set()
        # reports the definitions hash served, after start-up and each reload, on this pod's annotation
        self.annotator: PodAnnotator | None = None
        # the definitions ConfigMap watched through the API server (faster than the kubelet's file sync)
        self.configmap_watch: ConfigMapWatch | None = None
        self._apply_lock = asyncio.Lock()
        self._applied_digest: str | None = None  # content hash of the definition texts now applied
        self._api_digests: OrderedDict[str, None] = OrderedDict()  # content seen through the API watch
        self.applied_from: str | None = None  # file | configMap

    # lookups ------------------------------------------------------------------------------------
    def lookup(self, tenant: str, agent_id: str) -> Served | None:
        if self._static is None:
            self._static = self._static_local()
            self._rebuild()
        return self._served.get((tenant, agent_id))

    def served(self) -> dict[Key, Served]:
        self.lookup("", "")
        return dict(self._served)

    def poke(self) -> None:
        """Check the definitions path now (a client sent a checksum this pod does not serve)."""
        self._poke.set()

    # building -------------------------------------------------------------------------------------
    def _rejected(self, agent: AgentConfig, parsed: ParsedConfig) -> str | None:
        if self.settings.guard == "enforce" and not parsed.guard.ok:
            reasons = ", ".join(f"{f.field}: {f.code}" for f in parsed.guard.findings if f.severity == "error")
            return f"agents[{agent.tenant}/{agent.id}] rejected by the config guard ({reasons})"
        return None

    def _static_local(self) -> dict[Key, Served]:
        out: dict[Key, Served] = {}
        for agent in self._config_source().agents:
            parsed = self.cache.load_local(agent)
            if self._rejected(agent, parsed) is None:
                out[(agent.tenant, agent.id)] = Served(agent, parsed, "config")
        return out

    async def _static_preheat(self) -> dict[Key, Served]:
        """Parse (or adopt from Redis) every agent of the config file, PREHEAT_CONCURRENCY at a time."""
        agents = list(self._config_source().agents)
        parsed: list[ParsedConfig] = []
        for i in range(0, len(agents), PREHEAT_CONCURRENCY):
            parsed += await asyncio.gather(*(self.cache.load(a) for a in agents[i:i + PREHEAT_CONCURRENCY]))
        self.cache.counters.preheated += len(agents)
        out: dict[Key, Served] = {}
        errors: list[str] = []
        for agent, one in zip(agents, parsed, strict=True):
            reason = self._rejected(agent, one)
            if reason is None:
                out[(agent.tenant, agent.id)] = Served(agent, one, "config")
            else:
                errors.append(reason)
        self._set_errors("config", errors)
        return out

    def _rebuild(self) -> None:
        merged: dict[Key, Served] = dict(self._static or {})
        for name in sorted(self._files):
            merged.update(self._files[name])  # a definitions file overrides the config file
        self._served = merged

    def _set_errors(self, source: str, errors: list[str]) -> None:
        if errors:
            self.errors[source] = errors
        else:
            self.errors.pop(source, None)

    async def _check_definition(self, raw: Any, where: str) -> tuple[AgentConfig, ParsedConfig]:
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: an agent definition must be a mapping")
        found = self.cache.hit_raw(raw)
        if found is None:
            validate_agent(raw, where=where)  # field-path errors before anything else
        config = self._config_source()
        model = raw.get("model")
        if model not in {m.name for m in config.models}:
            raise ConfigError(f"{where}.model: unknown model {model!r}")
        agent, parsed = found or await self.cache.parse(raw, where=where)
        known_tools = {t.id for t in config.tools}
        for tool in [*agent.tools, *(t for s in agent.skills for t in s.tools)]:
            if tool not in known_tools:
                raise ConfigError(f"{where}.tools: unknown tool {tool!r}")
        reason = self._rejected(agent, parsed)
        if reason is not None:
            raise ConfigError(f"{where}: {reason}")
        return agent, parsed

    async def _load_file(self, name: str, text: str, previous: dict[Key, Served],
                         errors: list[str]) -> dict[Key, Served]:
        try:
            raws = agents_of(text, source=name)
        except ConfigError as e:
            errors.append(str(e))
            return previous
        out: dict[Key, Served] = {}
        for i, raw in enumerate(raws):
            where = f"{name}: agents[{i}]"
            try:
                agent, parsed = await self._check_definition(raw, where)
            except ConfigError as e:
                errors.append(str(e))
                key = (raw.get("tenant"), raw.get("id")) if isinstance(raw, dict) else None
                if key is not None and key in previous:
                    out[key] = previous[key]  # keep the last good definition serving
                continue
            out[(agent.tenant, agent.id)] = Served(agent, parsed, name)
        return out

    async def reload(self) -> ReloadResult:
        """Re-read the definitions path now (also what the file watcher calls on a change).

        Content already served, or already seen through the ConfigMap watch (the kubelet's copy
        lags the API server's), is not applied again: the newer of the two sources wins."""
        path_text = self.settings.definitions_path
        if path_text is None:
            return ReloadResult()
        path = Path(path_text)
        fingerprint = await asyncio.to_thread(_fingerprint, path)
        texts = await asyncio.to_thread(_read_files, path)
        async with self._apply_lock:
            self._fingerprint = fingerprint
            digest = _digest(texts)
            if digest is not None and (digest == self._applied_digest or digest in self._api_digests):
                return ReloadResult(errors=self._file_errors())
            return await self._apply(texts, digest, "file")

    async def apply_data(self, data: dict[str, str]) -> ReloadResult:
        """Apply the `data` of the definitions ConfigMap as heard through the API watch.

        With definitionsPath a file, its key is the file's name (a missing key: no definitions, as
        a deleted file); with a directory, every key ending in .yaml/.yml/.json is one file, as the
        kubelet would mount it."""
        path_text = self.settings.definitions_path
        if path_text is None:
            return ReloadResult()
        path = Path(path_text)
        texts: dict[str, str | OSError]
        if await asyncio.to_thread(path.is_dir):
            texts = {k: v for k, v in sorted(data.items()) if not k.startswith(".") and k.endswith(SUFFIXES)}
        else:
            texts = {path.name: data[path.name]} if path.name in data else {}
        digest = _digest(texts)
        async with self._apply_lock:
            if digest is not None:
                self._api_digests[digest] = None
                self._api_digests.move_to_end(digest)
                while len(self._api_digests) > API_HISTORY:
                    self._api_digests.popitem(last=False)
                if digest == self._applied_digest:
                    return ReloadResult(errors=self._file_errors())
            return await self._apply(texts, digest, "configMap")

    def _file_errors(self) -> list[str]:
        return [e for source, errors in sorted(self.errors.items()) if source != "config" for e in errors]

    async def _apply(self, texts: dict[str, str | OSError], digest: str | None, origin: str) -> ReloadResult:
        result = ReloadResult()
        files: dict[str, dict[Key, Served]] = {}
        for name, text in texts.items():
            errors: list[str] = []
            if isinstance(text, OSError):
                errors.append(f"{name}: cannot read: {text.strerror}")
                files[name] = self._files.get(name, {})
            else:
                files[name] = await self._load_file(name, text, self._files.get(name, {}), errors)
            self._set_errors(name, errors)
            result.errors.extend(errors)
        for gone in set(self.errors) - set(files) - {"config"}:
            self.errors.pop(gone, None)
        self.lookup("", "")  # the config file's agents are in place before the diff
        before = self._served
        self._files = files
        self._rebuild()
        self._diff(before, result)
        self._applied_digest, self.applied_from = digest, origin
        if self.annotator is not None:
            self.annotator.report(self.definitions_hash())
        return result

    def _diff(self, before: dict[Key, Served], result: ReloadResult) -> None:
        after = self._served
        result.added = sorted(f"{t}/{a}" for (t, a) in after.keys() - before.keys())
        result.removed = sorted(f"{t}/{a}" for (t, a) in before.keys() - after.keys())
        result.updated = sorted(f"{t}/{a}" for (t, a) in after.keys() & before.keys()
                                if after[(t, a)].config_hash != before[(t, a)].config_hash)
        result.changed = bool(result.added or result.removed or result.updated)
        fresh = [after[k].config for k in after if k not in before or after[k].config_hash != before[k].config_hash]
        if fresh and self.on_change is not None:
            task = asyncio.create_task(self._notify(fresh), name="agent-definitions-changed")
            self._notified.add(task)
            task.add_done_callback(self._notified.discard)
        if result.changed:
            self.reloads += 1
            self.last_reload = time.time()
            log.info("agent definitions reloaded", extra={"added": len(result.added), "updated": len(result.updated),
                                                          "removed": len(result.removed)})

    async def _notify(self, agents: list[AgentConfig]) -> None:
        assert self.on_change is not None
        try:
            await self.on_change(agents)
        except Exception:
            log.exception("a listener of agent-definition changes failed")

    # lifecycle ------------------------------------------------------------------------------------
    async def start(self) -> None:
        self._static = await self._static_preheat()
        self._rebuild()
        if self.settings.definitions_path is not None:
            await self.reload()
            self.cache.counters.preheated += sum(1 for s in self._served.values() if s.source != "config")
            self._task = asyncio.create_task(self._watch(), name="agent-definitions-watch")
            if self.configmap_watch is not None:
                self.configmap_watch.start()
        elif self.annotator is not None:
            self.annotator.report(self.definitions_hash())

    async def _watch(self) -> None:
        assert self.settings.definitions_path is not None
        path = Path(self.settings.definitions_path)
        while True:
            await wait_for_event(self._poke, self.settings.watch_interval_seconds)
            self._poke.clear()
            try:
                if await asyncio.to_thread(_fingerprint, path) != self._fingerprint:
                    await self.reload()
            except Exception:  # the watcher must outlive any one bad reload
                log.exception("reloading agent definitions failed; the previous ones keep serving")

    async def close(self) -> None:
        for task in list(self._notified):
            task.cancel()
        if self.configmap_watch is not None:
            await self.configmap_watch.close()
        await cancel_and_wait(self._task)
        self._task = None
        if self.annotator is not None:
            await self.annotator.close()

    def definitions_hash(self) -> str:
        served = self.served()
        return agents_hash([s.config for s in served.values()], {k: s.config_hash for k, s in served.items()})

    def status(self) -> dict[str, Any]:
        served = self.served()
        return {
            "agents": [{"tenant": t, "id": a, "configHash": s.config_hash, "source": s.source,
                        "guard": s.parsed.guard.to_json()} for (t, a), s in sorted(served.items())],
            "definitionsHash": self.definitions_hash(),
            "errors": self.errors, "reloads": self.reloads, "lastReload": self.last_reload,
            "appliedFrom": self.applied_from,
            "configMapWatch": self.configmap_watch.status() if self.configmap_watch is not None else None,
        }
