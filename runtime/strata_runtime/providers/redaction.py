"""The upstream API key out of every answer, however an upstream hides or cuts it.

An upstream that echoes the key it was sent (a debugging proxy, an echo server, a model fed its
own headers, a hostile endpoint) can write it:

* plainly, in one body or one SSE event, cut by TCP anywhere: the provider checks a buffered body
  whole and an SSE event once the reader has reassembled it, so TCP reads never matter
  (`scrub_bytes`, one substring search per event);
* behind JSON escapes (`\\u0073k-...`, `\\/` for `/`): the bytes no longer contain the key, the
  decoded string does. Only `\\u` and `\\/` can stand for a character of a key made of plain
  printable characters, so an event holding neither is done; one holding either is
  re-serialised once (orjson, compact, unescaped) and searched again (`may_hide`, `unescaped`);
* across the events of a stream: `delta.content` "...sk-pr" then "oj-..." holds the key only
  once the client joins the deltas. `StreamCarry` holds back the end of each joined text that
  could still become the key (its longest suffix that is a proper prefix of the key) and puts
  it in front of the next piece of the same text, where the key is replaced whole; what was
  held goes out with the choice's `finish_reason` chunk (or a last chunk of its own) once no
  key can follow. Ordinary text ends in a key prefix rarely and briefly (an "s" before "sk-"),
  so nearly every chunk passes as it came, with its own bytes; a fixed window of len(key)-1
  characters would have delayed (and re-serialised) every chunk of every stream instead.

Joined texts: a choice's `content`, `reasoning_content`, `reasoning`, `refusal`, each tool call's
`function.arguments` (by tool-call index) and the legacy `function_call.arguments`, per choice
index, and the `token` texts of a choice's `logprobs.content` and `logprobs.refusal` (a key echoed
with logprobs on is spread over token objects, so those are searched joined even within one event).
"""

from __future__ import annotations

from typing import Any

import orjson

MIN_SECRET = 8  # a shorter "key" would redact ordinary words
REDACTED = "[redacted]"
_REDACTED = REDACTED.encode()
# The delta fields whose pieces a client concatenates into one text.
TEXT_FIELDS = ("content", "reasoning_content", "reasoning", "refusal")

Slot = tuple[int, str, int]  # (choice index, field, tool-call index or -1)


class KeyRedactor:
    """One provider's key, with what finding it in raw JSON bytes takes."""

    __slots__ = ("_mark", "_mark2", "json_bytes", "key")

    def __init__(self, key: str) -> None:
        self.key = key
        self.json_bytes = orjson.dumps(key)[1:-1]  # the key inside a JSON string, as orjson writes it
        # The escapes that can stand for one of the key's characters: for a key of printable
        # characters other than `"` and `\\`, only a `\\uXXXX` or a `\\/`; for any other key, any escape.
        plain = self.json_bytes == key.encode()
        self._mark, self._mark2 = (b"\\u", b"\\/") if plain else (b"\\", b"\\")

    def parse(self, raw: bytes) -> tuple[bytes, Any]:
        """(raw, parsed) of a JSON text, the key out of both; orjson.JSONDecodeError when it is not JSON."""
        scrubbed = self.scrub_bytes(raw)
        try:
            parsed = orjson.loads(scrubbed)
        except orjson.JSONDecodeError:
            if scrubbed is raw:
                raise
            # The key's bytes matched across an escape (`\\n` + a key starting with "n"): decode first.
            return self.unescaped(raw, orjson.loads(raw))
        if self.may_hide(scrubbed):
            return self.unescaped(scrubbed, parsed)
        return scrubbed, parsed

    def scrub_bytes(self, raw: bytes) -> bytes:
        """`raw` with the key, where written plainly, replaced."""
        return raw.replace(self.json_bytes, _REDACTED) if self.json_bytes in raw else raw

    def may_hide(self, raw: bytes) -> bool:
        """Whether `raw` has an escape that could spell part of the key (then `unescaped` must look)."""
        # 92 is "\\": one memchr settles the usual event, which holds no escape at all.
        return 92 in raw and (self._mark in raw or self._mark2 in raw)

    def unescaped(self, raw: bytes, parsed: Any) -> tuple[bytes, Any]:
        """(raw, parsed) without a key that only the decoded strings show: unchanged when there is none."""
        try:
            plain = orjson.dumps(parsed)
        except orjson.JSONEncodeError:
            plain = b""
        if plain and self.json_bytes not in plain:
            return raw, parsed
        if plain:
            redacted = plain.replace(self.json_bytes, _REDACTED)
            try:
                return redacted, orjson.loads(redacted)
            except orjson.JSONDecodeError:
                pass  # the key's bytes matched across an escape (`\\n` + "n..."): redact the strings instead
        cleaned = self.redact_strings(parsed)
        return orjson.dumps(cleaned), cleaned

    def redact_strings(self, value: Any) -> Any:
        """`value` with the key replaced in every string (object keys included)."""
        if isinstance(value, str):
            return value.replace(self.key, REDACTED) if self.key in value else value
        if isinstance(value, list):
            return [self.redact_strings(v) for v in value]
        if isinstance(value, dict):
            return {self.redact_strings(k): self.redact_strings(v) for k, v in value.items()}
        return value

    def stream(self) -> StreamCarry:
        return StreamCarry(self.key)


