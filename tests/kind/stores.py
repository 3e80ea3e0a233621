"""A Redis Cluster, Postgres and a Milvus server in the cluster, wired to AgentDeployments by Secret references.

One image (hack/kind/stores.Dockerfile: Debian's redis-server and postgresql-15, PyPI's `milvus`
server). Redis runs as users run it in production: a Cluster of 3 masters (a StatefulSet of
`redis-server --cluster-enabled yes`, each node announcing its pod IP; `redis-cli --cluster create`
joins them, see `create_redis_cluster`), reached through a Service as the seed. Postgres and Milvus
are a Deployment each. Every store has its Service in the test namespace. Data lives on emptyDir
(the tests only need the stores to outlive runtime pods, not themselves).
"""

from __future__ import annotations

import json
import time
from typing import Any

from tests.kind.conftest import NAMESPACE, TAG, Kube

Obj = dict[str, Any]
IMAGE = f"strata-e2e-stores:{TAG}"
PG_PASSWORD = "e2e-pg-password"

REDIS_CLUSTER = "redis-cluster"
REDIS_MASTERS = 3
REDIS_URL = f"redis://{REDIS_CLUSTER}.{NAMESPACE}.svc:6379"
PG_DSN = f"postgresql://strata:{PG_PASSWORD}@postgres.{NAMESPACE}.svc:5432/strata"
MILVUS_URI = f"http://milvus.{NAMESPACE}.svc:19530"

POSTGRES_START = (
    "set -e; pw=$(mktemp); echo \"$PG_PASSWORD\" > $pw; "
    "initdb -D /data/pg -U strata --auth-local=trust --auth-host=scram-sha-256 --pwfile=$pw >/dev/null; "
    "rm -f $pw; echo 'host all all 0.0.0.0/0 scram-sha-256' >> /data/pg/pg_hba.conf; "
    "postgres -D /data/pg -c listen_addresses='*' -c unix_socket_directories=/tmp -c fsync=off & "
    "until pg_isready -h /tmp -q; do sleep 0.5; done; createdb -h /tmp -U strata strata; wait"
)


REDIS_ARGS = ["redis-server", "--bind", "0.0.0.0", "--protected-mode", "no", "--save", "", "--appendonly", "no",
              "--dir", "/data"]
TCP_PROBE: Obj = {"tcpSocket": {"port": "tcp"}}
VOLUMES = [{"name": "data", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}]


# A store stays in its Service while the machine is starved (an exec probe can take seconds then):
# a dropped endpoint would read as a store outage nobody caused.
STORE_READINESS = {"periodSeconds": 2, "timeoutSeconds": 10, "failureThreshold": 10}


def _container(name: str, port: int, command: list[str], probe: Obj, *, env: list[Obj] | None = None,
               memory: str = "512Mi") -> Obj:
    return {
        "name": name, "image": IMAGE, "imagePullPolicy": "Never", "command": command, "env": env or [],
        "ports": [{"name": "tcp", "containerPort": port}], "readinessProbe": {**probe, **STORE_READINESS},
        "resources": {"limits": {"memory": memory}},
        "volumeMounts": [{"name": "data", "mountPath": "/data"}, {"name": "tmp", "mountPath": "/tmp"}],
        "securityContext": {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
                            "runAsNonRoot": True, "runAsUser": 10001},
    }


def _store(name: str, port: int, command: list[str], probe: Obj, *, env: list[Obj] | None = None,
           memory: str = "512Mi") -> list[Obj]:
    labels = {"app": name}
    container = _container(name, port, command, probe, env=env, memory=memory)
    return [
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": labels},
         "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "strategy": {"type": "Recreate"},
                  "template": {"metadata": {"labels": labels},
                               "spec": {"containers": [container], "volumes": VOLUMES}}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
         "spec": {"selector": labels, "ports": [{"name": "tcp", "port": port, "targetPort": "tcp"}]}},
    ]


