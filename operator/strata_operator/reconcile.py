"""Pure rendering: an AgentDeployment plus what it references in, the desired objects out.

Nothing here talks to Kubernetes; `handlers` gathers the inputs through `k8s`, calls
`render`, and applies what comes back. Every rendered object is complete (server-side
apply owns exactly the fields we set) and carries a controller owner reference, so
deleting the AgentDeployment garbage-collects them.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson
import yaml
from pydantic import ValidationError

from strata_operator.allowlist import Origin, allowed
from strata_operator.models import (
    API_VERSION,
    AgentDeploymentSpec,
    CachePolicySpec,
    EgressPolicySpec,
    NetworkPolicySpec,
    RoutingPolicySpec,
    SecretKeyRef,
)
from strata_runtime.agents.configmap_watch import ENV_CONFIGMAP as ENV_AGENTS_CONFIGMAP
from strata_runtime.agents.guard import check_rules
from strata_runtime.config import AgentConfig, RuntimeConfig, agents_hash, config_hash

Obj = dict[str, Any]

CONFIG_DIR = "/etc/strata"
CONFIG_FILE = f"{CONFIG_DIR}/config.yaml"
# Agent definitions live in their own key of the same ConfigMap: the runtime watches the mounted
# file and swaps agents by hash, so a prompt/skill/tool change reaches running pods without a rollout.
AGENTS_FILE = f"{CONFIG_DIR}/agents.yaml"
DATA_DIR = "/var/lib/strata"
HTTP_PORT = 8080
RUNTIME_UID = 10001

MANAGED_BY = "strata-operator"
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_OWNER = "strata.dev/agent-deployment"
ANNOTATION_CONFIG_HASH = "strata.dev/config-hash"
ANNOTATION_SECRETS_HASH = "strata.dev/secrets-hash"
ANNOTATION_AGENTS_HASH = "strata.dev/agents-hash"

RBAC_API = "rbac.authorization.k8s.io/v1"
ENV_REDIS_URL = "STRATA_REDIS_URL"
ENV_PG_DSN = "STRATA_PG_DSN"
ENV_MILVUS_URI = "STRATA_MILVUS_URI"
ENV_MILVUS_TOKEN = "STRATA_MILVUS_TOKEN"
ENV_INTERNAL_TOKEN = "STRATA_INTERNAL_TOKEN"
ENV_API_KEY_PREFIX = "STRATA_API_KEY_"
MAX_NAME = 52  # leaves room for "-config" and ReplicaSet/pod suffixes inside 63-character names


_YamlDumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml: 10x less CPU per ConfigMap


class RenderError(Exception):
    """The inputs cannot produce a valid runtime; `reason` is a CamelCase condition reason."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Owner:
    name: str
    namespace: str
    uid: str
    kind: str = "AgentDeployment"


@dataclass(frozen=True)
class Inputs:
    """Everything `render` needs, already fetched."""

    owner: Owner
    spec: AgentDeploymentSpec
    cache_policy: CachePolicySpec | None = None
    routing_policy: RoutingPolicySpec | None = None
    api_key_tenants: tuple[str, ...] = ()
    secret_data: dict[str, dict[str, str]] = field(default_factory=dict)
    secret_uids: dict[str, str] = field(default_factory=dict)
    """metadata.uid of each referenced Secret: the secret part of the secrets-hash key."""
    keda_available: bool = False
    allowed_base_urls: tuple[Origin, ...] | None = None
    """Origins models and the embedder may call (the operator's allow-list for this namespace);
    None: no allow-list is configured, every origin is accepted."""
    pod_annotator_role: str | None = None
    """The ClusterRole (patch pods) bound in the namespace to the runtime's service account when
    spec.reportAgentsHash is set (the chart's <release>-runtime-pod-annotator, which the operator may
    bind but does not hold); None: not bound, the namespace owner grants it."""


@dataclass(frozen=True)
class ObjectRef:
    api_version: str
    kind: str
    name: str


