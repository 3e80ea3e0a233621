"""The operator's Prometheus metrics, and the `/metrics` endpoint that serves them.

    strata_operator_reconciles_total{kind, outcome}        outcome: applied | stalled | retrying
    strata_operator_reconcile_duration_seconds{kind}
    strata_operator_errors_total{kind, reason}             reason: a condition reason, or (kind
                                                           Operator) WatchFailed | WatchEventFailed |
                                                           SweepFailed | TaskFailed | MetricsUnavailable
    strata_operator_status_writes_total{kind}
    strata_operator_work_queue_depth{queue}                background work pending, by kind of work
    strata_operator_api_requests_total{verb, resource, code}
    strata_operator_api_request_duration_seconds{verb, resource}
    strata_operator_objects{kind, condition, status}       objects by condition, as last reported

The API metrics cover the operator's own client (applies, reads, status writes, its watches);
kopf's watches of the custom resources go through kopf's client and are not counted. One
registry of our own (not the process-global default), served on the event loop by aiohttp, so a
scrape reads the operator's state on the thread that changes it.
"""

from __future__ import annotations

import logging
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector

log = logging.getLogger("strata.operator")

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)

RECONCILES = Counter("strata_operator_reconciles", "Reconciliations, by kind and outcome "
                     "(applied; stalled: needs a change by someone; retrying: a failure retried after a back-off).",
                     ["kind", "outcome"], registry=REGISTRY)
RECONCILE_SECONDS = Histogram("strata_operator_reconcile_duration_seconds",
                              "Duration of one reconciliation (inputs read, render, apply, status).", ["kind"],
                              buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=REGISTRY)
ERRORS = Counter("strata_operator_errors", "Errors, by kind of object and reason.", ["kind", "reason"],
                 registry=REGISTRY)
STATUS_WRITES = Counter("strata_operator_status_writes", "Status subresource writes, by kind.", ["kind"],
                        registry=REGISTRY)
WORK_QUEUE_DEPTH = Gauge("strata_operator_work_queue_depth",
                         "Background work pending (retries, held-back status writes, event work, loops).",
                         ["queue"], registry=REGISTRY)
API_REQUESTS = Counter("strata_operator_api_requests", "Kubernetes API requests sent by the operator's client.",
                       ["verb", "resource", "code"], registry=REGISTRY)
API_SECONDS = Histogram("strata_operator_api_request_duration_seconds",
                        "Kubernetes API request latency (waiting for a connection slot excluded).",
                        ["verb", "resource"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
                        registry=REGISTRY)

StatusSource = Callable[[], Iterable[dict[str, Any]]]


class ObjectsByCondition:
    """`strata_operator_objects`: counted at scrape time from the statuses the operator last reported."""

    def __init__(self) -> None:
        self.sources: dict[str, StatusSource] = {}

    def track(self, kind: str, statuses: StatusSource) -> None:
        self.sources[kind] = statuses

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("strata_operator_objects",
                                   "Objects by condition and its status, as the operator last reported them.",
                                   labels=["kind", "condition", "status"])
        for kind, statuses in self.sources.items():
            tally: Tally[tuple[str, str]] = Tally()
            for status in statuses():
                for condition in status.get("conditions") or []:
                    tally[(str(condition.get("type")), str(condition.get("status")))] += 1
            for (condition_type, value), count in sorted(tally.items()):
                family.add_metric([kind, condition_type, value], count)
        yield family


OBJECTS = ObjectsByCondition()
REGISTRY.register(OBJECTS)


async def _metrics(_: web.Request) -> web.Response:
    return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def serve(host: str, port: int) -> web.AppRunner:
    """Serve GET /metrics on host:port (on this event loop); stop it with `runner.cleanup()`."""
    app = web.Application()
    app.router.add_get("/metrics", _metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    log.info("serving metrics on http://%s:%d/metrics", host, port)
    return runner
