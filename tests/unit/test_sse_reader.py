"""The upstream SSE splitter: a piece that is one whole event takes a short cut with the same result."""

from __future__ import annotations

import pytest

from strata_runtime.providers.openai_compat import _EventTooLarge, _SseReader

pytestmark = pytest.mark.unit

ONE = b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n'


def _whole(pieces: list[bytes]) -> list[bytes]:
    reader = _SseReader(1 << 20)
    out = [data for piece in pieces for data in reader.feed(piece)]
    return out + reader.close()


def _byte_by_byte(stream: bytes) -> list[bytes]:
    return _whole([stream[i:i + 1] for i in range(len(stream))])


@pytest.mark.parametrize("stream", [
    ONE,
    b"data: \n\n",
    b"data: [DONE]\n\n",
    ONE + ONE,
    b'data: {"a":1}\r\n\r\n',
    b"data: first\ndata: second\n\n",
    b": keep-alive\n\n" + ONE,
    b"event: message\ndata: x\n\n",
    b"data:no-space\n\n",
    b"data: tail without blank line",
    b"data: bare\rdata: cr\r\rdata: next\r\r",
    b"event: x\r\nid: 1\rdata: mixed\n\r\n" + ONE,
    b"data: ends in cr\r",
])
def test_an_event_reads_the_same_whole_or_byte_by_byte(stream: bytes) -> None:
    assert _whole([stream]) == _byte_by_byte(stream)


def test_the_short_cut_keeps_what_an_earlier_piece_left() -> None:
    reader = _SseReader(1 << 20)
    assert reader.feed(b'data: {"a"') == []
    assert reader.feed(b":1}\n\n") == [b'{"a":1}']  # completes the buffered event, not a new one
    assert reader.feed(ONE) == [ONE[6:-2]]
    assert reader.buffer == b""


def test_an_unterminated_event_over_the_limit_is_refused() -> None:
    reader = _SseReader(16)
    with pytest.raises(_EventTooLarge):
        reader.feed(b"data: " + b"x" * 32)


def test_bare_cr_and_crlf_line_ends_read_like_lf() -> None:
    """SSE lines may end in CRLF, LF or a bare CR; a CR at the end of a read may be half a CRLF."""
    assert _whole([b"data: a\r", b"\r", b"data: b\r\n", b"\r\n", b"data: c\r\rdata: d\r"]) == [b"a", b"b", b"c", b"d"]
    assert _whole([b"data: first\r", b"\ndata: second\r\n\r\n"]) == [b"first\nsecond"]
