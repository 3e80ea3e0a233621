"""Pure rendering: an AgentDeployment plus what it references in, the desired objects out.

Nothing here talks to Kubernetes; `handlers` gathers the inputs through `k8s`, calls
`render`, and applies what comes back. Every rendered object is complete (server-side
apply owns exactly the fields we set) and carries a controller owner reference, so
deleting the AgentDeployment garbage-collects them.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

import orjson
import yaml
from pydantic import ValidationError

from strata_operator.models import (
    API_VERSION,
    AgentDeploymentSpec,
    CachePolicySpec,
    RoutingPolicySpec,
    SecretKeyRef,
)
from strata_runtime.config import RuntimeConfig, config_hash

Obj = dict[str, Any]

CONFIG_DIR = "/etc/strata"
CONFIG_FILE = f"{CONFIG_DIR}/config.yaml"
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
    keda_available: bool = False


@dataclass(frozen=True)
class ObjectRef:
    api_version: str
    kind: str
    name: str


@dataclass
class Desired:
    config: RuntimeConfig
    config_hash: str
    secrets_hash: str
    scaler: str  # keda | hpa | none
    objects: list[Obj]
    stale: list[ObjectRef]


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


def secrets_hash(inputs: Inputs) -> str:
    """Hash of every referenced Secret value, so that rotating a Secret rolls the pods."""
    wanted: dict[str, dict[str, str]] = {}
    for _, ref in secret_refs(inputs.spec):
        value = inputs.secret_data.get(ref.name, {}).get(ref.key)
        wanted.setdefault(ref.name, {})[ref.key] = value if value is not None else ""
    if inputs.spec.api_keys_secret_ref:
        wanted["\0api-keys"] = dict(inputs.secret_data.get(inputs.spec.api_keys_secret_ref.name, {}))
    return hashlib.sha256(orjson.dumps(wanted, option=orjson.OPT_SORT_KEYS)).hexdigest()


def owner_reference(owner: Owner) -> Obj:
    return {"apiVersion": API_VERSION, "kind": owner.kind, "name": owner.name, "uid": owner.uid,
            "controller": True, "blockOwnerDeletion": True}


def _meta(owner: Owner, name: str) -> Obj:
    return {"name": name, "namespace": owner.namespace, "labels": labels(owner),
            "ownerReferences": [owner_reference(owner)]}


def render_config_map(owner: Owner, config: RuntimeConfig, digest: str) -> Obj:
    text = yaml.dump(config.model_dump(mode="json", by_alias=True), Dumper=_YamlDumper, sort_keys=True,
                     allow_unicode=True)
    meta = _meta(owner, config_map_name(owner))
    meta["annotations"] = {ANNOTATION_CONFIG_HASH: digest}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"config.yaml": text}}


def _env(inputs: Inputs) -> list[Obj]:
    env: list[Obj] = [
        {"name": "STRATA_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]
    for name, ref in secret_refs(inputs.spec):
        env.append({"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    if inputs.spec.api_keys_secret_ref:
        secret = inputs.spec.api_keys_secret_ref.name
        for tenant in sorted(inputs.api_key_tenants):
            env.append({"name": api_key_env(tenant),
                        "valueFrom": {"secretKeyRef": {"name": secret, "key": tenant}}})
    return env


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
    if spec.service_account_name:
        pod_spec["serviceAccountName"] = spec.service_account_name
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


def prometheus_query(metric: str, owner: Owner) -> str:
    return f'sum({metric}{{namespace="{owner.namespace}",pod=~"{_pod_regex(owner)}"}})'


def render_scaled_object(inputs: Inputs) -> Obj:
    owner, spec = inputs.owner, inputs.spec
    keda = spec.scaling.keda
    triggers = [
        {"type": "prometheus", "name": name, "metricType": "AverageValue",
         "metadata": {"serverAddress": keda.prometheus_address, "query": prometheus_query(metric, owner),
                      "threshold": str(per_pod), "ignoreNullValues": "true"}}
        for name, metric, per_pod in (
            ("active-sessions", "strata_active_sessions", keda.active_sessions_per_pod),
            ("pending-requests", "strata_pending_requests", keda.pending_requests_per_pod),
        )
    ]
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
            "triggers": triggers,
        },
    }


def _scale_behavior(cooldown: int) -> Obj:
    return {"scaleDown": {"stabilizationWindowSeconds": min(cooldown, 3600),
                          "policies": [{"type": "Percent", "value": 50, "periodSeconds": 60}]}}


def render_hpa(inputs: Inputs) -> Obj:
    """The fallback without KEDA: the two gauges through a custom-metrics adapter, plus CPU."""
    owner, spec = inputs.owner, inputs.spec
    keda = spec.scaling.keda
    pods_metrics = [
        {"type": "Pods", "pods": {"metric": {"name": metric},
                                  "target": {"type": "AverageValue", "averageValue": str(per_pod)}}}
        for metric, per_pod in (("strata_active_sessions", keda.active_sessions_per_pod),
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


def render_network_policy(inputs: Inputs) -> Obj:
    owner, np = inputs.owner, inputs.spec.network_policy
    if np.allow_all_namespaces:
        peers: list[Obj] = [{"namespaceSelector": {}}]
    else:
        names = sorted({owner.namespace, *np.peer_namespaces})
        peers = [{"namespaceSelector": {"matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "In", "values": names}]}}]
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": _meta(owner, owner.name),
        "spec": {"podSelector": {"matchLabels": selector(owner)}, "policyTypes": ["Ingress"],
                 "ingress": [{"from": peers, "ports": [{"port": HTTP_PORT, "protocol": "TCP"}]}]},
    }


SCALED_OBJECT = ObjectRef("keda.sh/v1alpha1", "ScaledObject", "")
HPA = ObjectRef("autoscaling/v2", "HorizontalPodAutoscaler", "")
NETWORK_POLICY = ObjectRef("networking.k8s.io/v1", "NetworkPolicy", "")


def render(inputs: Inputs) -> Desired:
    owner = inputs.owner
    if len(owner.name) > MAX_NAME:
        raise RenderError("InvalidSpec", f"metadata.name must be at most {MAX_NAME} characters")
    config = render_runtime_config(inputs)
    digest = config_hash(config)
    secrets_digest = secrets_hash(inputs)
    scaler = "none"
    if inputs.spec.scaling.keda.enabled:
        scaler = "keda" if inputs.keda_available else "hpa"
    objects = [
        render_config_map(owner, config, digest),
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
    if inputs.spec.network_policy.enabled:
        objects.append(render_network_policy(inputs))
    else:
        stale.append(ObjectRef(NETWORK_POLICY.api_version, NETWORK_POLICY.kind, owner.name))
    return Desired(config=config, config_hash=digest, secrets_hash=secrets_digest, scaler=scaler,
                   objects=objects, stale=stale)
