"""Status as GitOps tools read it (kstatus: Flux, Argo CD, `kubectl wait`-style checkers).

`kstatus_of` follows kstatus's rules for a custom resource (sigs.k8s.io/cli-utils/pkg/kstatus,
generic conditions): a status whose observedGeneration lags the object's generation is
InProgress; Stalled=True is Failed; Reconciling=True is InProgress; otherwise Current.
"""

from __future__ import annotations

from typing import Any

import pytest

from strata_operator import status as st
from strata_operator.reconcile import RenderError
from tests.unit.test_render_status import deployment, desired

pytestmark = pytest.mark.unit

T0, T1 = "2025-01-01T00:00:00Z", "2025-01-01T00:05:00Z"


def kstatus_of(generation: int, status: dict[str, Any]) -> str:
    if status.get("observedGeneration") != generation:
        return "InProgress"
    flags = {c["type"]: c["status"] for c in status.get("conditions") or []}
    if flags.get("Stalled") == "True":
        return "Failed"
    if flags.get("Reconciling") == "True":
        return "InProgress"
    return "Current"


def condition(status: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), None)


def test_an_invalid_spec_advances_the_observed_generation_and_is_stalled() -> None:
    d = desired()
    ready = st.agent_status(generation=1, previous={}, now=T0, desired=d, deployment=deployment(d))
    broken = st.agent_status(generation=2, previous=ready, now=T1,
                             error=RenderError("InvalidSpec", "spec is invalid: replicas.min: too small"))
    assert broken["observedGeneration"] == 2, "a spec error left the generation unobserved"
    stalled = condition(broken, "Stalled")
    assert stalled and (stalled["status"], stalled["reason"], stalled["observedGeneration"]) == ("True",
                                                                                              "InvalidSpec", 2)
    assert "replicas.min" in stalled["message"]
    assert condition(broken, "Reconciling") is None
    assert kstatus_of(2, broken) == "Failed"


@pytest.mark.parametrize("reason", ["PolicyNotFound", "InvalidPolicy", "SecretNotFound", "SecretKeyNotFound"])
def test_every_error_that_needs_a_change_by_someone_is_stalled(reason: str) -> None:
    status = st.agent_status(generation=1, previous={}, now=T0, error=RenderError(reason, "x"))
    assert kstatus_of(1, status) == "Failed" and condition(status, "Stalled")["reason"] == reason  # type: ignore[index]


def test_an_api_failure_the_operator_retries_is_reconciling_not_stalled() -> None:
    status = st.agent_status(generation=1, previous={}, now=T0, error=RenderError("ApplyFailed", "HTTP 503"),
                             retrying=True)
    assert condition(status, "Stalled") is None
    reconciling = condition(status, "Reconciling")
    assert reconciling and (reconciling["status"], reconciling["reason"]) == ("True", "ApplyFailed")
    assert kstatus_of(1, status) == "InProgress"


def test_a_rollout_is_reconciling_then_current_with_neither_condition_left() -> None:
    d = desired()
    rolling = st.agent_status(generation=1, previous={}, now=T0, desired=d,
                              deployment=deployment(d, replicas=2, ready=1, updated=2))
    assert (condition(rolling, "Reconciling") or {}).get("reason") == "RollingOut"
    assert kstatus_of(1, rolling) == "InProgress"
    ready = st.agent_status(generation=1, previous=rolling, now=T1, desired=d, deployment=deployment(d))
    assert condition(ready, "Reconciling") is None and condition(ready, "Stalled") is None
    assert kstatus_of(1, ready) == "Current"


def test_fixing_a_stalled_spec_clears_stalled() -> None:
    d = desired()
    broken = st.agent_status(generation=1, previous={}, now=T0, error=RenderError("InvalidSpec", "x"))
    fixed = st.agent_status(generation=2, previous=broken, now=T1, desired=d, deployment=deployment(d))
    assert condition(fixed, "Stalled") is None and kstatus_of(2, fixed) == "Current"


def test_a_rollout_past_its_deadline_is_stalled() -> None:
    d = desired()
    stuck = st.agent_status(generation=1, previous={}, now=T0, desired=d, deployment=deployment(d, stuck=True))
    assert (condition(stuck, "Stalled") or {}).get("reason") == "ProgressDeadlineExceeded"
    assert kstatus_of(1, stuck) == "Failed"


def test_reconciling_progress_keeps_the_held_back_write_economy() -> None:
    # Replica counts moving during a rollout change Reconciling's message only: still progress-only.
    d = desired()
    one = st.agent_status(generation=1, previous={}, now=T0, desired=d,
                          deployment=deployment(d, replicas=1, ready=0, updated=1))
    two = st.agent_status(generation=1, previous=one, now=T1, desired=d,
                          deployment=deployment(d, replicas=2, ready=1, updated=2))
    assert st.changed(one, two) and st.progress_only(one, two)


def test_an_invalid_policy_is_stalled_and_a_valid_one_is_current() -> None:
    bad = st.policy_status(generation=4, previous={}, now=T0, error="semantic.low must not exceed high")
    assert kstatus_of(4, bad) == "Failed"
    good = st.policy_status(generation=5, previous=bad, now=T1, error=None)
    assert condition(good, "Stalled") is None and kstatus_of(5, good) == "Current"
