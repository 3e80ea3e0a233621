"""Operator benchmark on the local control plane (hack/control-plane.sh, kwok pods).

For N in (100, 1000) AgentDeployments (one pod each, fixed replicas, so the controller
manager and kwok do the least work that still ends in Ready pods), measures:

- seconds from the first create until every AgentDeployment reports Ready=True for its
  current generation, and the p50/p99 of the per-object time from its own create to Ready;
- seconds until every Deployment reports its pods Ready (the control plane's share:
  controller-manager, scheduler, kwok) — the difference to the above is what the operator adds;
- operator CPU seconds and peak RSS during that burst, then CPU (% of one core) and RSS
  while idle with all N objects in place;
- the CPU seconds of every control-plane process and of the bench itself during the burst
  (they all share the machine's cores: the sum over the burst's wall time is the load);
- the API server's writes during the burst per AgentDeployment, by verb and resource.

The operator runs as its own process (`strata-operator`, namespace-scoped to the bench
namespace, standalone), exactly as shipped. Readiness is observed with watches (no
polling lists of 1,000 objects). Everything the bench creates (namespaces, extra kwok
nodes) is deleted at the end, also on Ctrl-C/SIGTERM; the AgentDeployments carry no
finalizer, so the namespace deletion does not need the operator.

    eval "$(hack/control-plane.sh env)"
    .venv/bin/python -m bench.operator [--counts 100,1000] [--idle-seconds 30] [--floor] [--py-spy PATH] [--smoke]

Prints one JSON line per measurement, then a table.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch

from bench._stats import percentile
from strata_operator.k8s import Kube
from strata_operator.models import AgentDeploymentSpec, CachePolicySpec
from strata_operator.reconcile import Inputs, Owner, render
from tests.support.processes import stop_process

ROOT = Path(__file__).resolve().parent.parent

GROUP, VERSION = "strata.dev", "v1alpha1"
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
NODE_PREFIX = "bench-kwok-node-"


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def proc_rss_mb(pid: int) -> float:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_SIZE / 1e6


def proc_peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1e3
    return 0.0


def control_plane_pids() -> dict[str, int]:
    """The local control plane's components (hack/control-plane.sh pid files), to account for
    the CPU of the whole burst: on a small machine the operator shares its cores with them."""
    run = Path(os.environ.get("STRATA_CONTROL_PLANE_DIR", ROOT / ".cache" / "control-plane")) / "run"
    pids = {}
    for pid_file in run.glob("*.pid"):
        pid = int(pid_file.read_text().strip() or 0)
        if pid and Path(f"/proc/{pid}").exists():
            pids[pid_file.stem] = pid
    return pids


def cpu_by_component(pids: dict[str, int]) -> dict[str, float]:
    cpu = {name: proc_cpu_seconds(pid) for name, pid in pids.items() if Path(f"/proc/{pid}").exists()}
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu["bench"] = usage.ru_utime + usage.ru_stime
    return cpu


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


def check_service_range(api: client.ApiClient, services: int) -> None:
    """Fail early when the cluster cannot hand out `services` ClusterIPs (past its range every
    Service apply fails with "range is full"): a control plane whose etcd predates the /16
    service range in hack/control-plane.sh keeps its old /24."""
    cidrs = client.NetworkingV1Api(api).list_service_cidr().items
    capacity = sum(ipaddress.ip_network(c).num_addresses for item in cidrs for c in item.spec.cidrs or [])
    if capacity < services + 100:
        sys.exit(f"the cluster's service range holds {capacity} addresses, fewer than {services} Services need: "
                 "start a fresh local control plane (hack/control-plane.sh clean && hack/control-plane.sh up)")


def bench_nodes(core: client.CoreV1Api, count: int, pods_per_node: int) -> list[str]:
    """Extra kwok nodes so 1,000 pods fit (the control plane's own nodes hold 110 each)."""
    names = []
    for i in range(count):
        name = f"{NODE_PREFIX}{i}"
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


class Watcher(threading.Thread):
    """Records, per check, the first time each object of a namespaced list satisfies it."""

    def __init__(self, list_fn: Any, namespace: str, checks: dict[str, Any], start: float):
        super().__init__(daemon=True)
        self.list_fn, self.namespace, self.checks, self.start_time = list_fn, namespace, checks, start
        self.seen: dict[str, dict[str, float]] = {check: {} for check in checks}
        self.stop = threading.Event()

    def run(self) -> None:
        resource_version = ""
        while not self.stop.is_set():
            w = watch.Watch()
            try:
                for event in w.stream(self.list_fn, self.namespace, resource_version=resource_version,
                                      timeout_seconds=30, allow_watch_bookmarks=True):
                    obj = event["object"]
                    meta = obj["metadata"]
                    resource_version = meta["resourceVersion"]
                    if event["type"] in ("BOOKMARK", "DELETED", "ERROR"):
                        continue
                    name = meta["name"]
                    for check, done in self.checks.items():
                        if name not in self.seen[check] and done(obj):
                            self.seen[check][name] = time.monotonic() - self.start_time
                    if self.stop.is_set():
                        break
            except client.ApiException as e:
                if e.status == 410:
                    resource_version = ""  # expired: list again
                else:
                    time.sleep(0.5)
            except Exception as e:  # a watch must never die silently
                print(f"watch error: {type(e).__name__}: {e}", file=sys.stderr)
                time.sleep(0.5)
            finally:
                w.stop()

    def all_seconds(self, check: str, count: int) -> float | None:
        """When the last of `count` objects passed `check`; None if not all did."""
        seen = self.seen[check]
        return round(max(seen.values()), 2) if len(seen) == count else None


def deployment_watcher(api: client.ApiClient, namespace: str, start: float) -> Watcher:
    """When each Deployment first exists and first reports its pods Ready (what the operator
    reads). Not a watch on pods: it would cost the API server a JSON encoding of every pod
    event for this bench alone, and the bench the parsing, on the cores being measured."""
    apps = client.AppsV1Api(api)
    # Wrapped in a lambda (no return annotation): the watch then yields plain dicts; building
    # typed models took the bench several times more CPU, on the cores the control plane needs.
    return Watcher(lambda ns, **kw: apps.list_namespaced_deployment(ns, **kw), namespace,  # noqa: PLW0108
                   {"applied": lambda _: True, "ready": deployment_ready}, start)


def agent_ready(obj: dict[str, Any]) -> bool:
    status = obj.get("status") or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    return ready and status.get("observedGeneration") == obj["metadata"].get("generation")


def deployment_ready(deployment: dict[str, Any]) -> bool:
    meta, spec, status = deployment["metadata"], deployment.get("spec") or {}, deployment.get("status") or {}
    return (int(status.get("observedGeneration") or 0) >= int(meta.get("generation") or 0)
            and int(status.get("readyReplicas") or 0) >= int(spec.get("replicas") or 1))


def api_writes(api: client.ApiClient) -> dict[str, float]:
    """The API server's write counters ("VERB resource[/subresource]" -> requests so far)."""
    method, url, headers, _, _ = api.param_serialize("GET", "/metrics", auth_settings=["BearerToken"])
    response = api.call_api(method, url, header_params=headers)
    response.read()
    writes: dict[str, float] = {}
    for line in response.data.decode().splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line[:line.rindex("}")]))
        if labels.get("verb") in ("GET", "LIST", "WATCH", "CONNECT"):
            continue
        key = f"{labels.get('verb')} {labels.get('resource')}" + (f"/{labels['subresource']}"
                                                                  if labels.get("subresource") else "")
        writes[key] = writes.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return writes