def standalone_redis_objects() -> list[Obj]:
    """One standalone redis-server (Deployment + Service `redis`), for a test that stops Redis whole."""
    return _store("redis", 6379, REDIS_ARGS, TCP_PROBE)


PROMETHEUS_NAMESPACE = "monitoring"  # the default AgentDeployment's keda.prometheusAddress: prometheus.monitoring:9090
PROMETHEUS_SCRAPE_SECONDS = 5
PROMETHEUS_TARGETS = "/data/targets/runtimes.json"


def prometheus_config() -> str:
    """Scrape the targets of PROMETHEUS_TARGETS (file discovery: Debian builds Prometheus without its
    Kubernetes discovery), each with the `namespace` and `pod` labels KEDA's queries filter on; the
    test writes them from the pod list (`prometheus_targets`), as the chart's PodMonitor would find them."""
    return json.dumps({
        "global": {"scrape_interval": f"{PROMETHEUS_SCRAPE_SECONDS}s",
                   "evaluation_interval": f"{PROMETHEUS_SCRAPE_SECONDS}s"},
        "scrape_configs": [{"job_name": "strata-runtimes", "metrics_path": "/metrics",
                            "file_sd_configs": [{"files": [PROMETHEUS_TARGETS], "refresh_interval": "2s"}]}],
    })


def prometheus_targets(pods: list[Obj]) -> list[Obj]:
    """file_sd targets for the runtime pods the PodMonitor selects (the operator's labels; the `http` port)."""
    targets = []
    for pod in pods:
        labels, ip = pod["metadata"].get("labels", {}), pod["status"].get("podIP")
        if (labels.get("app.kubernetes.io/name"), labels.get("app.kubernetes.io/managed-by")) != (
                "strata-runtime", "strata-operator") or not ip:
            continue
        ports = [p["containerPort"] for c in pod["spec"]["containers"] for p in c.get("ports", [])
                 if p.get("name") == "http"]
        targets += [{"targets": [f"{ip}:{port}"],
                     "labels": {"namespace": pod["metadata"]["namespace"], "pod": pod["metadata"]["name"]}}
                    for port in ports]
    return targets


def prometheus_objects() -> list[Obj]:
    """Prometheus (Deployment + Service `prometheus` in PROMETHEUS_NAMESPACE), scraping PROMETHEUS_TARGETS."""
    name = "prometheus"
    command = ["sh", "-c", f"mkdir -p $(dirname {PROMETHEUS_TARGETS}) && echo '[]' > {PROMETHEUS_TARGETS} && "
               "exec prometheus --config.file=/etc/prometheus-e2e/prometheus.yml --storage.tsdb.path=/data/prom "
               "--web.listen-address=:9090 --storage.tsdb.retention.time=1h"]
    probe = {"httpGet": {"path": "/-/ready", "port": "tcp"}}
    deployment, service = _store(name, 9090, command, probe)
    pod = deployment["spec"]["template"]["spec"]
    pod["volumes"] = [*pod["volumes"], {"name": "config", "configMap": {"name": name}}]
    pod["containers"][0]["volumeMounts"].append({"name": "config", "mountPath": "/etc/prometheus-e2e"})
    objects = [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name},
                "data": {"prometheus.yml": prometheus_config()}}, deployment, service]
    for obj in objects:
        obj["metadata"]["namespace"] = PROMETHEUS_NAMESPACE
    return objects


