"""A config change rolls the runtime Deployment under steady streaming load with 0 failed
requests: readiness, preStop and the runtime's drain really hand traffic over."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable

import pytest

from tests.kind.conftest import ACME_KEY, NAMESPACE, Kube, agent_deployment, upstream_control
from tests.kind.stores import stores_spec
from tests.support.drill import Load, audit

pytestmark = pytest.mark.kind
log = logging.getLogger(__name__)

NAME = "rolling"
AUTH = {"Authorization": f"Bearer {ACME_KEY}"}
GRACE = 40


@pytest.fixture(scope="module")
def base_url(deploy_agent: Callable[..., str], stores: None) -> str:
    return deploy_agent(NAME, replicas=2, stores=stores_spec(),
                        drain={"terminationGracePeriodSeconds": GRACE, "preStopSleepSeconds": 5})


def pod_names(kube: Kube) -> set[str]:
    return {p["metadata"]["name"] for p in kube.pods(f"app.kubernetes.io/instance={NAME}")}


async def test_a_config_change_rolls_the_pods_with_zero_failed_requests(kube: Kube, base_url: str) -> None:
    before = pod_names(kube)
    template = kube.get("deployment", NAME)["spec"]["template"]["spec"]
    assert template["terminationGracePeriodSeconds"] == GRACE
    assert template["containers"][0]["lifecycle"]["preStop"]
    upstream_control(chunk_delay_ms=60)
    load = Load([base_url], clients=20, headers=AUTH)
    # A model's settings are in the pods' config (an agent's prompt is swapped in place, without a roll).
    models = agent_deployment(NAME)["spec"]["runtime"]["models"]
    patch = {"spec": {"runtime": {"models": [{**models[0], "pricing": {"inputPer1M": 0.2, "outputPer1M": 0.8}}]}}}
    try:
        run = asyncio.create_task(load.run(300.0))
        await asyncio.sleep(5)
        await asyncio.to_thread(kube.run, "patch", "agentdeployment", NAME, "-n", NAMESPACE, "--type", "merge",
                                "-p", json.dumps(patch))
        await asyncio.to_thread(kube.run, "rollout", "status", "-n", NAMESPACE, f"deploy/{NAME}",
                                "--timeout=180s", timeout=200)
        # The load goes on until every old pod is gone: their whole drain happens under it. The kubelet
        # kills a pod at terminationGracePeriodSeconds at the latest, so this wait is bounded.
        for pod in before:
            await asyncio.to_thread(kube.run, "wait", "-n", NAMESPACE, "--for=delete", f"pod/{pod}",
                                    f"--timeout={GRACE + 30}s", timeout=GRACE + 60)
        await asyncio.sleep(3)
        load.stop()
        outcome = await run
    finally:
        await load.close()
        upstream_control(reset=True)
    summary = outcome.summary()
    log.info("rolling under load: %s; 503 codes %s; breaks %s", summary, dict(outcome.refused_codes),
             dict(outcome.break_kinds))
    if outcome.break_times:  # when, next to the old pods' termination (the kubelet's Killing events)
        events = json.loads(kube.run("get", "events", "-n", NAMESPACE, "--field-selector", "reason=Killing",
                                     "-o", "json"))["items"]
        log.info("breaks at %s; pods stopped at %s",
                 [time.strftime("%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}" for t in outcome.break_times],
                 sorted((e.get("lastTimestamp") or e.get("eventTime"), e["involvedObject"]["name"]) for e in events))
    after = pod_names(kube)
    assert not before & after, f"the pods did not roll: {before} -> {after}"
    assert not outcome.unexpected, (summary, outcome.unexpected[:10])
    assert summary["refused_503"] == 0 and summary["unacknowledged_breaks"] == 0, summary
    assert summary["resumed"] == 0, f"a stream broke during the roll: {summary}"
    assert summary["completed"] == summary["acknowledged"] > 0, summary
    log.info("audit: %s", await audit(base_url, outcome.acked, headers=AUTH))