def writes_per_object(before: dict[str, float], after: dict[str, float], count: int) -> dict[str, float]:
    """API writes during the burst per AgentDeployment, by verb and resource, largest first."""
    diff = {k: (v - before.get(k, 0.0)) / count for k, v in after.items()}
    return {k: round(v, 2) for k, v in sorted(diff.items(), key=lambda kv: -kv[1]) if v >= 0.05}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the operator exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError("the operator did not become healthy")


def delete_namespace(core: client.CoreV1Api, namespace: str, timeout: float = 180) -> bool:
    """Delete and wait until it is gone; False if it is still there after `timeout`."""
    try:
        core.delete_namespace(namespace)
    except client.ApiException as e:
        if e.status != 404:
            raise
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            core.read_namespace(namespace)
        except client.ApiException as e:
            if e.status == 404:
                return True
            raise
        time.sleep(1)
    return False


def run_one(count: int, *, api: client.ApiClient, kubeconfig: str, idle_seconds: float,
            timeout: float, py_spy: str | None) -> list[dict[str, Any]]:
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    namespace = f"bench-op-{count}-{uuid.uuid4().hex[:5]}"
    core.create_namespace({"metadata": {"name": namespace, "labels": {"strata-bench": "operator"}}})
    operator: subprocess.Popen[bytes] | None = None
    spy: subprocess.Popen[bytes] | None = None
    watchers: list[Watcher] = []
    log = open(f"/tmp/strata-bench-operator-{count}.log", "wb")  # noqa: SIM115
    results: list[dict[str, Any]] = []
    try:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "cachepolicies", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "CachePolicy", "metadata": {"name": "default"},
            "spec": {}})
        port = free_port()
        operator = subprocess.Popen(
            [str(Path(sys.executable).with_name("strata-operator")), "--namespace", namespace,
             "--liveness", f"http://127.0.0.1:{port}/healthz"],
            env={**os.environ, "KUBECONFIG": kubeconfig}, stdout=log, stderr=subprocess.STDOUT)
        wait_healthy(f"http://127.0.0.1:{port}/healthz", operator)
        if py_spy:
            spy = subprocess.Popen([py_spy, "record", "--pid", str(operator.pid), "--format", "speedscope",
                                    "--rate", "50", "--output", f"/tmp/strata-bench-operator-{count}.speedscope"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        created_at: dict[str, float] = {}
        start = time.monotonic()
        agents = Watcher(lambda ns, **kw: custom.list_namespaced_custom_object(
            GROUP, VERSION, ns, "agentdeployments", **kw), namespace, {"ready": agent_ready}, start)
        deployments = deployment_watcher(api, namespace, start)
        watchers = [agents, deployments]
        for w in watchers:
            w.start()
        components = {**control_plane_pids(), "operator": operator.pid}
        writes_start = api_writes(api)
        cpu_start = cpu_by_component(components)

        def create(i: int) -> None:
            name = f"a{i:04d}"
            created_at[name] = time.monotonic() - start
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "agentdeployments",
                                                   agent(namespace, name))

        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(create, range(count)))
        created = time.monotonic() - start
        ready = agents.seen["ready"]
        while len(ready) < count and time.monotonic() - start < timeout:
            time.sleep(0.2)
        total = time.monotonic() - start
        cpu_end = cpu_by_component(components)
        burst_cpu = {name: round(cpu_end[name] - cpu_start[name], 1) for name in cpu_end if name in cpu_start}
        per_object = [ready[n] - created_at[n] for n in ready]
        all_ready = len(ready) == count
        results.append({
            "bench": "operator", "metric": "time_to_ready", "agent_deployments": count, "ready": len(ready),
            "create_seconds": round(created, 2), "all_ready_seconds": round(total, 2) if all_ready else None,
            "deployments_applied_seconds": deployments.all_seconds("applied", count),
            "pods_ready_seconds": deployments.all_seconds("ready", count),
            "p50_seconds": round(percentile(per_object, 0.5), 2) if per_object else None,
            "p99_seconds": round(percentile(per_object, 0.99), 2) if per_object else None,
            "burst_cpu_seconds": burst_cpu["operator"], "burst_cpu_seconds_by_process": burst_cpu,
            "burst_peak_rss_mb": round(proc_peak_rss_mb(operator.pid), 1),
            "api_writes_per_object": writes_per_object(writes_start, api_writes(api), count),
            "timed_out": not all_ready,
        })
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=60)
            spy = None
        time.sleep(5)
        cpu0, t0 = proc_cpu_seconds(operator.pid), time.monotonic()
        time.sleep(idle_seconds)
        cpu1, t1 = proc_cpu_seconds(operator.pid), time.monotonic()
        results.append({"bench": "operator", "metric": "idle", "agent_deployments": count,
                        "cpu_percent": round(100 * (cpu1 - cpu0) / (t1 - t0), 2),
                        "rss_mb": round(proc_rss_mb(operator.pid), 1), "window_seconds": round(t1 - t0, 1)})
    finally:
        for w in watchers:
            w.stop.set()
        if spy is not None and spy.poll() is None:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=60)
        if operator is not None:
            stop_process(operator, 30)
        log.close()
        if not delete_namespace(core, namespace):
            print(f"warning: namespace {namespace} is still terminating", file=sys.stderr)
    return results


