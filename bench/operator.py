"""Operator benchmark on the local control plane (hack/control-plane.sh, kwok pods).

Measures, for N in (100, 1000) AgentDeployments (one pod each, fixed replicas, so the
controller-manager and kwok do the least work that still ends in Ready pods):

- seconds from the first create until every AgentDeployment reports Ready=True for its
  current generation (and its p50/p99 per object),
- operator CPU (% of one core) and RSS while idle with all N objects in place.

The operator runs as its own process (`strata-operator`, namespace-scoped to the bench
namespace, standalone); objects are created from this process with a thread pool.

    eval "$(hack/control-plane.sh env)"
    .venv/bin/python bench/operator.py [--counts 100,1000] [--idle-seconds 30]

Prints one JSON line per measurement, then a table.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kubernetes import client, config

ROOT = Path(__file__).resolve().parent.parent
GROUP, VERSION = "strata.dev", "v1alpha1"
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def proc_rss_mb(pid: int) -> float:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_SIZE / 1e6


def agent(namespace: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "AgentDeployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "image": "registry.invalid/strata-runtime:0.1.0",
            "replicas": {"min": 1, "max": 1},
            "scaling": {"keda": {"enabled": False}},
            "networkPolicy": {"enabled": True},
            "cachePolicyRef": {"name": "default"},
            "runtime": {"models": [{"name": "demo", "provider": "demo"}],
                        "agents": [{"id": name, "tenant": "bench", "model": "demo"}]},
            "resources": {"requests": {"cpu": "1m", "memory": "1Mi"}, "limits": {}},
            "drain": {"terminationGracePeriodSeconds": 5, "preStopSleepSeconds": 0},
            "nodeSelector": {"type": "kwok"},
            "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}],
        },
    }


def bench_nodes(core: client.CoreV1Api, count: int, pods_per_node: int) -> list[str]:
    """Extra kwok nodes so 1,000 pods fit (the control plane's own nodes hold 110 each)."""
    names = []
    for i in range(count):
        name = f"bench-kwok-node-{i}"
        body = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "annotations": {"kwok.x-k8s.io/node": "fake"},
                             "labels": {"type": "kwok", "kubernetes.io/hostname": name}},
                "spec": {"taints": [{"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"}]},
                "status": {"allocatable": {"cpu": "1000", "memory": "4Ti", "pods": str(pods_per_node)},
                           "capacity": {"cpu": "1000", "memory": "4Ti", "pods": str(pods_per_node)}}}
        try:
            core.create_node(body)
        except client.ApiException as e:
            if e.status != 409:
                raise
        names.append(name)
    return names


def ready_times(custom: client.CustomObjectsApi, namespace: str, start: float,
                seen: dict[str, float]) -> int:
    items = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "agentdeployments")["items"]
    now = time.monotonic() - start
    for item in items:
        name = item["metadata"]["name"]
        if name in seen:
            continue
        status = item.get("status") or {}
        ready = [c for c in status.get("conditions") or [] if c.get("type") == "Ready" and c["status"] == "True"]
        if ready and status.get("observedGeneration") == item["metadata"]["generation"]:
            seen[name] = now
    return len(seen)


def run_one(count: int, *, api: client.ApiClient, kubeconfig: str, idle_seconds: float,
            timeout: float) -> list[dict[str, Any]]:
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    namespace = f"bench-op-{count}-{uuid.uuid4().hex[:5]}"
    core.create_namespace({"metadata": {"name": namespace}})
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "cachepolicies", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "CachePolicy", "metadata": {"name": "default"}, "spec": {}})
    log = open(f"/tmp/strata-bench-operator-{count}.log", "wb")  # noqa: SIM115
    operator = subprocess.Popen(
        [str(Path(sys.executable).with_name("strata-operator")), "--namespace", namespace, "--liveness", "none"],
        env={**os.environ, "KUBECONFIG": kubeconfig}, stdout=log, stderr=subprocess.STDOUT)
    results: list[dict[str, Any]] = []
    try:
        time.sleep(3)  # let kopf list and start its watches
        start = time.monotonic()
        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(lambda i: custom.create_namespaced_custom_object(
                GROUP, VERSION, namespace, "agentdeployments", agent(namespace, f"a{i:04d}")), range(count)))
        created = time.monotonic() - start
        seen: dict[str, float] = {}
        while ready_times(custom, namespace, start, seen) < count and time.monotonic() - start < timeout:
            time.sleep(1.0)
        total = time.monotonic() - start
        times = sorted(seen.values())
        results.append({
            "bench": "operator", "metric": "time_to_ready", "agent_deployments": count, "ready": len(seen),
            "create_seconds": round(created, 2), "all_ready_seconds": round(total, 2) if len(seen) == count else None,
            "p50_seconds": round(statistics.median(times), 2) if times else None,
            "p99_seconds": round(times[min(len(times) - 1, int(len(times) * 0.99))], 2) if times else None,
            "timed_out": len(seen) < count,
        })
        time.sleep(5)
        cpu0, t0 = proc_cpu_seconds(operator.pid), time.monotonic()
        time.sleep(idle_seconds)
        cpu1, t1 = proc_cpu_seconds(operator.pid), time.monotonic()
        results.append({"bench": "operator", "metric": "idle", "agent_deployments": count,
                        "cpu_percent": round(100 * (cpu1 - cpu0) / (t1 - t0), 2),
                        "rss_mb": round(proc_rss_mb(operator.pid), 1), "window_seconds": round(t1 - t0, 1)})
    finally:
        operator.terminate()
        try:
            operator.wait(timeout=30)
        except subprocess.TimeoutExpired:
            operator.kill()
        log.close()
        core.delete_namespace(namespace)
    return results


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(143)  # run the `finally` clean-ups: operator process, namespace, bench nodes


def main() -> None:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="100,1000")
    parser.add_argument("--idle-seconds", type=float, default=30)
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()
    kubeconfig = os.environ.get("KUBECONFIG")
    if not kubeconfig:
        sys.exit('KUBECONFIG is not set: eval "$(hack/control-plane.sh env)"')
    api = config.new_client_from_config(config_file=kubeconfig)
    api.configuration.connection_pool_maxsize = 32
    subprocess.run(["kubectl", "apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds")],
                   check=True, capture_output=True)
    counts = [int(c) for c in args.counts.split(",")]
    nodes = bench_nodes(client.CoreV1Api(api), 2, max(counts))
    rows: list[dict[str, Any]] = []
    try:
        for count in counts:
            for row in run_one(count, api=api, kubeconfig=kubeconfig, idle_seconds=args.idle_seconds,
                               timeout=args.timeout):
                print(json.dumps(row), flush=True)
                rows.append(row)
    finally:
        for name in nodes:
            client.CoreV1Api(api).delete_node(name)
    print(f"\n{'objects':>8} {'ready':>6} {'create s':>9} {'all ready s':>12} {'p50 s':>7} {'p99 s':>7} "
          f"{'idle cpu %':>10} {'rss MB':>7}")
    for count in counts:
        ready = next(r for r in rows if r["agent_deployments"] == count and r["metric"] == "time_to_ready")
        idle = next(r for r in rows if r["agent_deployments"] == count and r["metric"] == "idle")
        print(f"{count:>8} {ready['ready']:>6} {ready['create_seconds']:>9} {ready['all_ready_seconds']!s:>12} "
              f"{ready['p50_seconds']!s:>7} {ready['p99_seconds']!s:>7} {idle['cpu_percent']:>10} {idle['rss_mb']:>7}")


if __name__ == "__main__":
    main()