class StreamCarry:
    """One stream's held-back text ends (see the module docstring); `chunk` for each parsed chunk in order."""

    __slots__ = ("first", "held", "key", "last", "longest")

    def __init__(self, key: str) -> None:
        self.key = key
        self.first = key[0]
        self.longest = len(key) - 1  # the longest proper prefix
        self.held: dict[Slot, str] = {}
        self.last: dict[str, Any] = {}  # the last chunk seen: the model of a chunk `flush` writes

    def chunk(self, chunk: dict[str, Any]) -> bool:
        """Redact `chunk`'s joined texts in place, with what earlier chunks held back; True when it changed."""
        choices = chunk.get("choices")
        if not choices:
            return False
        self.last = chunk
        changed = False
        for choice in choices:
            index = choice.get("index", 0)
            index = index if type(index) is int else -1
            delta = choice.get("delta")
            if isinstance(delta, dict):
                changed = self._delta(index, delta) or changed
            logprobs = choice.get("logprobs")
            if logprobs and isinstance(logprobs, dict):
                changed = self._logprobs(index, logprobs) or changed
            if self.held and choice.get("finish_reason"):
                changed = self._release(index, choice) or changed
        return changed

    def _delta(self, index: int, delta: dict[str, Any]) -> bool:
        changed = False
        for field in TEXT_FIELDS:
            text = delta.get(field)
            if type(text) is str:
                out = self._text((index, field, -1), text)
                if out is not text:
                    delta[field] = out
                    changed = True
        calls = delta.get("tool_calls")
        if calls and isinstance(calls, list):
            changed = self._tool_calls(index, calls) or changed
        legacy = delta.get("function_call")  # the functions API before tools
        if legacy and isinstance(legacy, dict) and type(legacy.get("arguments")) is str:
            out = self._text((index, "function_call", -1), legacy["arguments"])
            if out is not legacy["arguments"]:
                legacy["arguments"] = out
                changed = True
        return changed

    def _logprobs(self, index: int, logprobs: dict[str, Any]) -> bool:
        changed = False
        for field in ("content", "refusal"):
            tokens = logprobs.get(field)
            if tokens and isinstance(tokens, list):
                changed = self._tokens((index, "logprobs." + field, -1), logprobs, field, tokens) or changed
        return changed

    def flush(self) -> dict[str, Any] | None:
        """A last chunk with whatever is still held (the stream ended without those choices' finish_reason)."""
        if not self.held:
            return None
        indices = sorted({slot[0] for slot in self.held})
        choices: list[dict[str, Any]] = []
        for index in indices:
            choice: dict[str, Any] = {"index": max(index, 0), "delta": {}, "finish_reason": None}
            self._release(index, choice)
            choices.append(choice)
        chunk: dict[str, Any] = {k: self.last[k] for k in ("id", "object", "created", "model") if k in self.last}
        chunk.setdefault("object", "chat.completion.chunk")
        chunk["choices"] = choices
        return chunk

    def _text(self, slot: Slot, text: str, *, whole: bool = False) -> str:
        """The part of `held + text` that can go out now; the rest is held for `slot`. `whole`: `text`
        itself may hold the key (joined here from pieces the event's bytes kept apart)."""
        held = self.held.pop(slot, None) if self.held else None
        out = text
        if held is not None:
            out = held + text
        if (held is not None or whole) and self.key in out:
            out = out.replace(self.key, REDACTED)
        n = len(out)
        key, first = self.key, self.first
        pos = out.find(first, n - self.longest if n > self.longest else 0)
        while pos >= 0:
            if key.startswith(out[pos:]):
                self.held[slot] = out[pos:]
                return out[:pos]
            pos = out.find(first, pos + 1)
        return out

    def _tool_calls(self, index: int, calls: list[Any]) -> bool:
        changed = False
        for position, call in enumerate(calls):
            function = call.get("function") if isinstance(call, dict) else None
            arguments = function.get("arguments") if isinstance(function, dict) else None
            if type(arguments) is not str:
                continue
            assert isinstance(call, dict) and isinstance(function, dict)
            number = call.get("index", position)
            out = self._text((index, "tool_calls", number if type(number) is int else position), arguments)
            if out is not arguments:
                function["arguments"] = out
                changed = True
        return changed

    def _tokens(self, slot: Slot, logprobs: dict[str, Any], field: str, tokens: list[Any]) -> bool:
        """A choice's logprobs tokens, whose texts a client may join like the deltas: when the key (or
        the start of it) is among them, the chunk's tokens become one token of the text that can go out
        (their logprobs summed), the rest held like any text."""
        texts = [t.get("token") if isinstance(t, dict) else None for t in tokens]
        if not all(type(text) is str for text in texts):
            return False
        joined = "".join(texts)  # type: ignore[arg-type]
        out = self._text(slot, joined, whole=True)
        if out == joined:
            return False
        logprob = sum(t["logprob"] for t in tokens if type(t.get("logprob")) in (int, float))
        logprobs[field] = [_token(out, logprob)] if out else []
        return True

    def _release(self, index: int, choice: dict[str, Any]) -> bool:
        """Append everything held for choice `index` to `choice`'s delta."""
        slots = [slot for slot in self.held if slot[0] == index]
        if not slots:
            return False
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            delta = choice["delta"] = {}
        for slot in slots:
            held = self.held.pop(slot)
            _, field, number = slot
            if field == "tool_calls":
                calls = delta.get("tool_calls")
                if not isinstance(calls, list):
                    calls = delta["tool_calls"] = []
                calls.append({"index": number, "function": {"arguments": held}})
            elif field.startswith("logprobs."):
                logprobs = choice.get("logprobs")
                if not isinstance(logprobs, dict):
                    logprobs = choice["logprobs"] = {}
                tokens = logprobs.get(field[9:])
                if not isinstance(tokens, list):
                    tokens = logprobs[field[9:]] = []
                tokens.append(_token(held, 0.0))
            elif field == "function_call":
                legacy = delta.get("function_call")
                if not isinstance(legacy, dict):
                    legacy = delta["function_call"] = {}
                arguments = legacy.get("arguments")
                legacy["arguments"] = (arguments if isinstance(arguments, str) else "") + held
            else:
                existing = delta.get(field)
                if isinstance(existing, list):  # content parts
                    existing.append({"type": "text", "text": held})
                else:
                    delta[field] = (existing if isinstance(existing, str) else "") + held
        return True


def _token(text: str, logprob: float) -> dict[str, Any]:
    return {"token": text, "logprob": logprob, "bytes": list(text.encode()), "top_logprobs": []}