def rendered_children(namespace: str, name: str) -> list[dict[str, Any]]:
    """What the operator renders for `agent(namespace, name)`, by its own render function, without
    owner references (there is no owner: the garbage collector would delete them at once)."""
    spec = AgentDeploymentSpec.model_validate(agent(namespace, name)["spec"])
    desired = render(Inputs(owner=Owner(name=name, namespace=namespace, uid="none"), spec=spec,
                            cache_policy=CachePolicySpec()))
    for obj in desired.objects:
        obj["metadata"].pop("ownerReferences", None)
    return desired.objects


async def apply_directly(kubeconfig: str, per_agent: list[list[dict[str, Any]]]) -> None:
    """Apply every AgentDeployment's children in the operator's order and with its concurrency:
    the Service (8 at a time) alongside the ConfigMap then the Deployment (32 AgentDeployments
    at a time), then the rest in parallel."""
    kube = await Kube.connect(kubeconfig)
    lane, slots = asyncio.Semaphore(8), asyncio.Semaphore(32)

    async def service(obj: dict[str, Any]) -> None:
        async with lane:
            await kube.apply(obj)

    async def workload(config_map: dict[str, Any], deployment: dict[str, Any]) -> None:
        async with slots:
            await kube.apply(config_map)
            await kube.apply(deployment)

    async def one(objects: list[dict[str, Any]]) -> None:
        of_kind = {obj["kind"]: obj for obj in objects}
        in_lane = asyncio.ensure_future(service(of_kind.pop("Service")))
        await workload(of_kind.pop("ConfigMap"), of_kind.pop("Deployment"))
        await asyncio.gather(in_lane, *(kube.apply(obj) for obj in of_kind.values()))

    try:
        await asyncio.gather(*(one(objects) for objects in per_agent))
    finally:
        await kube.close()


