"""`/api/v1/query`, `/api/v1/sessions`, `/internal/agent-memory/*` against a real runtime process."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos.conftest import memory_runtime_config, services_env
from tests.support.fixtures import UpstreamServer
from tests.support.runtime_process import RuntimeProcess

pytestmark = pytest.mark.e2e

KEYS = {"acme": "key-acme-123", "globex": "key-globex-456"}
INTERNAL = "internal-token-789"


@pytest.fixture
def runtime(tmp_path: Path, openai_upstream: UpstreamServer) -> Iterator[RuntimeProcess]:
    redis_url, _ = services_env()
    agents = [{"id": "support", "tenant": t, "model": "gpt-4o-mini", "systemPrompt": f"{t} support"} for t in KEYS]
    config = memory_runtime_config(
        tmp_path, openai_upstream, redis_url=redis_url, prefix=f"e2e{uuid.uuid4().hex[:8]}", agents=agents,
        auth={"mode": "apiKey", "apiKeys": [{"tenant": t, "keyEnv": f"KEY_{t.upper()}"} for t in KEYS],
              "internalTokenEnv": "INTERNAL_TOKEN"})
    env = {"STRATA_TEST_UPSTREAM_KEY": "k", "INTERNAL_TOKEN": INTERNAL,
           **{f"KEY_{t.upper()}": k for t, k in KEYS.items()}}
    process = RuntimeProcess(config, tmp_path, env=env).start()
    try:
        yield process
    finally:
        process.stop()


def _auth(tenant: str) -> dict[str, str]:
    return {"authorization": f"Bearer {KEYS[tenant]}"}


def test_a_turn_answers_with_the_agent_and_its_md5_config_hash(runtime: RuntimeProcess) -> None:
    sid = f"s-{uuid.uuid4().hex[:6]}"
    status, body = runtime.request("POST", "/api/v1/query", {"message": "hello there", "session_id": sid,
                                                             "chatbot_id": "support"}, headers=_auth("acme"))
    assert status == 200, body
    assert body["message"] == "echo: hello there" and body["status"] == "completed"
    assert body["agent_id"] == "support" and len(body["config_hash"]) == 32
    stale = hashlib.md5(b"old config", usedforsecurity=False).hexdigest()
    status, again = runtime.request("POST", "/api/v1/query", {"message": "again", "session_id": sid,
                                                              "chatbot_id": "support", "md5_checksum": stale},
                                    headers=_auth("acme"))
    assert status == 200 and again["config_hash"] == body["config_hash"]
    status, history = runtime.get(f"/api/v1/sessions/{sid}", headers=_auth("acme"))
    assert [t["content"] for t in history["turns"]] == ["hello there", "echo: hello there", "again", "echo: again"]


def test_tenant_b_cannot_read_delete_or_claim_tenant_a_session(runtime: RuntimeProcess) -> None:
    sid = f"s-{uuid.uuid4().hex[:6]}"
    runtime.request("POST", "/api/v1/query", {"message": "secret plan", "session_id": sid, "chatbot_id": "support"},
                    headers=_auth("acme"))
    assert runtime.get(f"/api/v1/sessions/{sid}", headers=_auth("globex"))[0] == 404
    assert runtime.request("DELETE", f"/api/v1/sessions/{sid}", headers=_auth("globex"))[0] == 404
    status, body = runtime.request("POST", "/api/v1/query", {"message": "x", "session_id": sid,
                                                             "chatbot_id": "support", "tenant_id": "acme"},
                                   headers=_auth("globex"))
    assert status == 403 and body["error"]["code"] == "forbidden"
    status, body = runtime.request("POST", "/api/v1/query", {"message": "x", "session_id": sid, "stream": True,
                                                             "chatbot_id": "support"},
                                   headers={**_auth("globex"), "Last-Event-ID": "1:0"})
    assert status == 404
    status, history = runtime.get(f"/api/v1/sessions/{sid}", headers=_auth("acme"))
    assert status == 200 and [t["content"] for t in history["turns"]] == ["secret plan", "echo: secret plan"]
    assert runtime.request("DELETE", f"/api/v1/sessions/{sid}", headers=_auth("acme"))[0] == 200
    assert runtime.get(f"/api/v1/sessions/{sid}", headers=_auth("acme"))[0] == 404


def test_agent_memories_are_scoped_by_tenant_and_agent(runtime: RuntimeProcess) -> None:
    internal = {"x-strata-internal-token": INTERNAL}
    status, stored = runtime.request("POST", "/internal/agent-memory/store", {
        "agent_id": "support", "tenant_id": "acme", "kind": "kb", "content": "refunds take five working days"},
        headers=internal)
    assert status == 200 and stored["ok"] is True
    again = runtime.request("POST", "/internal/agent-memory/store", {
        "agent_id": "support", "tenant_id": "acme", "kind": "kb", "content": "refunds take five working days"},
        headers=internal)[1]
    assert again["id"] == stored["id"], "storing the same item twice is one row"
    query = {"agent_id": "support", "query": "how long do refunds take", "limit": 5}
    status, found = runtime.request("POST", "/internal/agent-memory/query", {**query, "tenant_id": "acme"},
                                    headers=internal)
    assert status == 200 and [i["id"] for i in found["items"]] == [stored["id"]]
    assert found["items"][0]["kind"] == "kb" and found["items"][0]["meta"]["source"] == "api"
    assert runtime.request("POST", "/internal/agent-memory/query", {**query, "tenant_id": "globex"},
                           headers=internal)[1]["items"] == []
    assert runtime.request("POST", "/internal/agent-memory/query", {**query, "tenant_id": "acme"},
                           headers=_auth("acme"))[0] in (401, 403)
    status, summary = runtime.request("POST", "/internal/agent-memory/summarize", {
        "agent_id": "support", "tenant_id": "acme", "content": ["a", "b"], "store": True}, headers=internal)
    assert status == 200 and summary["stored"] is True and summary["summary"].startswith("echo:")


@pytest.mark.parametrize(("body", "headers", "status", "code"), [
    ({"session_id": "s1", "chatbot_id": "support"}, {}, 422, "validation_failed"),
    ({"message": "hi", "session_id": "bad id!", "chatbot_id": "support"}, {}, 422, "validation_failed"),
    ({"message": "hi", "session_id": "s1", "chatbot_id": "nobody"}, {}, 404, "not_found"),
    ({"message": "hi", "session_id": "s1", "chatbot_id": "support", "md5_checksum": "xyz"}, {}, 422,
     "validation_failed"),
    ({"message": "hi", "session_id": "s1", "chatbot_id": "support", "stream": True}, {"Last-Event-ID": "junk"},
     400, "bad_request"),
])
def test_bad_input_is_a_clear_error_and_stores_nothing(runtime: RuntimeProcess, body: dict[str, object],
                                                        headers: dict[str, str], status: int, code: str) -> None:
    got, error = runtime.request("POST", "/api/v1/query", body, headers={**_auth("acme"), **headers})
    assert got == status, error
    assert error["error"]["code"] == code
    assert runtime.get("/api/v1/sessions/s1", headers=_auth("acme"))[0] == 404


def test_a_stream_resumed_with_last_event_id_continues_without_repeating(runtime: RuntimeProcess,
                                                                       openai_upstream: UpstreamServer) -> None:
    import urllib.request

    openai_upstream.control(chunks=6)
    sid = f"s-{uuid.uuid4().hex[:6]}"
    body = json.dumps({"message": "one two three four five six", "session_id": sid, "chatbot_id": "support",
                       "stream": True}).encode()

    def stream(last: str | None) -> list[tuple[str | None, str, dict[str, object]]]:
        headers = {"content-type": "application/json", **_auth("acme"), **({"Last-Event-ID": last} if last else {})}
        req = urllib.request.Request(runtime.base_url + "/api/v1/query", data=body, headers=headers, method="POST")
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw = resp.read().decode()
        events = []
        for block in raw.strip().split("\n\n"):
            fields = dict(line.split(": ", 1) for line in block.splitlines())
            events.append((fields.get("id"), fields["event"], json.loads(fields["data"])))
        return events

    full = stream(None)
    chunks = [e for e in full if e[1] == "chunk"]
    assert len(chunks) == 6 and full[-1][1] == "done"
    rest = stream(chunks[2][0])
    assert [e[0] for e in rest] == [c[0] for c in chunks[3:]] + [full[-1][0]]
    assert "".join(str(c[2]["delta"]) for c in chunks[:3] + [e for e in rest if e[1] == "chunk"]) == \
        "echo: one two three four five six"
    assert len(runtime.get(f"/api/v1/sessions/{sid}", headers=_auth("acme"))[1]["turns"]) == 2

    # A client that lost the stream right after `start` resumes from the id that event carried
    # (a generic SSE client sends the last id it saw): the whole answer, and still one turn.
    start_id = full[0][0]
    assert full[0][1] == "start" and start_id == f"{full[0][2]['turn_seq']}:-1"
    again = stream(start_id)
    assert [e[0] for e in again] == [c[0] for c in chunks] + [full[-1][0]]
    assert len(runtime.get(f"/api/v1/sessions/{sid}", headers=_auth("acme"))[1]["turns"]) == 2