@dataclass
class Desired:
    config: RuntimeConfig
    config_hash: str  # of the config without its agents: a change rolls the pods
    secrets_hash: str
    scaler: str  # keda | hpa | none
    objects: list[Obj]
    stale: list[ObjectRef]
    agents_hash: str = ""  # of the agent definitions: delivered to running pods, no rollout
    guard_findings: list[str] = field(default_factory=list)  # the config guard's rule findings
    pod_local_state: str | None = None
    """Why pods would keep session state or memory to themselves (replicas.max > 1), or None."""
    pods_report_agents_hash: bool = False  # spec.reportAgentsHash: pods annotate the hash they serve


def pod_local_state(spec: AgentDeploymentSpec) -> str | None:
    """With more than one replica, every store must be shared unless the spec opts in."""
    stores = spec.stores
    if spec.replicas.max <= 1 or stores.allow_pod_local_state:
        return None
    local = []
    if stores.redis is None or stores.redis.backend == "memory":
        local.append("sessions in process memory (stores.redis)")
    if stores.postgres is None:
        local.append("SQLite on the pod's disk (stores.postgres)")
    if stores.milvus is None:
        local.append("milvus-lite on the pod's disk (stores.milvus)")
    if not local:
        return None
    return (f"replicas.max is {spec.replicas.max} but each pod keeps its own state: {', '.join(local)}; "
            "sessions and memory would not move between pods. Set those stores, or "
            "stores.allowPodLocalState: true for single-pod development.")


def labels(owner: Owner) -> dict[str, str]:
    return {LABEL_NAME: "strata-runtime", LABEL_INSTANCE: owner.name, LABEL_MANAGED_BY: MANAGED_BY,
            LABEL_OWNER: owner.name}


def selector(owner: Owner) -> dict[str, str]:
    return {LABEL_NAME: "strata-runtime", LABEL_INSTANCE: owner.name}


def config_map_name(owner: Owner) -> str:
    return f"{owner.name}-config"


def api_key_env(tenant: str) -> str:
    return ENV_API_KEY_PREFIX + re.sub(r"[^A-Z0-9]", "_", tenant.upper())


def secret_refs(spec: AgentDeploymentSpec) -> list[tuple[str, SecretKeyRef]]:
    """(env name, secret key) for every secret value the runtime reads, api keys excluded."""
    refs: list[tuple[str, SecretKeyRef]] = []
    stores = spec.stores
    if stores.redis and stores.redis.url_secret_ref:
        refs.append((ENV_REDIS_URL, stores.redis.url_secret_ref))
    if stores.postgres:
        refs.append((ENV_PG_DSN, stores.postgres.dsn_secret_ref))
    if stores.milvus:
        refs.append((ENV_MILVUS_URI, stores.milvus.uri_secret_ref))
        if stores.milvus.token_secret_ref:
            refs.append((ENV_MILVUS_TOKEN, stores.milvus.token_secret_ref))
    if spec.internal_token_secret_ref:
        refs.append((ENV_INTERNAL_TOKEN, spec.internal_token_secret_ref))
    refs += [(e.name, e.secret_key_ref) for e in spec.secret_env]
    return refs


def referenced_secret_names(spec: AgentDeploymentSpec) -> set[str]:
    names = {ref.name for _, ref in secret_refs(spec)}
    if spec.api_keys_secret_ref:
        names.add(spec.api_keys_secret_ref.name)
    return names