def redis_cluster_objects() -> list[Obj]:
    """3 cluster-enabled redis-server pods (StatefulSet) and the Service clients seed from.

    Each node announces its pod IP (downward API), so clients reach every master directly; the
    nodes are joined once they run (`create_redis_cluster`)."""
    labels = {"app": REDIS_CLUSTER}
    command = ["sh", "-c", 'exec redis-server "$@" --cluster-announce-ip "$POD_IP"', "redis-server", *REDIS_ARGS[1:],
               "--cluster-enabled", "yes", "--cluster-config-file", "/data/nodes.conf",
               "--cluster-node-timeout", "5000"]
    env = [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]
    container = _container("redis", 6379, command, TCP_PROBE, env=env)
    return [
        {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": REDIS_CLUSTER, "labels": labels},
         "spec": {"replicas": REDIS_MASTERS, "serviceName": REDIS_CLUSTER, "podManagementPolicy": "Parallel",
                  "selector": {"matchLabels": labels},
                  "template": {"metadata": {"labels": labels},
                               "spec": {"containers": [container], "volumes": VOLUMES}}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": REDIS_CLUSTER},
         "spec": {"selector": labels, "ports": [{"name": "tcp", "port": 6379, "targetPort": "tcp"}]}},
    ]


def store_objects() -> list[Obj]:
    tcp = TCP_PROBE
    return [
        *redis_cluster_objects(),
        *_store("postgres", 5432, ["sh", "-c", POSTGRES_START],
                {"exec": {"command": ["pg_isready", "-h", "/tmp", "-d", "strata", "-U", "strata"]}},
                env=[{"name": "PG_PASSWORD", "value": PG_PASSWORD}]),
        *_store("milvus", 19530, ["milvus-server", "--data", "/data/milvus", "--proxy-port", "19530"], tcp,
                memory="3Gi"),
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "strata-stores"},
         "stringData": {"redisUrl": REDIS_URL, "pgDsn": PG_DSN, "milvusUri": MILVUS_URI}},
    ]


def _redis_cli(kube: Kube, pod: str, *args: str) -> str:
    return kube.run("exec", "-n", NAMESPACE, pod, "--", "redis-cli", *args, timeout=120)


def _cluster_ok(kube: Kube, pods: list[str]) -> bool:
    """Every node sees the whole Cluster (all nodes known, all slots served)."""
    whole = ("cluster_state:ok", f"cluster_known_nodes:{len(pods)}")
    return all(all(line in _redis_cli(kube, pod, "cluster", "info") for line in whole) for pod in pods)


def create_redis_cluster(kube: Kube, timeout: float = 120) -> None:
    """Join the StatefulSet's nodes into one Cluster of 3 masters holding all 16384 slots.

    Kept when an earlier run's Cluster is whole; otherwise every node is emptied and reset (a node
    recreated with a new IP leaves the old topology behind) and `redis-cli --cluster create` runs
    with the pods' IPs."""
    pods = [f"{REDIS_CLUSTER}-{i}" for i in range(REDIS_MASTERS)]
    if _cluster_ok(kube, pods):
        return
    for pod in pods:
        _redis_cli(kube, pod, "flushall")
        _redis_cli(kube, pod, "cluster", "reset", "hard")
    ips = [kube.get("pod", pod)["status"]["podIP"] for pod in pods]
    _redis_cli(kube, pods[0], "--cluster", "create", *(f"{ip}:6379" for ip in ips), "--cluster-replicas", "0",
               "--cluster-yes")
    deadline = time.monotonic() + timeout
    while not _cluster_ok(kube, pods):
        if time.monotonic() > deadline:
            nodes = _redis_cli(kube, pods[0], "cluster", "nodes")
            raise AssertionError(f"Redis Cluster not ok after {timeout}s: {nodes}")
        time.sleep(1)


def stores_spec(*, milvus: bool = True) -> Obj:
    """AgentDeployment.spec.stores: every store shared by the pods, by Secret reference."""
    spec: Obj = {
        "redis": {"backend": "redis", "cluster": True,
                  "urlSecretRef": {"name": "strata-stores", "key": "redisUrl"}},
        "postgres": {"dsnSecretRef": {"name": "strata-stores", "key": "pgDsn"}},
    }
    if milvus:
        spec["milvus"] = {"uriSecretRef": {"name": "strata-stores", "key": "milvusUri"}}
    return spec
