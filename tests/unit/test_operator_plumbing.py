"""The operator's plumbing (pure, in-process): its background-task helper, its metrics registry,
its JSON log lines, and which resources its handlers make kopf watch."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import logging
from collections.abc import Sized
from typing import Any

import kopf
import pytest
from prometheus_client import generate_latest

from strata_operator import metrics
from strata_operator.handlers import EndlessBackoffs, register
from strata_operator.logs import JsonFormatter
from strata_operator.settings import OperatorSettings
from strata_operator.tasks import Tasks

pytestmark = pytest.mark.unit


def sample(name: str, **labels: str) -> float:
    value = metrics.REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_a_keyed_task_runs_once_per_key_until_it_releases_its_key() -> None:
    tasks = Tasks("test-keyed")
    ran: list[str] = []
    gate = asyncio.Event()

    async def job(label: str) -> None:
        await gate.wait()
        tasks.release("k")
        ran.append(label)

    assert tasks.start(job("first"), "a", key="k")
    assert not tasks.start(job("dropped"), "b", key="k"), "a second task for a pending key was started"
    assert len(tasks) == 1 and sample("strata_operator_work_queue_depth", queue="test-keyed") == 1
    gate.set()
    await asyncio.sleep(0.01)
    assert ran == ["first"] and len(tasks) == 0
    assert tasks.start(job("again"), "c", key="k")
    await asyncio.sleep(0.01)
    assert ran == ["first", "again"]


async def test_a_failing_task_is_logged_and_counted_and_close_cancels_the_rest(
        caplog: pytest.LogCaptureFixture) -> None:
    tasks = Tasks("test-failing")
    before = sample("strata_operator_errors_total", kind="Operator", reason="TaskFailed")

    async def fail() -> None:
        raise RuntimeError("boom")

    forever = asyncio.Event()
    tasks.start(fail(), "fails")
    tasks.start(forever.wait(), "waits", key="w")  # type: ignore[arg-type]
    await asyncio.sleep(0.01)
    assert sample("strata_operator_errors_total", kind="Operator", reason="TaskFailed") == before + 1
    assert any("strata-test-failing-fails failed" in r.getMessage() for r in caplog.records)
    assert len(tasks) == 1
    await tasks.close()
    assert len(tasks) == 0


def test_objects_by_condition_are_counted_from_the_reported_statuses() -> None:
    statuses: list[dict[str, Any]] = [
        {"conditions": [{"type": "Ready", "status": "True"}]},
        {"conditions": [{"type": "Ready", "status": "False"}, {"type": "Stalled", "status": "True"}]},
        {"conditions": [{"type": "Ready", "status": "True"}]},
    ]
    metrics.OBJECTS.track("TestKind", lambda: statuses)
    text = generate_latest(metrics.REGISTRY).decode()
    assert 'strata_operator_objects{condition="Ready",kind="TestKind",status="True"} 2.0' in text
    assert 'strata_operator_objects{condition="Stalled",kind="TestKind",status="True"} 1.0' in text


def test_log_lines_are_json_with_the_object_and_redacted_extras() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("test.operator.json")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        ref = {"kind": "AgentDeployment", "namespace": "ns", "name": "a", "uid": "u"}
        logger.warning("rendered %s", "a", extra={"k8s_ref": ref, "k8s_skip": False, "api_token": "t0ps3cret",
                                                   "attempt": 2})
        try:
            raise ValueError("bad")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert (first["level"], first["logger"], first["msg"]) == ("warning", "test.operator.json", "rendered a")
    assert first["object"] == {"kind": "AgentDeployment", "namespace": "ns", "name": "a"}
    assert first["api_token"] == "[redacted]" and first["attempt"] == 2 and "k8s_skip" not in first
    assert isinstance(first["ts"], float)
    assert second["level"] == "error" and "ValueError: bad" in second["exc"]


def test_kopf_watches_no_secrets_unless_asked_for_labelled_ones() -> None:
    registry = kopf.OperatorRegistry()
    register(registry, OperatorSettings())
    selectors = [*registry._watching.get_all_selectors(), *registry._indexing.get_all_selectors()]
    plurals = {s.plural or s.any_name for s in selectors}
    assert "agentdeployments" in plurals and "networkpolicies" in plurals
    assert "secrets" not in plurals, "kopf would list and watch every Secret of the cluster"


class RecordingController:
    """Stands in for the Controller: what it last read of each dependency, and what it reconciled."""

    def __init__(self, uses: dict[tuple[str, str], dict[tuple[str, str], str | None]]) -> None:
        self.uses = uses
        self.reconciled: list[str] = []

    def depends_on(self, key: tuple[str, str], what: tuple[str, str], version: str | None) -> bool:
        used = self.uses.get(key, {})
        return what in used and used[what] != version

    async def reconcile_agent(self, body: dict[str, Any], *_: Any, **__: Any) -> Any:
        from strata_operator.controller import Outcome

        self.reconciled.append(body["metadata"]["name"])
        return Outcome()


async def test_a_labelled_secret_event_re_renders_only_the_agents_that_read_another_version() -> None:
    from strata_operator.handlers import Indexes, Operator, on_secret

    op = Operator(OperatorSettings(secret_watch_selector="strata.dev/watch=true"))
    controller = RecordingController({("ns", "a"): {("Secret", "openai"): "7"},
                                      ("ns", "b"): {("Secret", "openai"): "9"}})
    op.controller = controller  # type: ignore[assignment]
    body = {"metadata": {"name": "?", "namespace": "ns"}}
    op.indexes = Indexes(agents={("ns", n): [{**body, "metadata": {**body["metadata"], "name": n}}] for n in "abc"},
                         agents_by_ref={("ns", "Secret", "openai"): ["a", "b"]}, cache={}, routing={}, owned={})
    on_secret(op, "MODIFIED", {"metadata": {"namespace": "ns", "name": "openai", "resourceVersion": "9"}})
    on_secret(op, "MODIFIED", {"metadata": {"namespace": "ns", "name": "unrelated", "resourceVersion": "3"}})
    await asyncio.sleep(0.05)
    assert controller.reconciled == ["a"], "b already read version 9; c does not use the Secret"
    await op.event_work.close()


class ForbiddenSecretsKube:
    """An API that refuses every Secret read (no RoleBinding in the namespace) and records statuses."""

    def __init__(self) -> None:
        self.statuses: list[dict[str, Any]] = []

    async def secret_data(self, namespace: str, name: str) -> Any:
        from strata_operator.k8s import Forbidden

        raise Forbidden(403, "GET", f"v1/secrets/{name}", "forbidden")

    async def patch_status(self, api_version: str, kind: str, namespace: str, name: str,
                           status: dict[str, Any]) -> None:
        self.statuses.append(status)


async def test_a_secret_the_operator_may_not_read_stalls_with_a_reason_and_is_retried() -> None:
    from strata_operator.controller import Controller

    kube = ForbiddenSecretsKube()
    body = {"metadata": {"name": "a", "namespace": "ns", "uid": "u", "generation": 3},
            "spec": {"apiKeysSecretRef": {"name": "keys"}}, "status": {}}
    outcome = await Controller(kube).reconcile_agent(body, lambda _: None, lambda _: None,  # type: ignore[arg-type]
                                                     lambda *_: [])
    assert outcome.error is not None and outcome.error.reason == "SecretForbidden" and outcome.retry
    [status] = kube.statuses
    assert status["observedGeneration"] == 3
    [stalled] = [c for c in status["conditions"] if c["type"] == "Stalled"]
    assert stalled["reason"] == "SecretForbidden" and "'keys'" in stalled["message"]


def test_kopf_retries_its_own_requests_for_as_long_as_the_api_server_is_away() -> None:
    # kopf's default (1, 1, 2, 3, 5, 8, 13, 21) gave up after 54 s: a peering keep-alive that gives
    # up once is never restarted. Each request iterates the schedule afresh, and it never ends.
    backoffs = EndlessBackoffs()
    assert not isinstance(backoffs, Sized)  # kopf then counts attempts without a total
    assert list(itertools.islice(backoffs, 12)) == [1, 1, 2, 3, 5, 8, 13, 21, 30, 30, 30, 30]
    assert list(itertools.islice(backoffs, 3)) == [1, 1, 2]
    assert sum(itertools.islice(backoffs, 4000)) > 24 * 3600  # a day away, still retrying
