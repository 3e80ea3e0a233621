"""The three custom resources as pydantic models; `hack/gen_crds.py` turns them into CRDs.

Every field carries a description (a `Field(description=...)` or the docstring of its model):
it becomes the CRD's OpenAPI description, shown by `kubectl explain` and in docs/crd-reference.md.

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
    "EgressPolicySpec",
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
    "RoutingPolicyStatus",
    "RoutingThresholds",
    "ScalingSpec",
    "SecretEnvVar",
    "SecretKeyRef",
    "StoresRefSpec",
    "Toleration",
]


class LocalObjectRef(ConfigModel):
    """A same-namespace object referenced by name."""

    name: str = Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
                      description="Name of the object in the AgentDeployment's namespace.")


class ReplicasSpec(ConfigModel):
    """Bounds of the runtime's replica count; the autoscaler moves between them."""

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
        {"cpu": "500m", "memory": "512Mi"}, description="Requests of the runtime container (resource name: quantity)."
    )
    limits: dict[str, str] = Field({"memory": "1Gi"}, description="Limits (no CPU limit by default).")


class RedisStoreRef(ConfigModel):
    """Redis for sessions, the cache, rate limits and usage."""

    backend: Literal["auto", "redis", "memory"] = Field(
        "auto", description="auto degrades to memory while Redis is down; redis fails readiness instead."
    )
    url_secret_ref: SecretKeyRef | None = Field(None, description="Secret key holding the Redis URL.")
    cluster: bool = Field(False, description="Speak the Redis Cluster protocol.")
    key_prefix: str = Field("strata", min_length=1, description="Prefix of every key the runtime writes.")


class PostgresStoreRef(ConfigModel):
    """Postgres for spilled session buffers and agent config history; without it, SQLite in the pod."""

    dsn_secret_ref: SecretKeyRef = Field(description="Secret key holding the Postgres DSN.")


class MilvusStoreRef(ConfigModel):
    """A Milvus server for long-term memory and the semantic cache index; without it, milvus-lite in the pod."""

    uri_secret_ref: SecretKeyRef = Field(description="Secret key holding the Milvus URI.")
    token_secret_ref: SecretKeyRef | None = Field(None, description="Secret key holding the Milvus token.")


class StoresRefSpec(ConfigModel):
    """External stores; each one left out is replaced by an embedded store inside the pod."""

    redis: RedisStoreRef | None = Field(None, description="Redis; unset: in-process memory (state per pod).")
    postgres: PostgresStoreRef | None = Field(None, description="Postgres; unset: SQLite on the pod's disk.")
    milvus: MilvusStoreRef | None = Field(None, description="Milvus; unset: milvus-lite on the pod's disk.")
    allow_pod_local_state: bool = Field(
        False,
        description="Accept state kept inside each pod (a store left out, or Redis backend memory) with "
        "replicas.max > 1: sessions and memory then do not move between pods. Unset, such a spec is "
        "rolled out but reported Ready=False with reason PodLocalState (single-pod development only).",
    )