def render_runtime_config(inputs: Inputs) -> RuntimeConfig:
    """The runtime's config file, validated by the runtime's own model (secrets only as env names)."""
    spec = inputs.spec
    _check_env_names(spec, inputs.api_key_tenants)
    _check_base_urls(spec, inputs.allowed_base_urls, inputs.owner.namespace)
    stores = spec.stores
    redis: Obj = {"backend": "memory"}
    if stores.redis:
        redis = {"backend": stores.redis.backend, "cluster": stores.redis.cluster,
                 "keyPrefix": stores.redis.key_prefix}
        if stores.redis.url_secret_ref:
            redis["urlEnv"] = ENV_REDIS_URL
    sql: Obj = {"backend": "auto", "sqlitePath": f"{DATA_DIR}/strata.db"}
    if stores.postgres:
        sql = {"backend": "postgresql", "dsnEnv": ENV_PG_DSN}
    vectors: Obj = {"backend": "auto", "uri": f"{DATA_DIR}/strata-milvus.db"}
    if stores.milvus:
        vectors = {"backend": "milvus", "uriEnv": ENV_MILVUS_URI}
        if stores.milvus.token_secret_ref:
            vectors["tokenEnv"] = ENV_MILVUS_TOKEN
    grace = spec.drain.termination_grace_period_seconds
    # The runtime's own drain must end before the kubelet's SIGKILL: grace minus the preStop sleep.
    drain_seconds = max(1, grace - spec.drain.pre_stop_sleep_seconds - 5)
    raw: Obj = {
        **spec.runtime.model_dump(mode="json", by_alias=True),
        "server": {"host": "0.0.0.0", "port": HTTP_PORT, "drainSeconds": drain_seconds},
        "auth": {
            "mode": "apiKey" if spec.api_keys_secret_ref else "none",
            "apiKeys": [{"tenant": t, "keyEnv": api_key_env(t)} for t in sorted(inputs.api_key_tenants)],
            "internalTokenEnv": ENV_INTERNAL_TOKEN if spec.internal_token_secret_ref else None,
        },
        "stores": {"redis": redis, "sql": sql, "vectors": vectors},
        "cache": (inputs.cache_policy or CachePolicySpec()).model_dump(mode="json", by_alias=True),
        "routing": (inputs.routing_policy or RoutingPolicySpec()).model_dump(mode="json", by_alias=True),
    }
    try:
        return RuntimeConfig.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'spec'}: {err['msg']}"
            for err in e.errors(include_url=False, include_input=False)
        )
        raise RenderError("InvalidSpec", f"the rendered runtime config is invalid: {problems}") from None


def _check_env_names(spec: AgentDeploymentSpec, tenants: tuple[str, ...]) -> None:
    for env in spec.secret_env:
        if env.name.startswith("STRATA_"):
            raise RenderError("InvalidSpec", f"secretEnv {env.name}: the STRATA_ prefix is reserved")
    seen: dict[str, str] = {}
    for tenant in tenants:
        env_name = api_key_env(tenant)
        if env_name in seen:
            raise RenderError("InvalidSpec", f"api key tenants {seen[env_name]!r} and {tenant!r} collide")
        seen[env_name] = tenant
    provided = {e.name for e in spec.secret_env}
    wanted: list[tuple[str, str | None]] = [
        (f"runtime.models[{m.name}].apiKeyEnv", m.api_key_env) for m in spec.runtime.models
    ]
    wanted.append(("runtime.embedder.apiKeyEnv", spec.runtime.embedder.api_key_env))
    for where, wanted_env in wanted:
        if wanted_env and wanted_env not in provided:
            raise RenderError(
                "InvalidSpec", f"{where} is {wanted_env} but no secretEnv entry provides that variable"
            )


def _check_base_urls(spec: AgentDeploymentSpec, origins: tuple[Origin, ...] | None, namespace: str) -> None:
    """Every upstream URL of the spec must be an allowed origin: it receives an API key and prompts."""
    if origins is None:
        return
    urls = [(f"runtime.models[{m.name}].baseUrl", m.base_url) for m in spec.runtime.models]
    urls.append(("runtime.embedder.baseUrl", spec.runtime.embedder.base_url))
    for where, url in urls:
        if url and not allowed(url, origins):
            listed = ", ".join(str(o) for o in origins) or "none"
            raise RenderError(
                "BaseUrlNotAllowed",
                f"{where} {url!r} is not in the operator's baseUrl allow-list for namespace {namespace} "
                f"(allowed origins: {listed}); ask the cluster administrator to add it",
            )


def secrets_hash_key(inputs: Inputs) -> bytes:
    """The per-deployment HMAC key of the secrets-hash annotation.

    It mixes the AgentDeployment's UID (one key per deployment: equal Secret values in two
    deployments give unrelated hashes) with the UID of every referenced Secret. Secret UIDs
    are random and appear only in the Secret objects themselves, so whoever can read the
    annotation but not the Secrets cannot recompute the hash to test guesses of a value,
    and whoever can read the Secrets learns nothing they did not know.
    """
    names = sorted(referenced_secret_names(inputs.spec))
    material = [inputs.owner.uid, *(f"{n}={inputs.secret_uids.get(n, '')}" for n in names)]
    return hashlib.sha256("\0".join(material).encode()).digest()


