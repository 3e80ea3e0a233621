"""The `http` executor: one HTTP request per call, behind the SSRF guard.

* The target is a URL template: `{name}` placeholders are filled from the arguments (URL-quoted)
  and removed from them; the rest is the JSON body (POST, PUT, PATCH) or the query (GET, DELETE).
* Every request carries `Idempotency-Key: <call id>`, the same for retries and for a call
  re-sent after a runtime died, so a tool that honours it runs the call once.
* Retries (connection failures, timeouts of one attempt, 5xx, 429) only for idempotent calls: GET,
  HEAD, PUT, DELETE, OPTIONS, or a tool marked `idempotent`; at most 3 attempts, all within the
  call's deadline. A 429/503 `Retry-After` (seconds or a date) is waited out when it fits in
  that deadline; one beyond it ends the call at once (the error says how long the tool asked for).
* Redirects are followed by hand (at most 5), each target checked by the SSRF guard again; the
  headers filled from the environment (the tool's secrets) go only to the tool's own origin,
  never to another host, port or scheme a redirect names.
* The response body is read up to `max_result_bytes`; beyond it the call fails. A 2xx body must
  be JSON (an empty body is `null`); a body the server mis-encoded is `invalid_result`.
* A tool that echoes a secret it was sent (a value of `headers_env`) does not pass it on: in its
  answer and in error messages it becomes `[redacted]` (as the gateway does with API keys).
"""

from __future__ import annotations

import asyncio
import logging
import string
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import SplitResult, quote, urlencode, urljoin, urlsplit, urlunsplit

import httpx
import orjson

from strata_runtime.providers.redaction import MIN_SECRET
from strata_runtime.providers.upstream_errors import retry_after_seconds, scrub
from strata_runtime.tools.cascade import CHAIN_HEADER, DEPTH_HEADER
from strata_runtime.tools.contract import CallContext, ErrorCode, ExecutorKind, ToolOutcome, ToolSpec
from strata_runtime.tools.ssrf import SsrfRefused, resolve_checked

log = logging.getLogger("strata.tools")

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
MAX_REDIRECTS = 5
ATTEMPTS = 3
REDIRECTS = frozenset({301, 302, 303, 307, 308})
_REDACTED = b"[redacted]"


class _Retryable(Exception):
    def __init__(self, outcome: ToolOutcome, retry_after: float | None = None):
        super().__init__(outcome.error.message if outcome.error else "")
        self.outcome = outcome
        self.retry_after = retry_after  # seconds the tool asked us to wait (Retry-After), if it said


