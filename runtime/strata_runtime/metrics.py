"""Prometheus metrics, one registry per app so tests can run several apps in one process."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from strata_runtime.stores.health import BackendHealth

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


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.http_requests = Counter(
            "strata_http_requests", "HTTP requests served", ["route", "method", "status"], registry=r
        )
        self.http_latency = Histogram(
            "strata_http_request_duration_seconds", "HTTP request latency", ["route"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.in_flight = Gauge("strata_http_in_flight_requests", "Requests being served", registry=r)
        self.active_sessions = Gauge("strata_active_sessions", "Sessions held in the L1 pool", registry=r)
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

    def watch_backends(self, backends: Callable[[], Iterable[BackendHealth]]) -> None:
        self.registry.register(_BackendCollector(backends))