def secrets_hash(inputs: Inputs) -> str:
    """HMAC of every referenced Secret value, so that rotating a Secret rolls the pods."""
    wanted: dict[str, dict[str, str]] = {}
    for _, ref in secret_refs(inputs.spec):
        value = inputs.secret_data.get(ref.name, {}).get(ref.key)
        wanted.setdefault(ref.name, {})[ref.key] = value if value is not None else ""
    if inputs.spec.api_keys_secret_ref:
        wanted["\0api-keys"] = dict(inputs.secret_data.get(inputs.spec.api_keys_secret_ref.name, {}))
    message = orjson.dumps(wanted, option=orjson.OPT_SORT_KEYS)
    return "hmac-sha256:" + hmac.new(secrets_hash_key(inputs), message, hashlib.sha256).hexdigest()


def owner_reference(owner: Owner) -> Obj:
    return {"apiVersion": API_VERSION, "kind": owner.kind, "name": owner.name, "uid": owner.uid,
            "controller": True, "blockOwnerDeletion": True}


def _meta(owner: Owner, name: str) -> Obj:
    return {"name": name, "namespace": owner.namespace, "labels": labels(owner),
            "ownerReferences": [owner_reference(owner)]}


def guard_findings(config: RuntimeConfig) -> list[str]:
    """The config guard's deterministic findings over every agent (the runtime applies the same rules)."""
    known = frozenset(t.id for t in config.tools)
    limit = config.agent_manager.max_prompt_chars
    return [f"agents[{a.tenant}/{a.id}].{f.field}: {f.code}"
            for a in config.agents for f in check_rules(a, known_tools=known, max_prompt_chars=limit)]


def split_agents(config: RuntimeConfig) -> tuple[RuntimeConfig, list[AgentConfig]]:
    """The config the pod restarts for (agents read from AGENTS_FILE instead) and the agents.

    The whole config was validated first, so agents naming unknown models or tools are still an
    InvalidSpec here; the runtime re-checks each definition when the file changes."""
    manager = config.agent_manager.model_copy(update={"definitions_path": AGENTS_FILE})
    return config.model_copy(update={"agents": [], "agent_manager": manager}), list(config.agents)


def _yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=_YamlDumper, sort_keys=True, allow_unicode=True)


def render_config_map(owner: Owner, config: RuntimeConfig, digest: str, agents: list[AgentConfig],
                      agents_digest: str) -> Obj:
    meta = _meta(owner, config_map_name(owner))
    meta["annotations"] = {ANNOTATION_CONFIG_HASH: digest, ANNOTATION_AGENTS_HASH: agents_digest}
    agents_text = _yaml({"agents": [a.model_dump(mode="json", by_alias=True) for a in agents]})
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta,
            "data": {"config.yaml": _yaml(config.model_dump(mode="json", by_alias=True)), "agents.yaml": agents_text}}


def runtime_service_account(inputs: Inputs) -> str:
    """The pods' service account: spec.serviceAccountName, else one of their own (never the
    namespace's default, so what is granted below reaches these pods only)."""
    return inputs.spec.service_account_name or f"{inputs.owner.name}-runtime"


def render_service_account(owner: Owner) -> Obj:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(owner, f"{owner.name}-runtime"),
            "automountServiceAccountToken": False}