def run_floor(count: int, *, api: client.ApiClient, kubeconfig: str, timeout: float) -> dict[str, Any]:
    """The control plane's share alone: the same children for `count` AgentDeployments applied
    straight from here (no operator, no AgentDeployment objects or status writes), timed until
    every pod is Ready. The operator's result minus this is what the operator costs."""
    core = client.CoreV1Api(api)
    namespace = f"bench-floor-{count}-{uuid.uuid4().hex[:5]}"
    core.create_namespace({"metadata": {"name": namespace, "labels": {"strata-bench": "operator"}}})
    deployments: Watcher | None = None
    try:
        per_agent = [rendered_children(namespace, f"a{i:04d}") for i in range(count)]
        components = control_plane_pids()
        writes_start = api_writes(api)
        cpu_start = cpu_by_component(components)
        start = time.monotonic()
        deployments = deployment_watcher(api, namespace, start)
        deployments.start()
        asyncio.run(apply_directly(kubeconfig, per_agent))
        applied = time.monotonic() - start
        while len(deployments.seen["ready"]) < count and time.monotonic() - start < timeout:
            time.sleep(0.2)
        cpu_end = cpu_by_component(components)
        return {"bench": "operator", "metric": "control_plane_floor", "agent_deployments": count,
                "objects_applied": sum(len(objects) for objects in per_agent),
                "applied_seconds": round(applied, 2),
                "pods_ready_seconds": deployments.all_seconds("ready", count),
                "burst_cpu_seconds_by_process": {name: round(cpu_end[name] - cpu_start[name], 1) for name in cpu_end},
                "api_writes_per_object": writes_per_object(writes_start, api_writes(api), count)}
    finally:
        if deployments is not None:
            deployments.stop.set()
        if not delete_namespace(core, namespace):
            print(f"warning: namespace {namespace} is still terminating", file=sys.stderr)


