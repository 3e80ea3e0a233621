"""An upstream stream's events: one loop for the body's events and the one the body ended without its
blank line, and the body iterator closed where the stream ends (not left to the loop's finaliser)."""

from __future__ import annotations

from collections.abc import AsyncGenerator

import pytest

from strata_runtime.config import ModelConfig
from strata_runtime.providers import ProviderError
from strata_runtime.providers.openai_compat import OpenAICompatProvider

pytestmark = pytest.mark.unit

CONTENT = b'data: {"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}\n\n'
FINISH = b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}'


class _Body:
    """A streamed response whose iterator says whether it was closed, and when the response was."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces
        self.iterator_closed = False
        self.response_closed = False

    async def iter_bytes(self) -> AsyncGenerator[bytes, None]:
        try:
            for piece in self.pieces:
                yield piece
        finally:
            self.iterator_closed = True

    async def aclose(self) -> None:
        self.response_closed = True


def _provider() -> OpenAICompatProvider:
    return OpenAICompatProvider(ModelConfig.model_validate({"name": "m", "provider": "openai",
                                                            "baseUrl": "http://127.0.0.1:9/v1"}), None)


async def test_the_body_iterator_is_closed_when_done_arrives_not_left_to_the_loop() -> None:
    body = _Body([CONTENT, FINISH + b"\n\n", b"data: [DONE]\n\n", b"data: after the end\n\n"])
    chunks = [chunk async for chunk in _provider()._events(body)]  # type: ignore[arg-type]
    assert [c["choices"][0]["delta"] for c in chunks] == [{"content": "hi"}, {}]
    assert body.iterator_closed and body.response_closed  # at once, by the stream itself


async def test_the_last_event_without_its_blank_line_goes_through_the_same_checks() -> None:
    body = _Body([CONTENT, FINISH])  # a body that ends right after the finish event's data line
    chunks = [chunk async for chunk in _provider()._events(body)]  # type: ignore[arg-type]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert body.iterator_closed and body.response_closed


async def test_a_body_that_ends_without_done_or_a_finish_reason_is_incomplete() -> None:
    body = _Body([CONTENT, CONTENT[:-2]])
    with pytest.raises(ProviderError) as raised:
        _ = [chunk async for chunk in _provider()._events(body)]  # type: ignore[arg-type]
    assert raised.value.reason == "incomplete_stream"
    assert body.iterator_closed and body.response_closed


async def test_an_error_event_in_the_unterminated_tail_is_still_an_error() -> None:
    body = _Body([CONTENT, b'data: {"error":{"message":"overloaded","type":"server_error"}}'])
    with pytest.raises(ProviderError) as raised:
        _ = [chunk async for chunk in _provider()._events(body)]  # type: ignore[arg-type]
    assert raised.value.reason == "stream_error"
    assert body.iterator_closed
