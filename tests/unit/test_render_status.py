"""Status conditions computed from what was observed (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from strata_operator import status as st
from strata_operator.reconcile import Desired, Inputs, Owner, RenderError, render

pytestmark = pytest.mark.unit

T0, T1 = "2025-01-01T00:00:00Z", "2025-01-01T00:05:00Z"


def desired(**spec: Any) -> Desired:
    from strata_operator.models import AgentDeploymentSpec

    spec = spec or {"stores": {"allowPodLocalState": True}}
    return render(Inputs(owner=Owner("a", "ns", "u"), spec=AgentDeploymentSpec.model_validate(spec),
                         keda_available=False))


SHARED = {"redis": {"urlSecretRef": {"name": "r", "key": "url"}},
          "postgres": {"dsnSecretRef": {"name": "p", "key": "dsn"}},
          "milvus": {"uriSecretRef": {"name": "m", "key": "uri"}}}


@pytest.mark.parametrize(("stores", "local"), [
    ({}, ["stores.redis", "stores.postgres", "stores.milvus"]),
    ({**SHARED, "redis": {"backend": "memory"}}, ["stores.redis"]),
    ({k: v for k, v in SHARED.items() if k != "postgres"}, ["stores.postgres"]),
    ({k: v for k, v in SHARED.items() if k != "milvus"}, ["stores.milvus"]),
])
def test_pod_local_state_with_several_replicas_is_not_ready(stores: dict[str, Any], local: list[str]) -> None:
    d = desired(stores=stores)
    assert d.pod_local_state is not None and all(name in d.pod_local_state for name in local)
    status = st.agent_status(generation=1, previous={}, now=T0, desired=d, deployment=deployment(d))
    assert (condition(status, "Ready")["status"], condition(status, "Ready")["reason"]) == ("False", "PodLocalState")
    assert condition(status, "Degraded")["reason"] == "PodLocalState"
    assert d.objects, "the pods are still rolled out"


@pytest.mark.parametrize("spec", [
    {"stores": SHARED},
    {"replicas": {"min": 1, "max": 1}},
    {"stores": {"allowPodLocalState": True}},
])
def test_shared_stores_one_replica_or_the_opt_in_are_ready(spec: dict[str, Any]) -> None:
    d = desired(**spec)
    assert d.pod_local_state is None
    status = st.agent_status(generation=1, previous={}, now=T0, desired=d, deployment=deployment(d))
    assert condition(status, "Ready")["status"] == "True"


def deployment(d: Desired, *, replicas: int = 2, ready: int = 2, updated: int = 2, generation: int = 1,
               observed: int = 1, config_hash: str | None = None, stuck: bool = False) -> dict[str, Any]:
    conditions = [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                   "message": "ReplicaSet a-1 has timed out progressing."}] if stuck else []
    return {
        "metadata": {"generation": generation},
        "spec": {"replicas": 2, "template": {"metadata": {"annotations": {
            "strata.dev/config-hash": config_hash or d.config_hash}}}},
        "status": {"observedGeneration": observed, "replicas": replicas, "readyReplicas": ready,
                   "updatedReplicas": updated, "availableReplicas": ready, "conditions": conditions},
    }


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    [c] = [c for c in status["conditions"] if c["type"] == type_]
    return c


def test_a_complete_rollout_is_ready_with_the_current_generation() -> None:
    d = desired()
    status = st.agent_status(generation=4, previous={}, now=T0, desired=d, deployment=deployment(d))
    ready = condition(status, "Ready")
    assert (ready["status"], ready["reason"], ready["observedGeneration"]) == ("True", "RolloutComplete", 4)
    assert status["observedGeneration"] == 4 and status["configHash"] == d.config_hash
    assert condition(status, "Progressing")["status"] == "False"
    assert condition(status, "Degraded")["status"] == "False"
    assert condition(status, "KedaScaling")["reason"] == "KedaNotInstalled"
    assert status["scaler"] == "hpa"


def test_old_pods_still_running_means_progressing_not_ready() -> None:
    d = desired()
    status = st.agent_status(generation=1, previous={}, now=T0, desired=d,
                             deployment=deployment(d, replicas=3, updated=2))
    assert condition(status, "Ready")["status"] == "False"
    assert condition(status, "Progressing")["reason"] == "RollingOut"


def test_a_deployment_with_an_older_config_is_not_ready() -> None:
    d = desired()
    status = st.agent_status(generation=1, previous={}, now=T0, desired=d,
                             deployment=deployment(d, config_hash="old"))
    assert condition(status, "Ready")["status"] == "False"


def test_a_stuck_rollout_is_degraded() -> None:
    d = desired()
    status = st.agent_status(generation=1, previous={}, now=T0, desired=d, deployment=deployment(d, stuck=True))
    assert condition(status, "Degraded")["reason"] == "ProgressDeadlineExceeded"
    assert condition(status, "Ready")["status"] == "False"


def test_a_render_error_is_degraded_with_its_reason() -> None:
    error = RenderError("PolicyNotFound", "CachePolicy 'default' not found in namespace ns")
    status = st.agent_status(generation=2, previous={}, now=T0, error=error)
    degraded = condition(status, "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "PolicyNotFound")
    assert condition(status, "Ready")["reason"] == "PolicyNotFound"


def test_transition_time_moves_only_when_the_status_flips() -> None:
    d = desired()
    first = st.agent_status(generation=1, previous={}, now=T0, desired=d, deployment=deployment(d))
    again = st.agent_status(generation=1, previous=first, now=T1, desired=d, deployment=deployment(d))
    assert condition(again, "Ready")["lastTransitionTime"] == T0
    assert not st.changed(first, again)
    broken = st.agent_status(generation=1, previous=again, now=T1, error=RenderError("InvalidSpec", "x"))
    assert condition(broken, "Ready")["lastTransitionTime"] == T1
    assert st.changed(again, broken)


def test_only_replica_progress_may_wait_a_condition_flip_may_not() -> None:
    d = desired()
    one = st.agent_status(generation=1, previous={}, now=T0, desired=d,
                          deployment=deployment(d, replicas=1, ready=0, updated=1))
    two = st.agent_status(generation=1, previous=one, now=T1, desired=d,
                          deployment=deployment(d, replicas=2, ready=1, updated=2))
    assert st.changed(one, two) and st.progress_only(one, two)
    ready = st.agent_status(generation=1, previous=two, now=T1, desired=d, deployment=deployment(d))
    assert not st.progress_only(two, ready)
    edited = st.agent_status(generation=2, previous=two, now=T1, desired=d,
                             deployment=deployment(d, replicas=2, ready=1, updated=2))
    assert not st.progress_only(two, edited)
    assert not st.progress_only({}, one)


def test_policy_status_reports_validity() -> None:
    ok = st.policy_status(generation=3, previous={}, now=T0, error=None)
    assert condition(ok, "Ready")["reason"] == "Valid" and ok["observedGeneration"] == 3
    bad = st.policy_status(generation=4, previous=ok, now=T1, error="semantic.low must not exceed high")
    assert condition(bad, "Ready")["reason"] == "InvalidSpec"


# ---- kopf peering: does a standby replica skip the drift-repair sweep? -----------------------
def peering(**peers: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "status": dict(peers)}


NOW = 1_750_000_000.0
SEEN_NOW = "2025-06-15T15:06:40+00:00"  # == NOW
SEEN_LONG_AGO = "2025-06-15T14:00:00+00:00"


def test_a_live_peer_with_a_higher_priority_outranks_this_replica() -> None:
    from strata_operator.k8s import outranked_in

    obj = peering(other={"priority": 20, "lifetime": 60, "lastseen": SEEN_NOW})
    assert outranked_in(obj, 10, NOW)


def test_a_dead_or_lower_or_equal_peer_does_not_outrank_this_replica() -> None:
    from strata_operator.k8s import outranked_in

    assert not outranked_in(peering(dead={"priority": 20, "lifetime": 60, "lastseen": SEEN_LONG_AGO}), 10, NOW)
    assert not outranked_in(peering(low={"priority": 5, "lifetime": 60, "lastseen": SEEN_NOW}), 10, NOW)
    assert not outranked_in(peering(same={"priority": 10, "lifetime": 60, "lastseen": SEEN_NOW}), 10, NOW)
    assert not outranked_in(None, 10, NOW)


def test_the_rollout_view_keeps_what_the_status_reads() -> None:
    from strata_operator.controller import rollout_view

    d = desired()
    full = deployment(d, ready=1, updated=2)
    full["metadata"]["managedFields"] = [{"manager": "x"}]
    full["spec"]["template"]["spec"] = {"containers": [{"name": "runtime"}]}
    view = rollout_view(full)
    assert "managedFields" not in view["metadata"] and "spec" not in view["spec"]["template"]
    assert st.rollout(view, d.config_hash) == st.rollout(full, d.config_hash)
