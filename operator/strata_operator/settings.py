"""Operator settings: one dataclass, filled by the CLI from arguments and environment."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OperatorSettings:
    namespaces: tuple[str, ...] = ()
    """Namespaces to watch; empty: the whole cluster (needs the ClusterRole)."""

    drift_interval_seconds: float = 300.0
    """Period of the operator-wide sweep re-applying every child of every AgentDeployment (spread
    over half the period). Deletions of children are repaired at once (watch events); the sweep
    catches in-place edits of fields we own. Not a per-object kopf timer: that would put kopf's
    finalizer on every AgentDeployment and block deletion whenever the operator is down."""

    keda_discovery_ttl_seconds: float = 10.0
    """How long the answer to "is KEDA installed?" is cached."""

    kubeconfig: str | None = None
    """Kubeconfig for the operator's own API client; None: in-cluster or $KUBECONFIG."""

    peering: str | None = None
    """kopf peering name for HA (a ClusterKopfPeering/KopfPeering object); None: standalone."""

    priority: int = 0
    """kopf peering priority; the highest live operator works, the others stand by."""

    liveness_endpoint: str | None = "http://0.0.0.0:8081/healthz"
    """Where kopf serves its liveness probe; None: no endpoint."""

    request_timeout_seconds: float = 30.0
    """Deadline of one kopf API request (watch requests use watch_server_timeout_seconds)."""

    watch_server_timeout_seconds: int = 300
    """Server-side timeout of a watch; the stream is re-established after it, never silently stuck."""

    verbose: bool = False
    """Debug logging."""
