"""`strata-operator`: run the kopf operator with Strata's handlers.

    strata-operator [--namespace NS ...] [--peering NAME] [--priority N] [--liveness URL]

Every option has an environment variable (STRATA_WATCH_NAMESPACES is comma-separated), so the
chart configures the operator without a command line. Without --priority, each replica takes a
distinct priority derived from its pod name, so exactly one works and the others stand by.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import sys

import kopf
import uvloop

from strata_operator.handlers import register
from strata_operator.settings import OperatorSettings


def _distinct_priority(env: dict[str, str]) -> int:
    identity = env.get("POD_NAME") or socket.gethostname()
    return 1 + int(hashlib.sha256(identity.encode()).hexdigest()[:6], 16) % 1_000_000


def parse_settings(argv: list[str] | None = None, env: dict[str, str] | None = None) -> OperatorSettings:
    env = dict(os.environ) if env is None else env
    parser = argparse.ArgumentParser(prog="strata-operator", description=__doc__.splitlines()[0])
    parser.add_argument("--namespace", "-n", action="append", default=None,
                        help="namespace to watch (repeatable); default: STRATA_WATCH_NAMESPACES or all")
    parser.add_argument("--peering", default=env.get("STRATA_PEERING") or None,
                        help="kopf peering name for HA (needs the kopf peering CRDs)")
    priority = env.get("STRATA_PRIORITY")
    parser.add_argument("--priority", type=int, default=int(priority) if priority else None)
    parser.add_argument("--liveness", default=env.get("STRATA_LIVENESS", "http://0.0.0.0:8081/healthz"),
                        help="liveness endpoint URL, or 'none'")
    parser.add_argument("--drift-interval", type=float,
                        default=float(env.get("STRATA_DRIFT_INTERVAL_SECONDS", "300")))
    parser.add_argument("--kubeconfig", default=env.get("KUBECONFIG") or None)
    parser.add_argument("--verbose", "-v", action="store_true")
    args = parser.parse_args(argv)
    namespaces = args.namespace or [
        n.strip() for n in env.get("STRATA_WATCH_NAMESPACES", "").split(",") if n.strip()
    ]
    return OperatorSettings(
        namespaces=tuple(namespaces),
        drift_interval_seconds=args.drift_interval,
        kubeconfig=args.kubeconfig,
        peering=args.peering,
        priority=args.priority if args.priority is not None else _distinct_priority(env),
        liveness_endpoint=None if args.liveness == "none" else args.liveness,
        verbose=args.verbose,
    )


def main(argv: list[str] | None = None) -> None:
    settings = parse_settings(argv)
    logging.basicConfig(level=logging.DEBUG if settings.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    for noisy in ("httpx", "aiohttp.access") + (() if settings.verbose else ("kopf.objects",)):
        # kopf logs every handler success per object at INFO: thousands of lines per minute at scale.
        logging.getLogger(noisy).setLevel(logging.WARNING)
    registry = kopf.OperatorRegistry()
    register(registry, settings)
    operator = kopf.operator(
        registry=registry,
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        standalone=settings.peering is None,
        peering_name=settings.peering,
        priority=settings.priority,
        liveness_endpoint=settings.liveness_endpoint,
        memo=kopf.Memo(),
    )
    # uvloop, as in the runtime: cheaper TLS, socket reads and timers than asyncio's own loop, and
    # at 1,000 objects the operator is mostly reading watch streams and sending API requests.
    with contextlib.suppress(asyncio.CancelledError):
        uvloop.run(operator)
    sys.exit(0)