def _binding(owner: Owner, name: str, role_kind: str, role: str, account: str) -> Obj:
    return {"apiVersion": RBAC_API, "kind": "RoleBinding", "metadata": _meta(owner, name),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": owner.namespace}]}


def render_rbac(inputs: Inputs) -> tuple[list[Obj], list[ObjectRef]]:
    """Least privilege for the runtime's service account, in its namespace only.

    * get/list/watch on exactly its own ConfigMap (resourceNames; list and watch are allowed by
      name only with fieldSelector=metadata.name=..., which is how the runtime asks);
    * with spec.reportAgentsHash, patch on pods through the operator's pod-annotator ClusterRole
      (RBAC cannot name pods whose names are generated, nor select them by label: any pod of the
      namespace, the tightest RBAC allows).
    """
    owner = inputs.owner
    account = runtime_service_account(inputs)
    reader = f"{owner.name}-runtime"
    role = {"apiVersion": RBAC_API, "kind": "Role", "metadata": _meta(owner, reader),
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [config_map_name(owner)],
                       "verbs": ["get", "list", "watch"]}]}
    objects = [role, _binding(owner, reader, "Role", reader, account)]
    stale: list[ObjectRef] = []
    annotator = f"{owner.name}-runtime-pods"
    if inputs.spec.report_agents_hash and inputs.pod_annotator_role:
        objects.append(_binding(owner, annotator, "ClusterRole", inputs.pod_annotator_role, account))
    else:
        stale.append(ObjectRef(RBAC_API, "RoleBinding", annotator))
    if not inputs.spec.service_account_name:
        objects.insert(0, render_service_account(owner))
    return objects, stale


def _env(inputs: Inputs) -> list[Obj]:
    env: list[Obj] = [{"name": ENV_AGENTS_CONFIGMAP, "value": config_map_name(inputs.owner)}]
    if inputs.spec.report_agents_hash:  # the pod's name is what makes the runtime annotate its pod
        env.insert(0, {"name": "STRATA_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}})
    for name, ref in secret_refs(inputs.spec):
        env.append({"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    if inputs.spec.api_keys_secret_ref:
        secret = inputs.spec.api_keys_secret_ref.name
        for tenant in sorted(inputs.api_key_tenants):
            env.append({"name": api_key_env(tenant),
                        "valueFrom": {"secretKeyRef": {"name": secret, "key": tenant}}})
    return env


SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
API_ACCESS_VOLUME: Obj = {"name": "kube-api-access", "projected": {"defaultMode": 0o444, "sources": [
    {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
    {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1",
                                                                  "fieldPath": "metadata.namespace"}}]}},
]}}
"""The in-cluster API access a pod gets with automountServiceAccountToken (off here), mounted in the
runtime container only: a rotating token, the cluster CA and the pod's namespace. The runtime watches
its agent definitions ConfigMap with it (and, with spec.reportAgentsHash, annotates its own pod)."""


def render_deployment(inputs: Inputs, digest: str, secrets_digest: str, scaler: str) -> Obj:
    owner, spec = inputs.owner, inputs.spec
    pod_labels = labels(owner)
    http_get = {"port": "http", "scheme": "HTTP"}
    container: Obj = {
        "name": "runtime",
        "image": spec.image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": ["strata-runtime"],
        "args": ["--config", CONFIG_FILE],
        "ports": [{"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"}],
        "env": _env(inputs),
        "resources": {"requests": dict(spec.resources.requests), "limits": dict(spec.resources.limits)},
        "startupProbe": {"httpGet": {**http_get, "path": "/healthz"}, "periodSeconds": 2,
                         "failureThreshold": 60, "timeoutSeconds": 2},
        "readinessProbe": {"httpGet": {**http_get, "path": "/readyz"}, "periodSeconds": 5,
                           "failureThreshold": 2, "timeoutSeconds": 2},
        "livenessProbe": {"httpGet": {**http_get, "path": "/healthz"}, "periodSeconds": 10,
                          "failureThreshold": 3, "timeoutSeconds": 3},
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "data", "mountPath": DATA_DIR},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    if spec.drain.pre_stop_sleep_seconds > 0:
        container["lifecycle"] = {"preStop": {"sleep": {"seconds": spec.drain.pre_stop_sleep_seconds}}}
    spread = [
        {"maxSkew": 1, "topologyKey": key, "whenUnsatisfiable": "ScheduleAnyway",
         "labelSelector": {"matchLabels": selector(owner)}, "matchLabelKeys": ["pod-template-hash"]}
        for key in ("topology.kubernetes.io/zone", "kubernetes.io/hostname")
    ]
    pod_spec: Obj = {
        "containers": [container],
        "terminationGracePeriodSeconds": spec.drain.termination_grace_period_seconds,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {"runAsNonRoot": True, "runAsUser": RUNTIME_UID, "runAsGroup": RUNTIME_UID,
                            "fsGroup": RUNTIME_UID, "seccompProfile": {"type": "RuntimeDefault"}},
        "topologySpreadConstraints": spread,
        "volumes": [
            {"name": "config", "configMap": {"name": config_map_name(owner)}},
            {"name": "data", "emptyDir": {}},
            {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
        ],
    }
    pod_spec["serviceAccountName"] = runtime_service_account(inputs)
    pod_spec["volumes"].append(API_ACCESS_VOLUME)
    container["volumeMounts"].append({"name": API_ACCESS_VOLUME["name"], "mountPath": SERVICE_ACCOUNT_DIR,
                                      "readOnly": True})
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod_spec["tolerations"] = [t.model_dump(mode="json", by_alias=True, exclude_none=True)
                                   for t in spec.tolerations]
    if spec.priority_class_name:
        pod_spec["priorityClassName"] = spec.priority_class_name
    deployment_spec: Obj = {
        "selector": {"matchLabels": selector(owner)},
        "revisionHistoryLimit": 5,
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}},
        "template": {
            "metadata": {
                "labels": pod_labels,
                "annotations": {
                    ANNOTATION_CONFIG_HASH: digest,
                    ANNOTATION_SECRETS_HASH: secrets_digest,
                    "prometheus.io/scrape": "true",
                    "prometheus.io/port": str(HTTP_PORT),
                    "prometheus.io/path": "/metrics",
                },
            },
            "spec": pod_spec,
        },
    }
    if scaler == "none":
        # Only when nothing else scales: an autoscaler owns `replicas` otherwise (kagent #1844).
        deployment_spec["replicas"] = spec.replicas.min
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(owner, owner.name),
            "spec": deployment_spec}


