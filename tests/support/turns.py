"""One whole conversation turn run in process: start it, read its events until `done`."""

from __future__ import annotations

from typing import NamedTuple

from strata_runtime.agents.conversation import Conversations


class Turn(NamedTuple):
    seq: int
    text: str
    chunks: int


async def run_turn(conv: Conversations, session_id: str, message: str, tenant: str = "acme") -> Turn:
    """Fails the test unless the turn's events are chunks ending with `done`."""
    started = await conv.start_turn(tenant=tenant, session_id=session_id, chatbot_id="support", message=message,
                                    md5_checksum=None, channel_id=None, request_id=None)
    chunks = 0
    async for event in conv.events(tenant, session_id, started.seq, 0):
        if event.kind == "done":
            return Turn(started.seq, event.text, chunks)
        assert event.kind == "chunk", event
        chunks += 1
    raise AssertionError("no done event")