class SecretEnvVar(ConfigModel):
    """An environment variable of the runtime filled from a Secret (e.g. a model's apiKeyEnv)."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                      description="Variable name; the STRATA_ prefix is reserved for the operator.")
    secret_key_ref: SecretKeyRef = Field(description="The Secret key whose value the variable gets.")


class KedaScalingSpec(ConfigModel):
    """Autoscaling on session depth: the sessions the deployment is serving now (a turn in flight or a
    turn ended within the runtime's session-depth window), counted once across pods."""

    enabled: bool = Field(
        True,
        description="Autoscale on session depth: a KEDA ScaledObject, or an autoscaling/v2 HPA when "
        "the KEDA CRDs are not installed. false: a fixed replicas.min.",
    )
    trigger: Literal["prometheus", "metricsApi"] = Field(
        "prometheus",
        description="Where KEDA reads session depth. prometheus: max(strata_session_depth) of the pods from "
        "prometheusAddress (plus a pending-requests trigger); metricsApi: GET /metrics/session-depth on the "
        "runtime's own Service (no Prometheus needed; with networkPolicy enabled, kedaNamespace is admitted). "
        "Either way an unreadable value is an error (KEDA then holds fallbackReplicas), never a 0.",
    )
    active_sessions_per_pod: int = Field(
        200, ge=1, description="Target session depth per pod: replicas = ceil(strata_session_depth / this)."
    )
    pending_requests_per_pod: int = Field(
        20, ge=1, description="Target strata_pending_requests per pod (prometheus trigger and HPA only)."
    )
    prometheus_address: str = Field(
        "http://prometheus.monitoring:9090", min_length=1,
        description="Prometheus KEDA queries. When it is a Service address (<service>.<namespace>[.svc...]), "
        "the NetworkPolicy admits that namespace, so Prometheus can scrape the runtime pods' /metrics.",
    )
    keda_namespace: str = Field(
        "keda", min_length=1, description="Namespace of the KEDA operator, admitted by the NetworkPolicy when "
        "trigger is metricsApi."
    )
    cooldown_seconds: int = Field(300, ge=0, le=86400, description="Wait after the last trigger before scaling in.")
    polling_interval_seconds: int = Field(15, ge=1, le=3600, description="How often KEDA evaluates triggers.")
    fallback_replicas: int | None = Field(
        None, ge=1, description="Replicas while the session depth cannot be read; default replicas.min."
    )


class ScalingSpec(ConfigModel):
    """How the replica count follows the load."""

    keda: KedaScalingSpec = Field(KedaScalingSpec(), description="KEDA (or HPA) autoscaling.")


class DrainSpec(ConfigModel):
    """Graceful shutdown: how long a terminating pod may finish its streams."""

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


class EgressPolicySpec(ConfigModel):
    """Where the runtime pods may connect to; off by default (all egress allowed)."""

    enabled: bool = Field(
        False, description="true: the NetworkPolicy also restricts egress to DNS and the destinations below."
    )
    allow_dns: bool = Field(True, description="Allow DNS (port 53, UDP and TCP) to any destination.")
    namespaces: list[str] = Field(
        [], description="Namespaces whose pods may be reached (e.g. where Redis, Postgres or Prometheus run)."
    )
    cidrs: list[str] = Field(
        [], description="IP ranges that may be reached (e.g. an LLM provider's addresses, or 0.0.0.0/0)."
    )
    except_cidrs: list[str] = Field(
        ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"],
        description="Ranges carved out of every entry of cidrs (private and link-local addresses by default).",
    )
    ports: list[int] = Field(
        [], description="Destination TCP ports allowed for cidrs and namespaces; empty: every port."
    )


class NetworkPolicySpec(ConfigModel):
    """Which clients may reach the runtime pods, and (optionally) where the pods may connect to."""

    enabled: bool = Field(True, description="Render a NetworkPolicy for the runtime pods.")
    allow_all_namespaces: bool = Field(
        False,
        description="true: any pod in the cluster may connect; false (default): only pods of this "
        "namespace and of peerNamespaces (list the ingress controller's namespace there).",
    )
    peer_namespaces: list[str] = Field([], description="Extra namespaces whose pods may connect.")
    peer_pod_labels: dict[str, str] = Field(
        {}, description="When set, only pods carrying these labels (in the allowed namespaces) may connect."
    )
    egress: EgressPolicySpec = Field(EgressPolicySpec(), description="Egress restrictions (opt-in).")


class Toleration(ConfigModel):
    """A pod toleration (the Kubernetes shape)."""

    key: str | None = Field(None, description="Taint key; empty with operator Exists: every taint.")
    operator: Literal["Exists", "Equal"] = Field("Equal", description="Exists or Equal (key and value).")
    value: str | None = Field(None, description="Taint value (operator Equal).")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="Taint effect to tolerate; empty: all."
    )
    toleration_seconds: int | None = Field(
        None, description="How long a NoExecute taint is tolerated before eviction; empty: forever."
    )


