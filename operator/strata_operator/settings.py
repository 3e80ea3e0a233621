"""Operator settings: one dataclass, filled by the CLI from arguments and environment."""

from __future__ import annotations

from dataclasses import dataclass

from strata_operator.allowlist import BaseUrlAllowList
from strata_runtime.agents.configmap_watch import watch_idle_timeout


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
    """Server-side timeout of a watch (timeoutSeconds); the stream is re-established after it. A watch
    silent for watch_idle_timeout_seconds is taken for dead before that."""

    @property
    def watch_idle_timeout_seconds(self) -> float:
        return watch_idle_timeout(self.watch_server_timeout_seconds)

    metrics_host: str = "0.0.0.0"
    metrics_port: int | None = 8090
    """Where GET /metrics (Prometheus) is served; None: not at all."""

    secret_watch_selector: str | None = None
    """A label selector: Secrets that match it are watched (metadata only), so that a rotation
    re-renders the AgentDeployments using them at once. None (the default): Secrets are only read
    by name (namespaced GET) when an AgentDeployment is reconciled, and re-read by the drift
    sweep; the operator needs no list/watch on Secrets at all."""

    base_url_allow_list: BaseUrlAllowList | None = None
    """Origins models and the embedder may call, cluster-wide and per namespace (the chart value
    baseUrlAllowList, STRATA_BASE_URL_ALLOW_LIST); None: not configured, every origin is accepted."""

    runtime_pod_role: str | None = None
    """The ClusterRole (patch pods) bound with a RoleBinding to the runtime's service account of an
    AgentDeployment with spec.reportAgentsHash (the chart's <fullname>-runtime-pod-annotator; the
    operator holds `bind` on that one ClusterRole, not its permissions); None: none is bound."""

    verbose: bool = False
    """Debug logging."""

    log_level: str = "INFO"
    """Root log level (a validated standard level name, upper case)."""