def render_service(inputs: Inputs) -> Obj:
    owner = inputs.owner
    spec: Obj = {
        "type": "ClusterIP",
        "selector": selector(owner),
        "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
        "sessionAffinity": inputs.spec.session_affinity,
    }
    if inputs.spec.session_affinity == "ClientIP":
        spec["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": 3 * 3600}}
    return {"apiVersion": "v1", "kind": "Service", "metadata": _meta(owner, owner.name), "spec": spec}


def render_pdb(inputs: Inputs) -> Obj:
    # maxUnavailable rather than minAvailable: with one replica a node drain still proceeds.
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": _meta(inputs.owner, inputs.owner.name),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(inputs.owner)},
                     "unhealthyPodEvictionPolicy": "AlwaysAllow"}}


def _pod_regex(owner: Owner) -> str:
    return f"{owner.name}-[a-z0-9]+-[a-z0-9]+"


def prometheus_query(metric: str, owner: Owner, aggregate: str = "sum") -> str:
    return f'{aggregate}({metric}{{namespace="{owner.namespace}",pod=~"{_pod_regex(owner)}"}})'


def session_depth_url(owner: Owner) -> str:
    """The runtime's session-depth endpoint through its own Service (any pod answers for all)."""
    return f"http://{owner.name}.{owner.namespace}.svc/metrics/session-depth"


def _keda_triggers(inputs: Inputs) -> list[Obj]:
    """Session depth (and, from Prometheus, pending requests). A value that cannot be read is an
    error, so KEDA holds the fallback replicas: `ignoreNullValues: false` (an absent series is not 0)."""
    owner, keda = inputs.owner, inputs.spec.scaling.keda
    if keda.trigger == "metricsApi":
        return [{"type": "metrics-api", "name": "session-depth", "metricType": "AverageValue",
                 "metadata": {"url": session_depth_url(owner), "format": "json", "valueLocation": "sessionDepth",
                              "targetValue": str(keda.active_sessions_per_pod)}}]
    # strata_session_depth is the deployment's count on every pod: max, not sum.
    return [
        {"type": "prometheus", "name": name, "metricType": "AverageValue",
         "metadata": {"serverAddress": keda.prometheus_address, "query": prometheus_query(metric, owner, agg),
                      "threshold": str(per_pod), "ignoreNullValues": "false"}}
        for name, metric, agg, per_pod in (
            ("session-depth", "strata_session_depth", "max", keda.active_sessions_per_pod),
            ("pending-requests", "strata_pending_requests", "sum", keda.pending_requests_per_pod),
        )
    ]


