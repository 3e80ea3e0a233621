"""Prometheus view of the agent definitions a pod serves: which definitions hash (so a dashboard
shows, per pod, whether the operator's latest `strata.dev/agents-hash` has arrived), load errors,
and the parse cache's counters."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from strata_runtime.agents.manager import AgentManager


class AgentDefinitionsCollector(Collector):
    def __init__(self, manager: AgentManager):
        self._manager = manager

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        status = self._manager.registry.status()
        info = GaugeMetricFamily("strata_agent_definitions_info", "1 for the agent definitions hash this pod serves",
                                 labels=["definitions_hash"])
        info.add_metric([status["definitionsHash"]], 1.0)
        yield info
        yield GaugeMetricFamily("strata_agent_definitions_served", "Agents this pod serves",
                                value=float(len(status["agents"])))
        yield GaugeMetricFamily("strata_agent_definition_errors", "Definition files or agents refused at the "
                                "last load (the previous definition keeps serving)",
                                value=float(sum(len(v) for v in status["errors"].values())))
        watch = status.get("configMapWatch")
        if watch is not None:  # the ConfigMap watch through the API server (in a pod the operator runs)
            yield GaugeMetricFamily("strata_agent_definitions_watch_connected", "1 while the watch of the agent "
                                    "definitions ConfigMap is connected to the API server (0: the mounted file only)",
                                    value=1.0 if watch["connected"] else 0.0)
            events = CounterMetricFamily("strata_agent_definitions_watch", "ConfigMap watch: lists, re-lists "
                                         "after 410 Gone, events and failed attempts", labels=["outcome"])
            for outcome in ("lists", "relists", "events", "failures"):
                events.add_metric([outcome], float(watch[outcome]))
            yield events
        stats = self._manager.stats()
        cache = CounterMetricFamily("strata_agent_parse_cache", "Parse cache lookups and Redis traffic",
                                    labels=["outcome"])
        for outcome in ("hits", "misses", "redis_hits", "redis_errors", "persisted", "persist_races",
                        "parse_failures"):
            cache.add_metric([outcome], float(stats[outcome]))
        yield cache
