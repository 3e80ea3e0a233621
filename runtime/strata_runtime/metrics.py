"""Prometheus metrics, one registry per app so tests can run several apps in one process."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import prometheus_client
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from strata_runtime.stores.health import BackendHealth

if TYPE_CHECKING:
    from strata_runtime.agents.depth import DepthReading

class _RememberedLabels:
    """`labels(*values)` remembered per tuple of values: prometheus_client checks, converts and locks on every
    call (3-4 µs, and a stream records eight labelled samples); the child it returns is the same either way."""

    def labels(self, *values: Any, **named: Any) -> Any:
        if named:
            return super().labels(*values, **named)  # type: ignore[misc]
        children: dict[tuple[Any, ...], Any] | None = self.__dict__.get("_remembered")
        if children is None:
            children = self.__dict__["_remembered"] = {}
        child = children.get(values)
        if child is None:
            child = children[values] = super().labels(*values)  # type: ignore[misc]
        return child

    def remove(self, *values: Any) -> None:
        self.__dict__.pop("_remembered", None)
        super().remove(*values)  # type: ignore[misc]

    def clear(self) -> None:
        self.__dict__.pop("_remembered", None)
        super().clear()  # type: ignore[misc]


class Counter(_RememberedLabels, prometheus_client.Counter):
    pass


class Histogram(_RememberedLabels, prometheus_client.Histogram):
    pass


LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class _BackendCollector(Collector):
    def __init__(self, backends: Callable[[], Iterable[BackendHealth]]):
        self._backends = backends

    def collect(self) -> Iterable[GaugeMetricFamily]:
        degraded = GaugeMetricFamily(
            "strata_backend_degraded", "1 while a backend is not in use (fallback or down)", labels=["backend"]
        )
        for health in self._backends():
            degraded.add_metric([health.name], 0.0 if health.state == "ok" else 1.0)
        yield degraded


@dataclass(frozen=True)
class PoolSnapshot:
    """One upstream connection pool (a model's), read at scrape time."""

    model: str
    max_connections: int
    in_use: int
    waiting: int
    queued_total: int
    queue_timeouts_total: int
    wait_seconds_total: float


class _PoolCollector(Collector):
    """Upstream pool gauges and counters, computed from the pools' own counters when scraped."""

    def __init__(self, pools: Callable[[], Iterable[PoolSnapshot]]):
        self._pools = pools

    def collect(self) -> Iterable[Metric]:
        p = "strata_upstream_pool_"
        families: list[tuple[Metric, Callable[[PoolSnapshot], float]]] = [
            (GaugeMetricFamily(p + "max_connections", "Connections allowed to the model's upstream (maxConnections)",
                               labels=["model"]), lambda s: s.max_connections),
            (GaugeMetricFamily(p + "in_use_connections", "Upstream connections held by requests and open streams",
                               labels=["model"]), lambda s: s.in_use),
            (GaugeMetricFamily(p + "waiting_requests", "Requests queued for a free upstream connection",
                               labels=["model"]), lambda s: s.waiting),
            (GaugeMetricFamily(p + "saturation", "in_use_connections / max_connections (1: the next request queues)",
                               labels=["model"]), lambda s: s.in_use / max(1, s.max_connections)),
            (CounterMetricFamily(p + "queued_requests", "Requests that found every upstream connection busy",
                                 labels=["model"]), lambda s: s.queued_total),
            (CounterMetricFamily(p + "queue_timeouts", "Queued requests that gave up (503 upstream_busy or deadline)",
                                 labels=["model"]), lambda s: s.queue_timeouts_total),
            (CounterMetricFamily(p + "queue_wait_seconds", "Time requests spent queued for a connection",
                                 labels=["model"]), lambda s: s.wait_seconds_total),
        ]
        snapshots = list(self._pools())
        for family, value in families:
            for snap in snapshots:
                family.add_metric([snap.model], float(value(snap)))  # type: ignore[attr-defined]
            yield family


@dataclass(frozen=True)
class McpServerSnapshot:
    """One MCP server the runtime is a client of, read at scrape time."""

    server: str
    state: str  # one of MCP_SERVER_STATES
    tools: int
    reconnects_total: int
    skipped_tools: int = 0  # tools it listed last that are not valid MCP tools (left out)


MCP_SERVER_STATES = ("connecting", "connected", "down")


class _McpServerCollector(Collector):
    """Per MCP server: its state (one series per state, 1 for the current one), whether its tools are
    unusable now (degraded), its reconnect attempts, its tools and the listed tools left out."""

    def __init__(self, servers: Callable[[], Iterable[McpServerSnapshot]]):
        self._servers = servers

    def collect(self) -> Iterable[Metric]:
        p = "strata_mcp_server_"
        state = GaugeMetricFamily(p + "state", "MCP server connection state (1 for the current state)",
                                  labels=["server", "state"])
        degraded = GaugeMetricFamily(p + "degraded", "1 while the MCP server's tools cannot be called",
                                     labels=["server"])
        reconnects = CounterMetricFamily(p + "reconnects", "Connection attempts after the first one",
                                         labels=["server"])
        tools = GaugeMetricFamily(p + "tools", "Tools the MCP server listed last", labels=["server"])
        skipped = GaugeMetricFamily(p + "tools_skipped", "Tools the MCP server listed last that are not valid "
                                    "MCP tools (left out)", labels=["server"])
        for snap in self._servers():
            for name in MCP_SERVER_STATES:
                state.add_metric([snap.server, name], 1.0 if snap.state == name else 0.0)
            degraded.add_metric([snap.server], 0.0 if snap.state == "connected" else 1.0)
            reconnects.add_metric([snap.server], float(snap.reconnects_total))
            tools.add_metric([snap.server], float(snap.tools))
            skipped.add_metric([snap.server], float(snap.skipped_tools))
        yield from (state, degraded, reconnects, tools, skipped)


class DepthSource(Protocol):
    """What the session-depth collector reads (strata_runtime.agents.depth.SessionDepth)."""

    @property
    def last(self) -> DepthReading | None: ...

    def local(self, now: float | None = None) -> tuple[int, int]: ...


class _DepthCollector(Collector):
    """Session depth: deployment-wide (the last reading; absent while unknown) and this pod's share."""

    def __init__(self, source: DepthSource):
        self._source = source

    def collect(self) -> Iterable[Metric]:
        in_flight, pod_sessions = self._source.local()
        yield GaugeMetricFamily("strata_turns_in_flight", "Conversation turns being produced on this pod",
                                value=in_flight)
        yield GaugeMetricFamily("strata_pod_session_depth", "Sessions this pod served within the session-depth "
                                "window or is serving now (a session served by two pods counts on both)",
                                value=pod_sessions)
        family = GaugeMetricFamily(
            "strata_session_depth", "Sessions the deployment is serving now: a turn in flight or a turn ended "
            "within the window, counted once across pods (the same value on every pod: aggregate with max)",
        )
        reading = self._source.last
        if reading is not None:  # unknown (Redis unreadable): no sample, never a made-up 0
            family.add_metric([], reading.sessions)
        yield family


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.depth: DepthSource | None = None
        r = self.registry
        self.http_requests = Counter(
            "strata_http_requests", "HTTP requests served", ["route", "method", "status"], registry=r
        )
        self.http_latency = Histogram(
            "strata_http_request_duration_seconds", "HTTP request latency", ["route"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.in_flight = Gauge("strata_http_in_flight_requests", "Requests being served", registry=r)
        self.active_sessions = Gauge("strata_active_sessions", "Sessions held in this pod's in-process pool "
                                     "(idle ones included until released; the load signal is strata_session_depth)",
                                     registry=r)
        self.archive_batches = Counter(
            "strata_memory_archive_batches", "Archived batches whose long-term summary was parked (the archive "
            "kept failing, or the buffer cap moved them) and parked batches re-driven or failing again",
            ["outcome", "reason"], registry=r,
        )
        self.archive_parked = Gauge(
            "strata_memory_archive_parked_batches", "Archived batches still waiting for their long-term summary "
            "(all pods; refreshed by each re-drive pass)", registry=r,
        )
        self.pending_requests = Gauge(
            "strata_pending_requests", "Requests waiting for an upstream or a slot", registry=r
        )
        # LLM gateway
        self.llm_latency = Histogram(
            "strata_llm_request_duration_seconds", "Gateway LLM call latency (to the last byte)",
            ["model", "provider", "stream"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.llm_ttft = Histogram(
            "strata_llm_time_to_first_token_seconds", "Time to the first streamed content chunk",
            ["model", "provider"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.llm_requests = Counter(
            "strata_llm_requests", "Gateway LLM calls by outcome", ["model", "provider", "cache", "outcome"],
            registry=r,
        )
        self.llm_tokens = Counter(
            "strata_llm_tokens", "Tokens through the gateway (in = prompt, out = completion)",
            ["model", "direction"], registry=r,
        )
        self.llm_cost = Counter("strata_llm_cost_usd", "Upstream cost in USD from the price table", ["model"],
                                registry=r)
        self.llm_upstream_errors = Counter(
            "strata_llm_upstream_errors", "Failed upstream attempts by provider and status/timeout/connect",
            ["provider", "status"], registry=r,
        )
        self.llm_in_flight = Gauge("strata_llm_in_flight_requests", "LLM calls (incl. open streams) in progress",
                                   registry=r)
        self.rate_limited = Counter("strata_rate_limited_requests", "Requests refused by a rate limit",
                                    ["scope"], registry=r)

        # Response cache
        self.cache_requests = Counter(
            "strata_cache_requests", "Cache decisions (hit_exact, hit_semantic, hit_coalesced, miss, bypass, disabled)",
            ["result"], registry=r,
        )
        self.cache_tokens_saved = Counter("strata_cache_tokens_saved", "Tokens answered from the cache",
                                          registry=r)
        self.cache_cost_saved = Counter("strata_cache_cost_saved_usd", "Upstream cost avoided by cache hits",
                                        registry=r)
        self.cache_guard_rejections = Counter(
            "strata_cache_guard_rejections", "Semantic hits vetoed by the hit guard", ["reason"], registry=r
        )

        # Semantic routing
        self.routing_decisions = Counter(
            "strata_routing_decisions", "Routing decisions by deciding layer (L0, L1, L1.5, L2) and outcome "
            "(direct, skill, reject)", ["layer", "outcome"], registry=r,
        )
        self.routing_duration = Histogram(
            "strata_routing_duration_seconds", "Time to route a message (embedding and classifier included)",
            ["layer"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.routing_semantic_skipped = Counter(
            "strata_routing_semantic_skipped", "Messages that skipped L1.5 (embedder failure or deadline)",
            ["reason"], registry=r,
        )
        self.routing_classifier = Counter(
            "strata_routing_classifier_calls", "L2 classifier results (ok, cached, invalid, timeout, error)",
            ["outcome"], registry=r,
        )

        # Tools
        self.tool_calls = Counter(
            "strata_tool_calls", "Tool calls by tool and outcome (ok or the error code)", ["tool", "outcome"],
            registry=r,
        )
        self.tool_latency = Histogram(
            "strata_tool_call_duration_seconds", "Time of one tool call (validation included)", ["tool"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.cascade_violations = Counter(
            "strata_cascade_violations", "Turns or calls stopped by the cascade guard", ["limit"], registry=r,
        )

    def watch_backends(self, backends: Callable[[], Iterable[BackendHealth]]) -> None:
        self.registry.register(_BackendCollector(backends))

    def watch_mcp_servers(self, servers: Callable[[], Iterable[McpServerSnapshot]]) -> None:
        self.registry.register(_McpServerCollector(servers))

    def watch_session_depth(self, source: DepthSource) -> None:
        self.depth = source
        self.registry.register(_DepthCollector(source))

    def watch_pools(self, pools: Callable[[], Iterable[PoolSnapshot]]) -> None:
        self.registry.register(_PoolCollector(pools))