def render_scaled_object(inputs: Inputs) -> Obj:
    owner, spec = inputs.owner, inputs.spec
    keda = spec.scaling.keda
    return {
        "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": _meta(owner, owner.name),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": owner.name},
            "minReplicaCount": spec.replicas.min,
            "maxReplicaCount": spec.replicas.max,
            "pollingInterval": keda.polling_interval_seconds,
            "cooldownPeriod": keda.cooldown_seconds,
            "fallback": {"failureThreshold": 3, "replicas": keda.fallback_replicas or spec.replicas.min},
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": _scale_behavior(keda.cooldown_seconds)}},
            "triggers": _keda_triggers(inputs),
        },
    }


def _scale_behavior(cooldown: int) -> Obj:
    return {"scaleDown": {"stabilizationWindowSeconds": min(cooldown, 3600),
                          "policies": [{"type": "Percent", "value": 50, "periodSeconds": 60}]}}


def render_hpa(inputs: Inputs) -> Obj:
    """The fallback without KEDA: per-pod gauges through a custom-metrics adapter, plus CPU. Pods
    metrics are averaged over pods, so each pod's own share of the sessions, not the deployment's count."""
    owner, spec = inputs.owner, inputs.spec
    keda = spec.scaling.keda
    pods_metrics = [
        {"type": "Pods", "pods": {"metric": {"name": metric},
                                  "target": {"type": "AverageValue", "averageValue": str(per_pod)}}}
        for metric, per_pod in (("strata_pod_session_depth", keda.active_sessions_per_pod),
                                ("strata_pending_requests", keda.pending_requests_per_pod))
    ]
    cpu = {"type": "Resource",
           "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}
    return {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": _meta(owner, owner.name),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": owner.name},
            "minReplicas": spec.replicas.min,
            "maxReplicas": spec.replicas.max,
            "metrics": [*pods_metrics, cpu],
            "behavior": _scale_behavior(keda.cooldown_seconds),
        },
    }


def _namespaces_named(names: list[str]) -> Obj:
    return {"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": sorted(names)}]}


def _ingress_peers(owner: Owner, np: NetworkPolicySpec) -> list[Obj]:
    """Clients admitted: this namespace and the peer namespaces (or all), optionally only labelled pods."""
    namespaces = {} if np.allow_all_namespaces else _namespaces_named([owner.namespace, *np.peer_namespaces])
    peer: Obj = {"namespaceSelector": namespaces}
    if np.peer_pod_labels:
        peer["podSelector"] = {"matchLabels": dict(np.peer_pod_labels)}
    return [peer]


def _ip_block(cidr: str, excepts: list[str]) -> Obj:
    try:
        network = ipaddress.ip_network(cidr, strict=False)
        carved = [ipaddress.ip_network(e, strict=False) for e in excepts]
    except ValueError as e:
        raise RenderError("InvalidSpec", f"networkPolicy.egress: {e}") from None
    # The API server rejects an `except` outside its cidr, so only the ranges inside it are kept.
    inside = [str(c) for c in carved
              if c.version == network.version and c != network and c.subnet_of(network)]  # type: ignore[arg-type]
    return {"ipBlock": {"cidr": str(network), **({"except": inside} if inside else {})}}


