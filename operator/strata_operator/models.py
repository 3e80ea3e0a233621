"""The three custom resources (SPEC 6.3) as pydantic models; `hack/gen_crds.py` turns them into CRDs.

Every shape the runtime also understands (cache and routing policies, the agent-facing
runtime section, secret references) is imported from `strata_runtime.config`, so the
operator can never write a field the runtime does not know.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from strata_runtime.config import (
    AgentRuntimeSpec,
    CachePolicySpec,
    ConfigModel,
    RoutingPolicySpec,
    SecretKeyRef,
)

GROUP = "strata.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

__all__ = [
    "AGENT_DEPLOYMENT",
    "API_VERSION",
    "CACHE_POLICY",
    "GROUP",
    "ROUTING_POLICY",
    "VERSION",
    "AgentDeploymentSpec",
    "AgentDeploymentStatus",
    "CachePolicySpec",
    "Condition",
    "CrdInfo",
    "DrainSpec",
    "KedaScalingSpec",
    "LocalObjectRef",
    "MilvusStoreRef",
    "NetworkPolicySpec",
    "PolicyStatus",
    "PostgresStoreRef",
    "RedisStoreRef",
    "ReplicasSpec",
    "ResourceRequirements",
    "RoutingPolicySpec",
    "ScalingSpec",
    "SecretEnvVar",
    "SecretKeyRef",
    "StoresRefSpec",
    "Toleration",
]


class LocalObjectRef(ConfigModel):
    """A same-namespace object referenced by name."""

    name: str = Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


class ReplicasSpec(ConfigModel):
    min: int = Field(2, ge=1, le=1000, description="Never scaled below this (KEDA/HPA minReplicas).")
    max: int = Field(20, ge=1, le=1000, description="Never scaled above this (KEDA/HPA maxReplicas).")

    @model_validator(mode="after")
    def _min_not_above_max(self) -> ReplicasSpec:
        if self.min > self.max:
            raise ValueError("replicas.min must not exceed replicas.max")
        return self


class ResourceRequirements(ConfigModel):
    """Container resources, Kubernetes quantities as strings ("500m", "1Gi")."""

    requests: dict[str, str] = Field(
        {"cpu": "500m", "memory": "512Mi"}, description="Requests of the runtime container."
    )
    limits: dict[str, str] = Field({"memory": "1Gi"}, description="Limits (no CPU limit by default).")


class RedisStoreRef(ConfigModel):
    backend: Literal["auto", "redis", "memory"] = Field(
        "auto", description="auto degrades to memory while Redis is down; redis fails readiness instead."
    )
    url_secret_ref: SecretKeyRef | None = Field(None, description="Secret key holding the Redis URL.")
    cluster: bool = Field(False, description="Speak the Redis Cluster protocol.")
    key_prefix: str = Field("strata", min_length=1, description="Prefix of every key the runtime writes.")


class PostgresStoreRef(ConfigModel):
    dsn_secret_ref: SecretKeyRef = Field(description="Secret key holding the Postgres DSN.")


class MilvusStoreRef(ConfigModel):
    uri_secret_ref: SecretKeyRef = Field(description="Secret key holding the Milvus URI.")
    token_secret_ref: SecretKeyRef | None = Field(None, description="Secret key holding the Milvus token.")


class StoresRefSpec(ConfigModel):
    redis: RedisStoreRef | None = None
    postgres: PostgresStoreRef | None = None
    milvus: MilvusStoreRef | None = None


class SecretEnvVar(ConfigModel):
    """An environment variable of the runtime filled from a Secret (e.g. a model's apiKeyEnv)."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    secret_key_ref: SecretKeyRef


class KedaScalingSpec(ConfigModel):
    enabled: bool = Field(
        True,
        description="Autoscale on session depth: a KEDA ScaledObject, or an autoscaling/v2 HPA when "
        "the KEDA CRDs are not installed. false: a fixed replicas.min.",
    )
    active_sessions_per_pod: int = Field(200, ge=1, description="Target strata_active_sessions per pod.")
    pending_requests_per_pod: int = Field(20, ge=1, description="Target strata_pending_requests per pod.")
    prometheus_address: str = Field(
        "http://prometheus.monitoring:9090", min_length=1, description="Prometheus KEDA queries."
    )
    cooldown_seconds: int = Field(300, ge=0, le=86400, description="Wait after the last trigger before scaling in.")
    polling_interval_seconds: int = Field(15, ge=1, le=3600, description="How often KEDA evaluates triggers.")
    fallback_replicas: int | None = Field(
        None, ge=1, description="Replicas while Prometheus is unreachable; default replicas.min."
    )


class ScalingSpec(ConfigModel):
    keda: KedaScalingSpec = KedaScalingSpec()


class DrainSpec(ConfigModel):
    termination_grace_period_seconds: int = Field(
        120, ge=1, le=3600, description="Bound on finishing in-flight streams after SIGTERM."
    )
    pre_stop_sleep_seconds: int = Field(
        10, ge=0, le=300, description="Sleep before SIGTERM so endpoints stop routing to the pod."
    )

    @model_validator(mode="after")
    def _sleep_within_grace(self) -> DrainSpec:
        if self.pre_stop_sleep_seconds >= self.termination_grace_period_seconds:
            raise ValueError("drain.preStopSleepSeconds must be below drain.terminationGracePeriodSeconds")
        return self


class NetworkPolicySpec(ConfigModel):
    enabled: bool = Field(True, description="Render a NetworkPolicy for the runtime pods.")
    allow_all_namespaces: bool = Field(
        True,
        description="true: any pod in the cluster may connect (traffic from outside only through an "
        "ingress controller); false: only this namespace and peerNamespaces.",
    )
    peer_namespaces: list[str] = Field([], description="Extra namespaces allowed when allowAllNamespaces is false.")


class Toleration(ConfigModel):
    """A pod toleration (the Kubernetes shape)."""

    key: str | None = None
    operator: Literal["Exists", "Equal"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class AgentDeploymentSpec(ConfigModel):
    image: str = Field("strata-runtime:0.1.0", min_length=1, description="Runtime container image.")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    replicas: ReplicasSpec = ReplicasSpec()
    resources: ResourceRequirements = ResourceRequirements()
    runtime: AgentRuntimeSpec = AgentRuntimeSpec()
    stores: StoresRefSpec = StoresRefSpec()
    api_keys_secret_ref: LocalObjectRef | None = Field(
        None,
        description="Secret whose keys are tenant names and values their API keys; without it the "
        "runtime runs with auth mode none (development only).",
    )
    internal_token_secret_ref: SecretKeyRef | None = Field(
        None, description="Secret key with the service token for /internal endpoints; unset: they refuse calls."
    )
    secret_env: list[SecretEnvVar] = Field(
        [], description="Environment variables from Secrets, e.g. the apiKeyEnv of runtime.models."
    )
    cache_policy_ref: LocalObjectRef | None = None
    routing_policy_ref: LocalObjectRef | None = None
    scaling: ScalingSpec = ScalingSpec()
    drain: DrainSpec = DrainSpec()
    session_affinity: Literal["ClientIP", "None"] = "ClientIP"
    network_policy: NetworkPolicySpec = NetworkPolicySpec()
    service_account_name: str | None = Field(None, description="Pod service account; default: the namespace's.")
    node_selector: dict[str, str] = Field({}, description="Pod nodeSelector.")
    tolerations: list[Toleration] = Field([], description="Pod tolerations.")
    priority_class_name: str | None = Field(None, description="Pod priorityClassName.")


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(ConfigModel):
    type: str = Field(description="Ready, Progressing, Degraded or KedaScaling.")
    status: ConditionStatus
    reason: str = Field(description="One CamelCase word.")
    message: str = ""
    last_transition_time: str | None = None
    observed_generation: int | None = None


class AgentDeploymentStatus(ConfigModel):
    observed_generation: int | None = None
    replicas: int | None = None
    ready_replicas: int | None = None
    config_hash: str | None = None
    scaler: Literal["keda", "hpa", "none"] | None = Field(None, description="What owns the replica count.")
    conditions: list[Condition] = []


class PolicyStatus(ConfigModel):
    observed_generation: int | None = None
    conditions: list[Condition] = []


class CrdInfo(ConfigModel):
    """How one custom resource is named; used by the CRD generator and the operator alike."""

    kind: str
    plural: str
    singular: str
    short_names: list[str]


AGENT_DEPLOYMENT = CrdInfo(kind="AgentDeployment", plural="agentdeployments", singular="agentdeployment",
                           short_names=["agd", "agentdeploy"])
CACHE_POLICY = CrdInfo(kind="CachePolicy", plural="cachepolicies", singular="cachepolicy", short_names=["cachepol"])
ROUTING_POLICY = CrdInfo(kind="RoutingPolicy", plural="routingpolicies", singular="routingpolicy",
                         short_names=["routepol"])
