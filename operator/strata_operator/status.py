"""Pure status computation: conditions (Kubernetes API conventions) from what was observed.

Condition types are adjectives, reasons one CamelCase word:

- ``Ready``: True once the current generation is rolled out and every desired pod is available;
  False with reason ``PodLocalState`` when replicas.max > 1 but a store is left out (each pod
  would keep its own sessions or memory) and ``stores.allowPodLocalState`` is not set.
- ``Progressing``: True while a rollout of the current config is under way.
- ``Degraded``: True when the operator cannot do its job (invalid spec, missing policy or
  Secret, API failure, a stuck rollout); the reason says which.
- ``KedaScaling``: True when a KEDA ScaledObject owns the replica count; False with reason
  ``KedaNotInstalled`` when an autoscaling/v2 HPA stands in for it.
- ``ConfigGuardPassed``: True when the config guard's rules found nothing in the agents' prompts
  (size, instructions that switch off the model's rules, pasted credentials, unknown tools);
  False with reason ``FindingsReported`` and the findings as message (``guard: enforce`` makes
  them a ``GuardRejected`` spec error instead).
- ``AgentsServed``: True when every runtime pod reports (pod annotation ``strata.dev/agents-hash``,
  written by the runtime after each load) the agent definitions hash the operator delivered;
  False with reason ``PodsBehind`` naming the pods that serve another hash or none yet.

For GitOps tools (Flux, Argo CD, anything built on kstatus) two "abnormal-true" conditions, present
only while True, and a top-level ``observedGeneration`` advanced after every reconciliation, valid
spec or not:

- ``Reconciling``: True while the operator is still working towards the current generation
  (rollout under way, or an API failure it retries).
- ``Stalled``: True when it cannot go on without a change by someone (invalid spec, missing
  policy or Secret, a rollout past its progress deadline, an API request the server refuses).

So a spec error reads as "failed" (Stalled), never as "in progress" forever.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from strata_operator.models import RoutingPolicySpec
from strata_operator.reconcile import ANNOTATION_CONFIG_HASH, Desired, RenderError

Obj = dict[str, Any]

READY = "Ready"
PROGRESSING = "Progressing"
DEGRADED = "Degraded"
KEDA_SCALING = "KedaScaling"
GUARD = "ConfigGuardPassed"
AGENTS_SERVED = "AgentsServed"
MAX_PODS_LISTED = 100
"""status.pods lists at most this many pods (by name); the counts cover them all."""
RECONCILING = "Reconciling"
STALLED = "Stalled"


def set_condition(conditions: list[Obj], type_: str, status: bool, reason: str, message: str, *,
                  generation: int | None, now: str) -> list[Obj]:
    """A new list with `type_` set; lastTransitionTime moves only when the status flips."""
    value = "True" if status else "False"
    previous = next((c for c in conditions if c.get("type") == type_), None)
    since = previous["lastTransitionTime"] if previous and previous.get("status") == value else now
    condition = {"type": type_, "status": value, "reason": reason, "message": message[:1024],
                 "lastTransitionTime": since, "observedGeneration": generation}
    return [*(c for c in conditions if c.get("type") != type_), condition]


def set_abnormal(conditions: list[Obj], type_: str, reason: str | None, message: str, *,
                 generation: int | None, now: str) -> list[Obj]:
    """An "abnormal-true" condition (kstatus): True with `reason` when given, else removed."""
    if reason is None:
        return [c for c in conditions if c.get("type") != type_]
    return set_condition(conditions, type_, True, reason, message, generation=generation, now=now)


def rollout(deployment: Obj | None, config_hash: str) -> tuple[str, str, int, int]:
    """(state, message, replicas, readyReplicas); state is complete | progressing | stuck | missing."""
    if deployment is None:
        return "missing", "the Deployment does not exist yet", 0, 0
    meta, spec, status = deployment.get("metadata", {}), deployment.get("spec", {}), deployment.get("status", {})
    replicas, ready = int(status.get("replicas") or 0), int(status.get("readyReplicas") or 0)
    template_hash = spec.get("template", {}).get("metadata", {}).get("annotations", {}).get(ANNOTATION_CONFIG_HASH)
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Progressing" and condition.get("reason") == "ProgressDeadlineExceeded":
            return "stuck", condition.get("message", "the rollout exceeded its progress deadline"), replicas, ready
    want = int(spec.get("replicas") if spec.get("replicas") is not None else 1)
    updated = int(status.get("updatedReplicas") or 0)
    available = int(status.get("availableReplicas") or 0)
    observed = int(status.get("observedGeneration") or 0) >= int(meta.get("generation") or 0)
    if template_hash != config_hash or not observed:
        return "progressing", "the Deployment has not seen the current config yet", replicas, ready
    if updated < want or replicas > updated or available < want:
        return ("progressing", f"{updated}/{want} pods updated, {available} available, {replicas - updated} old",
                replicas, ready)
    return "complete", f"{available}/{want} pods available", replicas, ready


def agents_served(status: Obj, conditions: list[Obj], delivered: str, pods: Mapping[str, str], *,
                  generation: int | None, now: str) -> list[Obj]:
    """Fill status.pods ({name, agentsHash}; "" = not reported yet) and the pod counts from
    `pods` (name -> the hash it reports); the AgentsServed condition says whether all serve
    `delivered`."""
    behind = sorted(name for name, served in pods.items() if served != delivered)
    status["pods"] = [{"name": name, "agentsHash": pods[name]} for name in sorted(pods)[:MAX_PODS_LISTED]]
    status["agentsHashCurrentPods"] = len(pods) - len(behind)
    if not behind:
        return set_condition(conditions, AGENTS_SERVED, True, "AllPodsServing",
                             f"{len(pods)} pods serve agentsHash {delivered}", generation=generation, now=now)
    listed = ", ".join(f"{name} ({pods[name] or 'not reported'})" for name in behind[:10])
    more = f" and {len(behind) - 10} more" if len(behind) > 10 else ""
    return set_condition(conditions, AGENTS_SERVED, False, "PodsBehind",
                         f"{len(behind)}/{len(pods)} pods do not serve agentsHash {delivered} yet: {listed}{more}",
                         generation=generation, now=now)


def agent_status(*, generation: int, previous: Obj, now: str, desired: Desired | None = None,
                 error: RenderError | None = None, retrying: bool = False, deployment: Obj | None = None,
                 pods: Mapping[str, str] | None = None) -> Obj:
    """The whole `status` of an AgentDeployment after one reconciliation. An `error` is Stalled
    unless `retrying` (a failure the operator retries by itself, such as an API server outage)."""
    conditions: list[Obj] = list(previous.get("conditions") or [])
    put = functools.partial(set_condition, generation=generation, now=now)
    abnormal = functools.partial(set_abnormal, generation=generation, now=now)
    # Advanced whatever the outcome: the generation was seen, and the conditions are about it.
    status: Obj = {k: v for k, v in previous.items() if k != "conditions"} | {"observedGeneration": generation}
    if error is not None:
        conditions = put(conditions, DEGRADED, True, error.reason, error.message)
        conditions = put(conditions, READY, False, error.reason, error.message)
        if retrying:
            conditions = put(conditions, PROGRESSING, True, error.reason, "retrying: " + error.message)
            conditions = abnormal(conditions, RECONCILING, error.reason, "retrying: " + error.message)
            conditions = abnormal(conditions, STALLED, None, "")
        else:
            conditions = put(conditions, PROGRESSING, False, error.reason, "waiting for the problem to be fixed")
            conditions = abnormal(conditions, RECONCILING, None, "")
            conditions = abnormal(conditions, STALLED, error.reason, error.message)
        status["conditions"] = conditions
        return status

    assert desired is not None
    state, message, replicas, ready = rollout(deployment, desired.config_hash)
    status.update(configHash=desired.config_hash, agentsHash=desired.agents_hash, scaler=desired.scaler,
                  replicas=replicas, readyReplicas=ready)
    if state == "complete" and desired.pod_local_state:
        conditions = put(conditions, READY, False, "PodLocalState", desired.pod_local_state)
        conditions = put(conditions, PROGRESSING, False, "RolloutComplete", message)
        conditions = put(conditions, DEGRADED, True, "PodLocalState", desired.pod_local_state)
    elif state == "complete":
        conditions = put(conditions, READY, True, "RolloutComplete", message)
        conditions = put(conditions, PROGRESSING, False, "RolloutComplete", message)
        conditions = put(conditions, DEGRADED, False, "AsExpected", "")
        conditions = abnormal(abnormal(conditions, RECONCILING, None, ""), STALLED, None, "")
    elif state == "stuck":
        conditions = put(conditions, READY, False, "ProgressDeadlineExceeded", message)
        conditions = put(conditions, PROGRESSING, False, "ProgressDeadlineExceeded", message)
        conditions = put(conditions, DEGRADED, True, "ProgressDeadlineExceeded", message)
        conditions = abnormal(conditions, RECONCILING, None, "")
        conditions = abnormal(conditions, STALLED, "ProgressDeadlineExceeded", message)
    else:
        conditions = put(conditions, READY, False, "RollingOut", message)
        conditions = put(conditions, PROGRESSING, True, "RollingOut", message)
        conditions = put(conditions, DEGRADED, False, "AsExpected", "")
        conditions = abnormal(conditions, RECONCILING, "RollingOut", message)
        conditions = abnormal(conditions, STALLED, None, "")
    if desired.scaler == "keda":
        conditions = put(conditions, KEDA_SCALING, True, "ScaledObject",
                                   "a KEDA ScaledObject scales on active sessions and pending requests")
    elif desired.scaler == "hpa":
        conditions = put(conditions, KEDA_SCALING, False, "KedaNotInstalled",
                                   "the KEDA CRDs are not installed: an autoscaling/v2 HPA scales instead")
    else:
        conditions = put(conditions, KEDA_SCALING, False, "AutoscalingDisabled",
                                   "scaling.keda.enabled is false: fixed replicas.min")
    if desired.guard_findings:
        conditions = put(conditions, GUARD, False, "FindingsReported", "; ".join(desired.guard_findings))
    else:
        conditions = put(conditions, GUARD, True, "NoFindings", "the config guard's rules found nothing")
    if not desired.pods_report_agents_hash:  # nothing to observe: no condition that could only say "behind"
        conditions = [c for c in conditions if c.get("type") != AGENTS_SERVED]
        status["pods"] = status["agentsHashCurrentPods"] = None
    elif pods is not None:  # None: not observed by this process yet (the previous report stays)
        conditions = agents_served(status, conditions, desired.agents_hash, pods, generation=generation, now=now)
    status["conditions"] = conditions
    return status


def routing_details(spec: RoutingPolicySpec) -> Obj:
    """What a valid RoutingPolicy reports besides its conditions: the semantic thresholds in force."""
    semantic = spec.semantic
    return {"thresholds": {"high": semantic.high, "low": semantic.low, "aggregation": semantic.aggregation,
                           "fittedSkills": len(semantic.skills)}}


def policy_status(*, generation: int, previous: Obj, now: str, error: str | None, details: Obj | None = None) -> Obj:
    """The status of a policy: Ready/Stalled from its validity; `details` (valid specs only) added."""
    conditions: list[Obj] = list(previous.get("conditions") or [])
    put = functools.partial(set_condition, generation=generation, now=now)
    if error:
        conditions = put(conditions, READY, False, "InvalidSpec", error)
        conditions = set_abnormal(conditions, STALLED, "InvalidSpec", error, generation=generation, now=now)
    else:
        conditions = put(conditions, READY, True, "Valid", "the policy is valid")
        conditions = set_abnormal(conditions, STALLED, None, "", generation=generation, now=now)
    return {"observedGeneration": generation, "conditions": conditions, **(details or {})}


def changed(previous: Obj, new: Obj) -> bool:
    """Whether writing `new` would change anything (status is written only when it changed)."""
    return _comparable(previous) != _comparable(new)


def progress_only(previous: Obj, new: Obj) -> bool:
    """Whether `new` differs from `previous` only in rollout progress (replica counts, messages):
    no condition changed its status or reason, and the generation and config are the same.
    Such a change may wait a little and be written together with the next one."""
    if any(previous.get(k) != new.get(k) for k in ("observedGeneration", "configHash", "agentsHash", "scaler")):
        return False

    def flags(status: Obj) -> dict[Any, tuple[Any, Any]]:
        return {c.get("type"): (c.get("status"), c.get("reason")) for c in status.get("conditions") or []}

    return flags(previous) == flags(new)


def _comparable(status: Obj) -> Obj:
    out = {k: v for k, v in status.items() if k != "kopf" and v is not None}
    out["conditions"] = sorted(
        ({k: v for k, v in c.items() if v is not None} for c in status.get("conditions") or []),
        key=lambda c: str(c.get("type")),
    )
    return out