class _Secrets:
    """The secret values a tool was sent; what it answers is scrubbed of them. Values under 8 characters
    are not secrets worth the name and are left alone (as `scrub` does): replacing "1" or "on" everywhere
    would mangle every answer."""

    def __init__(self, values: list[str]):
        self.values = [v for v in values if len(v) >= MIN_SECRET]
        forms = set()
        for value in self.values:
            forms.add(value.encode())
            forms.add(orjson.dumps(value)[1:-1])  # as it appears inside a JSON string
        self._forms = sorted(forms, key=len, reverse=True)

    def bytes(self, raw: bytes) -> bytes:
        for form in self._forms:
            if form in raw:
                raw = raw.replace(form, _REDACTED)
        return raw

    def text(self, text: str) -> str:
        return scrub(text, self.values)


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
        deadline = time.monotonic() + budget
        try:
            async with asyncio.timeout(budget):
                return await self._attempts(tool, args, ctx, deadline)
        except TimeoutError:
            return ToolOutcome.failure(ErrorCode.TIMEOUT, f"no answer within {budget:.3g}s")

    async def _attempts(self, tool: ToolSpec, args: dict[str, Any], ctx: CallContext, deadline: float) -> ToolOutcome:
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
                    delay = max(0.05 * 2**attempt, e.retry_after or 0.0)
                    if time.monotonic() + delay >= deadline:
                        return outcome  # the tool asked for more time than the call has left
                    await asyncio.sleep(delay)
        return outcome

    async def _once(self, tool: ToolSpec, method: str, url: str, args: dict[str, Any], ctx: CallContext) -> ToolOutcome:
        headers = {"idempotency-key": ctx.call_id, "accept": "application/json", DEPTH_HEADER: str(ctx.depth)}
        if ctx.chain:
            headers[CHAIN_HEADER] = ctx.chain
        secret_headers: dict[str, str] = {}
        for name, var in dict(tool.options.get("headers_env", {})).items():
            value = self.env.get(var)
            if value is None:
                return ToolOutcome.failure(
                    ErrorCode.EXECUTOR_UNAVAILABLE, f"header {name} needs environment variable {var}, which is not set"
                )
            secret_headers[name] = value
        secrets = _Secrets(list(secret_headers.values()))
        try:
            origin = _origin(url)
        except ValueError:
            return ToolOutcome.failure(ErrorCode.INVALID_ARGUMENTS, "the tool's URL is invalid")
        with_body = method in ("POST", "PUT", "PATCH")
        if not with_body and args:  # the arguments join the query the URL has; a redirect's URL is taken as it is
            url = _with_query(url, _query(args))
        for _ in range(MAX_REDIRECTS + 1):
            sent = {**headers, **secret_headers} if _origin(url) == origin else headers
            response = await self._hop(tool, method, url, sent, args, secrets=secrets, with_body=with_body)
            if isinstance(response, ToolOutcome):
                return response
            status, location, body, retry_after = response
            if status in REDIRECTS and location:
                try:
                    url = urljoin(url, location)
                    _origin(url)  # a Location whose port or host does not parse
                except ValueError:
                    return ToolOutcome.failure(ErrorCode.UPSTREAM_ERROR,
                                               f"the tool answered HTTP {status} with an invalid Location")
                if status == 303 or (status in (301, 302) and method == "POST"):
                    method, with_body = "GET", False
                continue
            return self._outcome(status, body, secrets, retry_after)
        return ToolOutcome.failure(ErrorCode.UPSTREAM_ERROR, f"more than {MAX_REDIRECTS} redirects")

    async def _hop(
        self, tool: ToolSpec, method: str, url: str, headers: dict[str, str], args: dict[str, Any], *,
        secrets: _Secrets, with_body: bool,
    ) -> tuple[int, str | None, bytes | None, float | None] | ToolOutcome:
        """One request of the call (`_send`), or the call's outcome when it failed in a way not retried."""
        try:
            return await self._send(tool, method, url, headers, args, with_body=with_body)
        except httpx.InvalidURL:
            return ToolOutcome.failure(ErrorCode.UPSTREAM_ERROR, "the tool redirected to an invalid URL")
        except SsrfRefused as e:
            return ToolOutcome.failure(ErrorCode.SSRF_BLOCKED, secrets.text(f"refused: {e}"))
        except httpx.DecodingError:
            return ToolOutcome.failure(ErrorCode.INVALID_RESULT,
                                       "the tool's response body does not decode (its Content-Encoding is broken)")
        except (httpx.TransportError, ConnectionError) as e:
            if isinstance(e, httpx.RemoteProtocolError) and str(e).startswith("Invalid URL in location header"):
                # httpx parses the Location of every redirect, followed or not
                return ToolOutcome.failure(ErrorCode.UPSTREAM_ERROR,
                                           "the tool answered a redirect with an invalid Location")
            raise _Retryable(
                ToolOutcome.failure(ErrorCode.UNREACHABLE, f"cannot reach the tool: {type(e).__name__}")
            ) from e

    async def _send(
        self, tool: ToolSpec, method: str, url: str, headers: dict[str, str], args: dict[str, Any], *, with_body: bool
    ) -> tuple[int, str | None, bytes | None, float | None]:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SsrfRefused(f"only http(s) URLs are allowed, not {parts.scheme or 'none'}")
        port = _port(parts)
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
        )
        if with_body:
            request.headers["content-type"] = "application/json"
        response = await self.client.send(request, stream=True)
        try:
            status = response.status_code
            if status in REDIRECTS and response.headers.get("location"):
                return status, response.headers.get("location"), None, None
            body = await _read_capped(response, tool.max_result_bytes)
        finally:
            await response.aclose()
        return status, None, body, retry_after_seconds(response.headers.get("retry-after"))

    def _outcome(self, status: int, body: bytes | None, secrets: _Secrets, retry_after: float | None) -> ToolOutcome:
        if body is None:
            return ToolOutcome.failure(ErrorCode.RESULT_TOO_LARGE, "the response is larger than the tool's cap")
        body = secrets.bytes(body)
        if status >= 300:
            later = f" (it asks to retry after {retry_after:.0f}s)" if retry_after is not None else ""
            text = body[:200].decode(errors="replace").strip() if status < 500 else ""
            message = secrets.text(f"the tool answered HTTP {status}{later}" + (f": {text}" if text else ""))
            failure = ToolOutcome.failure(ErrorCode.UPSTREAM_ERROR, message)
            if status >= 500 or status == 429:
                raise _Retryable(failure, retry_after)
            return failure
        if not body.strip():
            return ToolOutcome.success(None)
        try:
            return ToolOutcome.success(orjson.loads(body))
        except orjson.JSONDecodeError:
            return ToolOutcome.failure(ErrorCode.INVALID_RESULT, "the tool's response is not valid JSON")


def _with_query(url: str, params: dict[str, str]) -> str:
    parts = urlsplit(url)
    query = "&".join(q for q in (parts.query, urlencode(params)) if q)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


def _port(parts: SplitResult) -> int:
    """The URL's port (the scheme's default when it names none); ValueError when it is not a port."""
    return parts.port or (443 if parts.scheme == "https" else 80)


def _origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a URL; ValueError when its host or port does not parse."""
    parts = urlsplit(url)
    return parts.scheme.lower(), (parts.hostname or "").lower(), _port(parts)


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