def _exit_on_signal(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # run the `finally` clean-ups: operator, namespace, bench nodes


def main() -> None:
    signal.signal(signal.SIGTERM, _exit_on_signal)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="100,1000")
    parser.add_argument("--idle-seconds", type=float, default=30)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--py-spy", default=None, help="path of py-spy: record the operator during the burst")
    parser.add_argument("--floor", action="store_true",
                        help="also apply the same children without the operator: the control plane's own share")
    parser.add_argument("--smoke", action="store_true", help="3 objects, 1 s idle: only that it runs")
    args = parser.parse_args()
    if args.smoke:
        args.counts, args.idle_seconds, args.timeout = "3", 1.0, 120.0
    kubeconfig = os.environ.get("KUBECONFIG")
    if not kubeconfig:
        sys.exit('KUBECONFIG is not set: eval "$(hack/control-plane.sh env)"')
    api = config.new_client_from_config(config_file=kubeconfig)
    api.configuration.connection_pool_maxsize = 16
    subprocess.run(["kubectl", "apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds")],
                   check=True, capture_output=True)
    counts = [int(c) for c in args.counts.split(",")]
    rows: list[dict[str, Any]] = []
    nodes: list[str] = []
    check_service_range(api, max(counts))
    try:
        nodes = bench_nodes(client.CoreV1Api(api), 2, max(counts))
        for count in counts:
            for row in run_one(count, api=api, kubeconfig=kubeconfig, idle_seconds=args.idle_seconds,
                               timeout=args.timeout, py_spy=args.py_spy):
                print(json.dumps(row), flush=True)
                rows.append(row)
            if args.floor:
                row = run_floor(count, api=api, kubeconfig=kubeconfig, timeout=args.timeout)
                print(json.dumps(row), flush=True)
                rows.append(row)
    finally:
        for name in nodes:
            try:
                client.CoreV1Api(api).delete_node(name)
            except client.ApiException as e:
                if e.status != 404:
                    raise
    print(f"\n{'objects':>8} {'create s':>9} {'all ready s':>12} {'pods ready s':>13} {'p50 s':>7} {'p99 s':>7} "
          f"{'burst cpu s':>12} {'peak rss MB':>12} {'idle cpu %':>11} {'idle rss MB':>12}")
    for count in counts:
        r = next(r for r in rows if r["agent_deployments"] == count and r["metric"] == "time_to_ready")
        i = next(r for r in rows if r["agent_deployments"] == count and r["metric"] == "idle")
        print(f"{count:>8} {r['create_seconds']:>9} {r['all_ready_seconds']!s:>12} {r['pods_ready_seconds']!s:>13} "
              f"{r['p50_seconds']!s:>7} {r['p99_seconds']!s:>7} {r['burst_cpu_seconds']:>12} "
              f"{r['burst_peak_rss_mb']:>12} {i['cpu_percent']:>11} {i['rss_mb']:>12}")
    for r in (r for r in rows if r["metric"] == "control_plane_floor"):
        print(f"control plane alone, the same children of {r['agent_deployments']} AgentDeployments "
              f"({r['objects_applied']} objects): applied in {r['applied_seconds']} s, "
              f"every pod Ready in {r['pods_ready_seconds']} s")


if __name__ == "__main__":
    main()
