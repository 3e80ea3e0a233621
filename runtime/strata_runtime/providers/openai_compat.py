"""An OpenAI-compatible upstream (OpenAI, DeepSeek, Ollama, vLLM, ...) over one pooled client."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson

from strata_runtime.config import ModelConfig
from strata_runtime.providers.base import JSON, ProviderError
from strata_runtime.providers.http import HttpError, HttpPool, HttpResponse, HttpTimeout, Timeouts

DEFAULT_BASE_URLS = {
    "openai": "https://api.openai.com/v1",
    "deepseek": "https://api.deepseek.com/v1",
    "ollama": "http://127.0.0.1:11434/v1",
    "vllm": "http://127.0.0.1:8000/v1",
    "anthropic": "https://api.anthropic.com/v1",
}


class OpenAICompatProvider:
    def __init__(self, config: ModelConfig, api_key: str | None, pool: HttpPool | None = None):
        self.name: str = config.provider
        self.model = config.upstream_model or config.name
        base_url = config.base_url or DEFAULT_BASE_URLS.get(config.provider)
        if not base_url:
            raise ValueError(f"model {config.name!r}: provider {config.provider!r} needs baseUrl")
        self.pool = pool or HttpPool(base_url, max_connections=config.max_connections)
        self.timeouts = Timeouts(
            connect=config.connect_timeout_seconds,
            read=config.read_timeout_seconds or config.timeout_seconds,
            total=config.timeout_seconds,
        )
        headers = b"Content-Type: application/json\r\nAccept: application/json\r\nUser-Agent: strata-gateway\r\n"
        if api_key:
            headers += b"Authorization: Bearer " + api_key.encode() + b"\r\n"
        self._headers = headers
        self._chat_path = self.pool.path("/chat/completions")
        self._embeddings_path = self.pool.path("/embeddings")

    async def chat(self, body: JSON) -> JSON:
        response = await self._send(self._chat_path, body, stream=False)
        return _decode(response.body, self.name)

    async def chat_stream(self, body: JSON) -> AsyncIterator[JSON]:
        response = await self._send(self._chat_path, body, stream=True)
        content_type = response.header(b"content-type") or b""
        if not content_type.startswith(b"text/event-stream"):
            # Some servers answer a stream request with one JSON body (e.g. on error paths).
            body_bytes = await response.read()
            return _single(_decode(body_bytes, self.name))
        return self._events(response)

    async def embeddings(self, body: JSON) -> JSON:
        response = await self._send(self._embeddings_path, body, stream=False)
        return _decode(response.body, self.name)

    async def _send(self, path: str, body: JSON, *, stream: bool) -> HttpResponse:
        payload = orjson.dumps(body)
        try:
            response = await self.pool.request("POST", path, self._headers, payload, self.timeouts, stream=stream)
        except HttpTimeout as e:
            raise ProviderError(f"{self.name} upstream timed out: {e}", timeout=True) from e
        except HttpError as e:
            raise ProviderError(f"{self.name} upstream unreachable: {e}") from e
        if response.status != 200:
            raw = response.body if not stream else await _read_bounded(response)
            raise _status_error(self.name, response, raw)
        return response

    async def _events(self, response: HttpResponse) -> AsyncIterator[JSON]:
        buffer = b""
        try:
            async for piece in response.iter_bytes():
                buffer += piece
                if b"\r" in buffer:
                    buffer = buffer.replace(b"\r\n", b"\n")
                while True:
                    end = buffer.find(b"\n\n")
                    if end < 0:
                        break
                    event, buffer = buffer[:end], buffer[end + 2:]
                    data = _event_data(event)
                    if data is None:
                        continue
                    if data == b"[DONE]":
                        return
                    try:
                        chunk = orjson.loads(data)
                    except orjson.JSONDecodeError as e:
                        raise ProviderError(f"{self.name} upstream sent an unparsable stream event") from e
                    if isinstance(chunk, dict) and "error" in chunk and "choices" not in chunk:
                        raise ProviderError(f"{self.name} upstream reported an error mid-stream", status=502)
                    yield chunk
        except HttpTimeout as e:
            raise ProviderError(f"{self.name} upstream stream timed out: {e}", timeout=True) from e
        except HttpError as e:
            raise ProviderError(f"{self.name} upstream stream broke: {e}") from e
        finally:
            await response.aclose()

    async def close(self) -> None:
        await self.pool.aclose()


def _event_data(event: bytes) -> bytes | None:
    if event.startswith(b"data: ") and b"\n" not in event:
        return event[6:]
    lines = [line[5:].lstrip(b" ") for line in event.split(b"\n") if line.startswith(b"data:")]
    return b"\n".join(lines) if lines else None


async def _single(chunk: JSON) -> AsyncIterator[JSON]:
    yield chunk


async def _read_bounded(response: HttpResponse, limit: int = 65536) -> bytes:
    parts: list[bytes] = []
    size = 0
    async for piece in response.iter_bytes():
        parts.append(piece)
        size += len(piece)
        if size >= limit:
            break
    await response.aclose()
    return b"".join(parts)


def _decode(raw: bytes, provider: str) -> JSON:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise ProviderError(f"{provider} upstream returned invalid JSON", status=502) from e
    if not isinstance(data, dict):
        raise ProviderError(f"{provider} upstream returned a non-object body", status=502)
    return data


def _status_error(provider: str, response: HttpResponse, raw: bytes) -> ProviderError:
    """Describe a non-200 answer by status and the upstream's error code only (its message may quote keys)."""
    code: str | None = None
    try:
        data = orjson.loads(raw)
        error = data.get("error") if isinstance(data, dict) else None
        if isinstance(error, dict):
            value = error.get("code") or error.get("type")
            code = str(value)[:64] if value else None
    except orjson.JSONDecodeError:
        pass
    retry_after: float | None = None
    header = response.header(b"retry-after")
    if header:
        try:
            retry_after = max(0.0, float(header))
        except ValueError:
            retry_after = None
    message = f"{provider} upstream answered HTTP {response.status}" + (f" ({code})" if code else "")
    return ProviderError(message, status=response.status, retry_after=retry_after, upstream_code=code)
