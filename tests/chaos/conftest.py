"""Chaos fixtures: runtime processes on real Redis + Postgres, and an SSE client that resumes."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.fixtures import UpstreamServer
from tests.support.runtime_process import RuntimeProcess, embedded_config


def services_env() -> tuple[str, str]:
    redis_url = os.environ.get("STRATA_TEST_REDIS_URL")
    pg = os.environ.get("STRATA_TEST_POSTGRES_DSN")
    if not redis_url or not pg:
        pytest.fail("needs hack/services.sh up and its env (STRATA_TEST_REDIS_URL, STRATA_TEST_POSTGRES_DSN)")
    return redis_url, pg


def memory_runtime_config(tmp_path: Path, upstream: UpstreamServer, *, redis_url: str, prefix: str,
                          vectors: dict[str, Any] | None = None, memory: dict[str, Any] | None = None,
                          auth: dict[str, Any] | None = None,
                          agents: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return embedded_config(
        tmp_path,
        auth=auth or {"mode": "none"},
        stores={"redis": {"backend": "redis", "url": redis_url, "keyPrefix": prefix},
                "sql": {"backend": "postgresql", "dsnEnv": "STRATA_TEST_POSTGRES_DSN"},
                "vectors": vectors or {"backend": "memory"}},
        models=[{"name": "gpt-4o-mini", "provider": "openai", "baseUrl": upstream.base_url,
                 "apiKeyEnv": "STRATA_TEST_UPSTREAM_KEY", "maxRetries": 0, "timeoutSeconds": 30}],
        agents=agents or [{"id": "support", "tenant": "local", "model": "gpt-4o-mini", "systemPrompt": "Be brief."}],
        memory={"streamStaleSeconds": 1.0, **(memory or {})},
        cache={"enabled": False},
    )


def start_runtime(config: dict[str, Any], workdir: Path) -> RuntimeProcess:
    return RuntimeProcess(config, workdir, env={"STRATA_TEST_UPSTREAM_KEY": "test-key"}).start()


@dataclass
class StreamResult:
    """What one client saw of one answer, across every reconnection."""

    text: str = ""
    ids: list[str] = field(default_factory=list)
    turn_seq: int | None = None
    done: dict[str, Any] | None = None
    reconnects: int = 0
    tools: list[tuple[str, Any]] = field(default_factory=list)  # tool_call / tool_result / status events


class ResumingClient:
    """An SSE client that, when its connection breaks, resumes on another pod with Last-Event-ID."""

    def __init__(self, bases: list[str], headers: dict[str, str] | None = None):
        self.bases = bases
        self.headers = headers or {}
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=2.0))

    async def close(self) -> None:
        await self.http.aclose()

    async def _read(self, base: str, body: dict[str, Any], result: StreamResult, last_id: str | None) -> bool:
        headers = {**self.headers, **({"Last-Event-ID": last_id} if last_id else {})}
        async with self.http.stream("POST", f"{base}/api/v1/query", json=body, headers=headers) as resp:
            if resp.status_code == 204:
                return True
            if resp.status_code != 200:
                raise httpx.HTTPStatusError(f"status {resp.status_code}", request=resp.request, response=resp)
            event, data, event_id = "", "", None
            async for line in resp.aiter_lines():
                if line.startswith("id: "):
                    event_id = line[4:]
                elif line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    data = line[6:]
                elif line == "" and event:
                    self._apply(result, event, data, event_id)
                    if event in ("done", "error"):
                        return event == "done"
                    event, data, event_id = "", "", None
        return False

    @staticmethod
    def _apply(result: StreamResult, event: str, data: str, event_id: str | None) -> None:
        import json

        payload = json.loads(data)
        if event == "start":
            result.turn_seq = payload["turn_seq"]
        elif event == "chunk":
            assert event_id is not None
            result.ids.append(event_id)
            result.text += payload["delta"]
        elif event in ("tool_call", "tool_result", "status"):
            assert event_id is not None
            result.ids.append(event_id)
            result.tools.append((event, payload))
        elif event == "done":
            result.done = payload
        elif event == "error":
            raise AssertionError(f"stream error: {payload}")

    async def ask(self, body: dict[str, Any], alive: list[str], history: Any) -> StreamResult:
        """Send a new turn; on a broken connection resume on any live pod until the answer is done."""
        result = StreamResult()
        first = True
        for _attempt in range(40):
            base = random.choice(alive)
            try:
                if first:
                    first = False
                    if await self._read(base, body, result, None):
                        return result
                else:
                    if result.turn_seq is None:
                        # Never saw `start`: was the turn recorded before the pod died?
                        turns = (await history(base, body["session_id"]))["turns"]
                        users = [t for t in turns if t["role"] == "user" and t["content"] == body["message"]]
                        if not users:
                            first = True
                            continue
                        result.turn_seq = users[-1]["seq"] + 1
                    last = result.ids[-1] if result.ids else f"{result.turn_seq}:-1"  # as `start`'s id
                    result.reconnects += 1
                    if await self._read(base, body, result, last):
                        return result
            except (httpx.TransportError, httpx.HTTPStatusError):
                result.reconnects += 0
            import asyncio

            await asyncio.sleep(0.2)
        raise AssertionError(f"answer never completed: {result}")