def _egress_rules(egress: EgressPolicySpec) -> list[Obj]:
    ports = [{"port": p, "protocol": "TCP"} for p in egress.ports]
    rules: list[Obj] = []
    if egress.allow_dns:
        rules.append({"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]})
    if egress.namespaces:
        rules.append({"to": [{"namespaceSelector": _namespaces_named(egress.namespaces)}],
                      **({"ports": ports} if ports else {})})
    if egress.cidrs:
        rules.append({"to": [_ip_block(c, egress.except_cidrs) for c in egress.cidrs],
                      **({"ports": ports} if ports else {})})
    return rules


_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def cluster_namespace_of(url: str) -> str | None:
    """The namespace of a cluster-local Service address (`http://<service>.<namespace>[.svc[...]]:port`),
    None for any other host (an IP, an external name, a bare service name)."""
    host = urlsplit(url).hostname or ""  # lower-cased by urlsplit
    labels = host.split(".")
    if len(labels) < 2 or (len(labels) > 2 and labels[2] != "svc") or not _DNS_LABEL.fullmatch(labels[1]):
        return None
    return labels[1]


def _autoscaler_peers(inputs: Inputs) -> list[Obj]:
    """The namespace whose pods read the runtime's depth: KEDA's (metrics-api reads /metrics/session-depth)
    or Prometheus's (it scrapes /metrics for the prometheus trigger), when that is a Service address."""
    keda = inputs.spec.scaling.keda
    if not (keda.enabled and inputs.keda_available):
        return []
    namespace = keda.keda_namespace if keda.trigger == "metricsApi" else cluster_namespace_of(keda.prometheus_address)
    return [{"namespaceSelector": _namespaces_named([namespace])}] if namespace else []


def render_network_policy(inputs: Inputs) -> Obj:
    owner, np = inputs.owner, inputs.spec.network_policy
    peers = _ingress_peers(owner, np)
    if not np.allow_all_namespaces:
        peers += _autoscaler_peers(inputs)
    spec: Obj = {"podSelector": {"matchLabels": selector(owner)}, "policyTypes": ["Ingress"],
                 "ingress": [{"from": peers, "ports": [{"port": HTTP_PORT, "protocol": "TCP"}]}]}
    if np.egress.enabled:
        spec["policyTypes"].append("Egress")
        spec["egress"] = _egress_rules(np.egress)
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": _meta(owner, owner.name),
            "spec": spec}


SCALED_OBJECT = ObjectRef("keda.sh/v1alpha1", "ScaledObject", "")
HPA = ObjectRef("autoscaling/v2", "HorizontalPodAutoscaler", "")
NETWORK_POLICY = ObjectRef("networking.k8s.io/v1", "NetworkPolicy", "")


def render(inputs: Inputs) -> Desired:
    owner = inputs.owner
    if len(owner.name) > MAX_NAME:
        raise RenderError("InvalidSpec", f"metadata.name must be at most {MAX_NAME} characters")
    full = render_runtime_config(inputs)
    findings = guard_findings(full)
    if findings and full.agent_manager.guard == "enforce":
        raise RenderError("GuardRejected", "the config guard rejects: " + "; ".join(findings[:10]))
    config, agents = split_agents(full)
    digest = config_hash(config)
    agents_digest = agents_hash(agents)
    secrets_digest = secrets_hash(inputs)
    scaler = "none"
    if inputs.spec.scaling.keda.enabled:
        scaler = "keda" if inputs.keda_available else "hpa"
    objects = [
        render_config_map(owner, config, digest, agents, agents_digest),
        render_deployment(inputs, digest, secrets_digest, scaler),
        render_service(inputs),
        render_pdb(inputs),
    ]
    stale: list[ObjectRef] = []
    if scaler == "keda":
        objects.append(render_scaled_object(inputs))
        stale.append(ObjectRef(HPA.api_version, HPA.kind, owner.name))
    elif scaler == "hpa":
        objects.append(render_hpa(inputs))
        stale.append(ObjectRef(SCALED_OBJECT.api_version, SCALED_OBJECT.kind, owner.name))
    else:
        stale += [ObjectRef(HPA.api_version, HPA.kind, owner.name),
                  ObjectRef(SCALED_OBJECT.api_version, SCALED_OBJECT.kind, owner.name)]
    rbac, rbac_stale = render_rbac(inputs)
    objects += rbac
    stale += rbac_stale
    if inputs.spec.network_policy.enabled:
        objects.append(render_network_policy(inputs))
    else:
        stale.append(ObjectRef(NETWORK_POLICY.api_version, NETWORK_POLICY.kind, owner.name))
    return Desired(config=config, config_hash=digest, secrets_hash=secrets_digest, scaler=scaler,
                   objects=objects, stale=stale, agents_hash=agents_digest, guard_findings=findings,
                   pod_local_state=pod_local_state(inputs.spec),
                   pods_report_agents_hash=inputs.spec.report_agents_hash)
