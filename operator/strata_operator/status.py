"""Pure status computation: conditions (Kubernetes API conventions) from what was observed.

Condition types are adjectives, reasons one CamelCase word:

- ``Ready``: True once the current generation is rolled out and every desired pod is available.
- ``Progressing``: True while a rollout of the current config is under way.
- ``Degraded``: True when the operator cannot do its job (invalid spec, missing policy or
  Secret, API failure, a stuck rollout); the reason says which.
- ``KedaScaling``: True when a KEDA ScaledObject owns the replica count; False with reason
  ``KedaNotInstalled`` when an autoscaling/v2 HPA stands in for it.
"""

from __future__ import annotations

import functools
from typing import Any

from strata_operator.reconcile import ANNOTATION_CONFIG_HASH, Desired, RenderError

Obj = dict[str, Any]

READY = "Ready"
PROGRESSING = "Progressing"
DEGRADED = "Degraded"
KEDA_SCALING = "KedaScaling"


def set_condition(conditions: list[Obj], type_: str, status: bool, reason: str, message: str, *,
                  generation: int | None, now: str) -> list[Obj]:
    """A new list with `type_` set; lastTransitionTime moves only when the status flips."""
    value = "True" if status else "False"
    previous = next((c for c in conditions if c.get("type") == type_), None)
    since = previous["lastTransitionTime"] if previous and previous.get("status") == value else now
    condition = {"type": type_, "status": value, "reason": reason, "message": message[:1024],
                 "lastTransitionTime": since, "observedGeneration": generation}
    return [*(c for c in conditions if c.get("type") != type_), condition]


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


def agent_status(*, generation: int, previous: Obj, now: str, desired: Desired | None = None,
                 error: RenderError | None = None, deployment: Obj | None = None) -> Obj:
    """The whole `status` of an AgentDeployment after one reconciliation."""
    conditions: list[Obj] = list(previous.get("conditions") or [])
    put = functools.partial(set_condition, generation=generation, now=now)
    status: Obj = {k: v for k, v in previous.items() if k != "conditions"}
    if error is not None:
        conditions = put(conditions, DEGRADED, True, error.reason, error.message)
        conditions = put(conditions, READY, False, error.reason, error.message)
        conditions = put(conditions, PROGRESSING, False, error.reason,
                                   "waiting for the problem to be fixed")
        status["conditions"] = conditions
        return status

    assert desired is not None
    state, message, replicas, ready = rollout(deployment, desired.config_hash)
    status.update(observedGeneration=generation, configHash=desired.config_hash, scaler=desired.scaler,
                  replicas=replicas, readyReplicas=ready)
    if state == "complete":
        conditions = put(conditions, READY, True, "RolloutComplete", message)
        conditions = put(conditions, PROGRESSING, False, "RolloutComplete", message)
        conditions = put(conditions, DEGRADED, False, "AsExpected", "")
    elif state == "stuck":
        conditions = put(conditions, READY, False, "ProgressDeadlineExceeded", message)
        conditions = put(conditions, PROGRESSING, False, "ProgressDeadlineExceeded", message)
        conditions = put(conditions, DEGRADED, True, "ProgressDeadlineExceeded", message)
    else:
        conditions = put(conditions, READY, False, "RollingOut", message)
        conditions = put(conditions, PROGRESSING, True, "RollingOut", message)
        conditions = put(conditions, DEGRADED, False, "AsExpected", "")
    if desired.scaler == "keda":
        conditions = put(conditions, KEDA_SCALING, True, "ScaledObject",
                                   "a KEDA ScaledObject scales on active sessions and pending requests")
    elif desired.scaler == "hpa":
        conditions = put(conditions, KEDA_SCALING, False, "KedaNotInstalled",
                                   "the KEDA CRDs are not installed: an autoscaling/v2 HPA scales instead")
    else:
        conditions = put(conditions, KEDA_SCALING, False, "AutoscalingDisabled",
                                   "scaling.keda.enabled is false: fixed replicas.min")
    status["conditions"] = conditions
    return status


def policy_status(*, generation: int, previous: Obj, now: str, error: str | None) -> Obj:
    conditions: list[Obj] = list(previous.get("conditions") or [])
    put = functools.partial(set_condition, generation=generation, now=now)
    if error:
        conditions = put(conditions, READY, False, "InvalidSpec", error)
    else:
        conditions = put(conditions, READY, True, "Valid", "the policy is valid")
    return {"observedGeneration": generation, "conditions": conditions}


def changed(previous: Obj, new: Obj) -> bool:
    """Whether writing `new` would change anything (status is written only when it changed)."""
    return _comparable(previous) != _comparable(new)


def progress_only(previous: Obj, new: Obj) -> bool:
    """Whether `new` differs from `previous` only in rollout progress (replica counts, messages):
    no condition changed its status or reason, and the generation and config are the same.
    Such a change may wait a little and be written together with the next one."""
    if any(previous.get(k) != new.get(k) for k in ("observedGeneration", "configHash", "scaler")):
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