class AgentDeploymentSpec(ConfigModel):
    """The desired runtime: image, replicas, agents and models, stores, secrets, scaling, policies."""

    image: str = Field("strata-runtime:0.1.0", min_length=1, description="Runtime container image.")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        "IfNotPresent", description="Image pull policy of the runtime container."
    )
    replicas: ReplicasSpec = Field(ReplicasSpec(), description="Replica bounds.")
    resources: ResourceRequirements = Field(ResourceRequirements(), description="Runtime container resources.")
    runtime: AgentRuntimeSpec = Field(
        AgentRuntimeSpec(),
        description="The agent-facing runtime config (models, agents, tools, memory, limits), rendered into "
        "the runtime's config file.",
    )
    stores: StoresRefSpec = Field(StoresRefSpec(), description="External stores, by Secret reference.")
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
    cache_policy_ref: LocalObjectRef | None = Field(
        None, description="CachePolicy of the namespace to use; unset: the built-in defaults."
    )
    routing_policy_ref: LocalObjectRef | None = Field(
        None, description="RoutingPolicy of the namespace to use; unset: the built-in defaults."
    )
    scaling: ScalingSpec = Field(ScalingSpec(), description="Autoscaling.")
    drain: DrainSpec = Field(DrainSpec(), description="Graceful shutdown.")
    session_affinity: Literal["ClientIP", "None"] = Field(
        "ClientIP", description="Service session affinity; ClientIP keeps a client on the pod holding its session."
    )
    network_policy: NetworkPolicySpec = Field(NetworkPolicySpec(), description="NetworkPolicy of the runtime pods.")
    service_account_name: str | None = Field(
        None, description="Pod service account; default: <name>-runtime, created by the operator. Either way the "
        "operator binds it a Role that reads only this deployment's ConfigMap (the runtime watches its agent "
        "definitions through the API server).")
    report_agents_hash: bool = Field(False, description="Each runtime pod writes the agent definitions hash it "
                                     "serves on its own strata.dev/agents-hash annotation (status.pods, "
                                     "AgentsServed). The operator binds its pod-annotator ClusterRole (patch on "
                                     "pods) to the pods' service account in this namespace: RBAC cannot narrow "
                                     "that to the pods of this deployment. Off: no such grant, status.pods shows "
                                     "no hash.")
    node_selector: dict[str, str] = Field({}, description="Pod nodeSelector.")
    tolerations: list[Toleration] = Field([], description="Pod tolerations.")
    priority_class_name: str | None = Field(None, description="Pod priorityClassName.")


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(ConfigModel):
    """One observation about the object, in the Kubernetes condition convention."""

    type: str = Field(description="Condition type, e.g. Ready, Reconciling, Stalled, Degraded, KedaScaling.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(description="One CamelCase word.")
    message: str = Field("", description="Human-readable detail.")
    last_transition_time: str | None = Field(None, description="When status last changed (RFC 3339).")
    observed_generation: int | None = Field(None, description="metadata.generation this condition describes.")


class PodAgents(ConfigModel):
    """One runtime pod and the agent definitions it serves."""

    name: str = Field(description="Pod name.")
    agents_hash: str = Field(description="The agent definitions hash the pod reports in its strata.dev/agents-hash "
                             "annotation after each load; empty until it first does.")


class AgentDeploymentStatus(ConfigModel):
    """What the operator observed; written by the operator only."""

    observed_generation: int | None = Field(None, description="metadata.generation the operator last processed.")
    replicas: int | None = Field(None, description="Runtime pods.")
    ready_replicas: int | None = Field(None, description="Ready runtime pods.")
    config_hash: str | None = Field(None, description="SHA-256 of the rendered runtime config without its agents "
                                    "(a change rolls the pods).")
    agents_hash: str | None = Field(None, description="Hash of the agent definitions delivered to the pods through "
                                    "the ConfigMap, without a rollout; each pod reports the one it serves as the "
                                    "definitions_hash label of strata_agent_definitions_info on /metrics.")
    scaler: Literal["keda", "hpa", "none"] | None = Field(None, description="What owns the replica count.")
    pods: list[PodAgents] | None = Field(None, description="The live runtime pods (by name, at most 100) and the "
                                         "agent definitions hash each serves.")
    agents_hash_current_pods: int | None = Field(None, description="Runtime pods that serve agentsHash; the "
                                                 "AgentsServed condition names the others.")
    conditions: list[Condition] = Field([], description="Current conditions.")


class PolicyStatus(ConfigModel):
    """Whether the policy is valid; written by the operator only."""

    observed_generation: int | None = Field(None, description="metadata.generation the operator last validated.")
    conditions: list[Condition] = Field([], description="Current conditions.")


class RoutingThresholds(ConfigModel):
    """The semantic router's thresholds in force for this policy (defaults applied)."""

    high: float = Field(description="Score above which a request goes straight to a skill.")
    low: float = Field(description="Score below which no hint is passed to the classifier.")
    aggregation: str = Field(description="How a skill's score is made from its texts (max or meanTopK).")
    fitted_skills: int = Field(0, description="Skills with thresholds of their own (semantic.skills).")


class RoutingPolicyStatus(PolicyStatus):
    """Whether the policy is valid and the routing thresholds in force; written by the operator only."""

    thresholds: RoutingThresholds | None = Field(None, description="Semantic-router thresholds in force; "
                                                 "absent while the spec is invalid.")


class CrdInfo(ConfigModel):
    """How one custom resource is named; used by the CRD generator and the operator alike."""

    kind: str
    plural: str
    singular: str
    short_names: list[str]
    description: str


AGENT_DEPLOYMENT = CrdInfo(kind="AgentDeployment", plural="agentdeployments", singular="agentdeployment",
                           short_names=["agd", "agentdeploy"],
                           description="A Strata runtime serving a set of agents: the operator renders its config "
                           "into a ConfigMap and runs it as a Deployment with a Service, a PodDisruptionBudget, "
                           "an autoscaler and a NetworkPolicy.")
CACHE_POLICY = CrdInfo(kind="CachePolicy", plural="cachepolicies", singular="cachepolicy", short_names=["cachepol"],
                       description="Response caching (exact and semantic) for the AgentDeployments that name it "
                       "in spec.cachePolicyRef.")
ROUTING_POLICY = CrdInfo(kind="RoutingPolicy", plural="routingpolicies", singular="routingpolicy",
                         short_names=["routepol"],
                         description="How requests find their skill (regex rules, a complexity heuristic, skill "
                         "embeddings, an LLM classifier) for the AgentDeployments that name it in "
                         "spec.routingPolicyRef.")
