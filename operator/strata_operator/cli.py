"""`strata-operator`: run the kopf operator with Strata's handlers.

    strata-operator [--namespace NS ...] [--peering NAME] [--priority N] [--liveness URL] [--metrics-port PORT]
                    [--watch-timeout SECONDS] [--log-level LEVEL] [--version]

Every option has an environment variable (STRATA_WATCH_NAMESPACES is comma-separated), so the
chart configures the operator without a command line. Without --priority, each replica takes a
distinct priority derived from its pod name, so exactly one works and the others stand by.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import socket
import sys

import kopf
import uvloop

from strata_operator.allowlist import AllowListError, BaseUrlAllowList
from strata_operator.handlers import register
from strata_operator.logs import configure_logging
from strata_operator.settings import OperatorSettings
from strata_runtime.cliargs import add_common_arguments


def _distinct_priority(env: dict[str, str]) -> int:
    identity = env.get("POD_NAME") or socket.gethostname()
    return 1 + int(hashlib.sha256(identity.encode()).hexdigest()[:6], 16) % 1_000_000


def _port(parser: argparse.ArgumentParser, value: str) -> int:
    if not value.isdigit() or not 0 < int(value) < 65536:
        parser.error(f"--metrics-port: {value!r} is not a port number (1-65535) or 'none'")
    return int(value)


def _allow_list(parser: argparse.ArgumentParser, text: str | None) -> BaseUrlAllowList | None:
    if text is None:
        return None
    try:
        return BaseUrlAllowList.parse(text)
    except AllowListError as e:
        parser.error(f"--base-url-allow-list / STRATA_BASE_URL_ALLOW_LIST: {e}")


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
    parser.add_argument("--watch-timeout", type=int, default=int(env.get("STRATA_WATCH_TIMEOUT_SECONDS", "300")),
                        help="server-side timeout of one watch request, seconds (a watch silent for "
                             "min(this, 60) + 15 s is taken for dead and opened again)")
    parser.add_argument("--metrics-port", default=env.get("STRATA_METRICS_PORT", "8090"),
                        help="port of GET /metrics (Prometheus), or 'none'")
    parser.add_argument("--secret-watch-selector", default=env.get("STRATA_SECRET_WATCH_SELECTOR") or None,
                        help="label selector of Secrets to watch for rotations (needs list/watch on Secrets); "
                             "default: none, Secrets are read by name only")
    parser.add_argument("--base-url-allow-list", default=env.get("STRATA_BASE_URL_ALLOW_LIST") or None,
                        help='origins models may call, JSON: {"cluster": [...], "namespaces": {"ns": [...]}}; '
                             "default: no check")
    parser.add_argument("--runtime-pod-role", default=env.get("STRATA_RUNTIME_POD_ROLE") or None,
                        help="ClusterRole (patch pods) bound to the runtime service account of an AgentDeployment "
                             "with spec.reportAgentsHash; default: none is bound")
    parser.add_argument("--verbose", "-v", action="store_true", help="the same as --log-level debug")
    add_common_arguments(parser, env.get("STRATA_LOG_LEVEL", "info"))
    args = parser.parse_args(argv)
    namespaces = args.namespace or [
        n.strip() for n in env.get("STRATA_WATCH_NAMESPACES", "").split(",") if n.strip()
    ]
    return OperatorSettings(
        namespaces=tuple(namespaces),
        drift_interval_seconds=args.drift_interval,
        watch_server_timeout_seconds=args.watch_timeout,
        kubeconfig=args.kubeconfig,
        peering=args.peering,
        priority=args.priority if args.priority is not None else _distinct_priority(env),
        liveness_endpoint=None if args.liveness == "none" else args.liveness,
        metrics_port=None if args.metrics_port == "none" else _port(parser, args.metrics_port),
        secret_watch_selector=args.secret_watch_selector,
        base_url_allow_list=_allow_list(parser, args.base_url_allow_list),
        runtime_pod_role=args.runtime_pod_role,
        verbose=args.verbose or args.log_level == "DEBUG",
        log_level="DEBUG" if args.verbose else args.log_level,
    )


def main(argv: list[str] | None = None) -> None:
    settings = parse_settings(argv)
    configure_logging(settings.log_level)
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
