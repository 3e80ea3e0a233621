"""The `http` executor: one HTTP request per call, behind the SSRF guard.

* The target is a URL template: `{name}` placeholders are filled from the arguments (URL-quoted)
  and removed from them; the rest is the JSON body (POST, PUT, PATCH) or the query (GET, DELETE).
* Every request carries `Idempotency-Key: <call id>`, the same for retries and for a call
  re-sent after a runtime died, so a tool that honours it runs the call once.
* Retries (connection failures, timeouts of one attempt, 5xx) only for idempotent calls: GET,
  HEAD, PUT, DELETE, OPTIONS, or a tool marked `idempotent`; all within the call's deadline.
* Redirects are followed by hand (at most 5), each target checked by the SSRF guard again.
* The response body is read up to `max_result_bytes`; beyond it the call fails. A 2xx body must
  be JSON (an empty body is `null`).
"""

from __future__ import annotations

import asyncio
import logging
import string
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urljoin, urlsplit, urlunsplit

import httpx
import orjson

from strata_runtime.tools.cascade import CHAIN_HEADER, DEPTH_HEADER
from strata_runtime.tools.contract import CallContext, ErrorCode, ExecutorKind, ToolOutcome, ToolSpec
from strata_runtime.tools.ssrf import SsrfRefused, resolve_checked

log = logging.getLogger("strata.tools")

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
MAX_REDIRECTS = 5
ATTEMPTS = 3


class _Retryable(Exception):
    def __init__(self, outcome: ToolOutcome):
        super().__init__(outcome.error.message if outcome.error else "")
        self.outcome = outcome


def fill_template(template: str, args: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The URL with `{name}` placeholders filled, and the arguments not used by it."""
    names = [field for _, field, _, _ in string.Formatter().parse(template) if field]
    rest = dict(args)
    values = {}
    for name in names:
        if name not in rest:
            raise ValueError(f"the URL needs argument {name!r}")
        values[name] = quote(str(rest.pop(name)), safe="")
    return template.format(**values), rest


def _query(args: dict[str, Any]) -> dict[str, str]:
    return {k: v if isinstance(v, str) else orjson.dumps(v).decode() for k, v in args.items()}


class HttpExecutor:
    kind: ExecutorKind = "http"

    def __init__(self, env: Mapping[str, str], client: httpx.AsyncClient | None = None):
        self.env = env
        self.client = client or httpx.AsyncClient(
            follow_redirects=False, trust_env=False, limits=httpx.Limits(max_connections=200)
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    async def call(self, tool: ToolSpec, args: dict[str, Any], ctx: CallContext) -> ToolOutcome:
        budget = ctx.remaining(tool.timeout_seconds)
        try:
            async with asyncio.timeout(budget):
                return await self._attempts(tool, args, ctx)
        except TimeoutError:
            return ToolOutcome.failure(ErrorCode.TIMEOUT, f"no answer within {budget:.3g}s")

    async def _attempts(self, tool: ToolSpec, args: dict[str, Any], ctx: CallContext) -> ToolOutcome:
        method = str(tool.options.get("method", "POST")).upper()
        retries = ATTEMPTS if (method in IDEMPOTENT_METHODS or tool.idempotent) else 1
        try:
            url, rest = fill_template(tool.target, args)
        except (ValueError, KeyError, IndexError) as e:
            return ToolOutcome.failure(ErrorCode.INVALID_ARGUMENTS, str(e))
        outcome = ToolOutcome.failure(ErrorCode.INTERNAL, "no attempt made")
        for attempt in range(retries):
            try:
                return await self._once(tool, method, url, rest, ctx)
            except _Retryable as e:
                outcome = e.outcome
                if attempt + 1 < retries:
                    await asyncio.sleep(0.05 * 2**attempt)
        return outcome

    async def _once(self, tool: ToolSpec, method: str, url: str, args: dict[str, Any], ctx: CallContext) -> ToolOutcome:
        headers = {"idempotency-key": ctx.call_id, "accept": "application/json", DEPTH_HEADER: str(ctx.depth)}
        if ctx.chain:
            headers[CHAIN_HEADER] = ctx.chain
        for name, var in dict(tool.options.get("headers_env", {})).items():
            value = self.env.get(var)
            if value is None:
                return ToolOutcome.failure(
                    ErrorCode.EXECUTOR_UNAVAILABLE, f"header {name} needs environment variable {var}, which is not set"
                )
            headers[name] = value
        with_body = method in ("POST", "PUT", "PATCH")
        for _ in range(MAX_REDIRECTS + 1):
            try:
                response = await self._send(tool, method, url, headers, args, with_body=with_body)
            except SsrfRefused as e:
                return ToolOutcome.failure(ErrorCode.SSRF_BLOCKED, f"refused: {e}")
            except (httpx.TransportError, ConnectionError) as e:
                raise _Retryable(
                    ToolOutcome.failure(ErrorCode.UNREACHABLE, f"cannot reach the tool: {type(e).__name__}")
                ) from e
            status, location, body = response
            if status in (301, 302, 303, 307, 308) and location:
                url = urljoin(url, location)
                if status == 303 or (status in (301, 302) and method == "POST"):
                    method, with_body = "GET", False
                continue
            return self._outcome(status, body)
        return ToolOutcome.failure(ErrorCode.UPSTREAM_ERROR, f"more than {MAX_REDIRECTS} redirects")

    async def _send(
        self, tool: ToolSpec, method: str, url: str, headers: dict[str, str], args: dict[str, Any], *, with_body: bool
    ) -> tuple[int, str | None, bytes | None]:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SsrfRefused(f"only http(s) URLs are allowed, not {parts.scheme or 'none'}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        resolved = await resolve_checked(parts.hostname, port, tool.options.get("allow_hosts", frozenset()))
        address = f"[{resolved.address}]" if ":" in resolved.address else resolved.address
        direct = urlunsplit((parts.scheme, f"{address}:{port}", parts.path or "/", parts.query, ""))
        request_headers = {**headers, "host": parts.netloc.rsplit("@", 1)[-1]}
        extensions = {"sni_hostname": parts.hostname} if parts.scheme == "https" else {}
        request = self.client.build_request(
            method,
            direct,
            headers=request_headers,
            extensions=extensions,
            content=orjson.dumps(args) if with_body else None,
            params=None if with_body else _query(args),
        )
        if with_body:
            request.headers["content-type"] = "application/json"
        response = await self.client.send(request, stream=True)
        try:
            if 300 <= response.status_code < 400:
                return response.status_code, response.headers.get("location"), None
            body = await _read_capped(response, tool.max_result_bytes)
        finally:
            await response.aclose()
        return response.status_code, None, body

    def _outcome(self, status: int, body: bytes | None) -> ToolOutcome:
        if body is None:
            return ToolOutcome.failure(ErrorCode.RESULT_TOO_LARGE, "the response is larger than the tool's cap")
        if status >= 500:
            raise _Retryable(ToolOutcome.failure(ErrorCode.UPSTREAM_ERROR, f"the tool answered HTTP {status}"))
        if status >= 400:
            return ToolOutcome.failure(
                ErrorCode.UPSTREAM_ERROR, f"the tool answered HTTP {status}: {body[:200].decode(errors='replace')}"
            )
        if not body.strip():
            return ToolOutcome.success(None)
        try:
            return ToolOutcome.success(orjson.loads(body))
        except orjson.JSONDecodeError:
            return ToolOutcome.failure(ErrorCode.INVALID_RESULT, "the tool's response is not valid JSON")


async def _read_capped(response: httpx.Response, cap: int) -> bytes | None:
    declared = response.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > cap:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > cap:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
