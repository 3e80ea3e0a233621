"""The offline `demo` provider: answers locally and says so, for `make run` without any upstream.

It is not a model. Every answer starts with a label naming the demo provider, so nobody
mistakes it for a real completion; token counts are whitespace words (+1 per message).
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
import time
from collections.abc import AsyncIterator

from strata_runtime.messages import text_of
from strata_runtime.providers.base import JSON, ProviderError

LABEL = "[offline demo provider, not a real model]"
_ids = itertools.count(1)
_WORD = re.compile(r"\w+")
MAX_DEMO_DIMENSIONS = 4096  # above any real embedding model (text-embedding-3-large has 3072)


class DemoProvider:
    name = "demo"

    def __init__(self, model: str):
        self.model = model

    def _answer(self, body: JSON) -> tuple[str, JSON]:
        messages = body.get("messages") or []
        last = next((m for m in reversed(messages) if isinstance(m, dict) and m.get("role") in ("user", "tool")), None)
        said = text_of(last) if last else ""
        if last is not None and last.get("role") == "tool":
            content = f"{LABEL} The tool returned: {said}"
        else:
            content = f"{LABEL} This answer comes from the offline demo provider. You said: {said}"
        prompt = sum(len(text_of(m).split()) + 1 for m in messages)
        completion = len(content.split())
        usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
        return content, usage

    async def chat(self, body: JSON, *, deadline: float | None = None) -> JSON:
        content, usage = self._answer(body)
        return {
            "id": f"chatcmpl-demo-{next(_ids)}", "object": "chat.completion", "created": int(time.time()),
            "model": self.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": "stop", "logprobs": None}],
            "usage": usage,
        }

    async def chat_stream(self, body: JSON, *, deadline: float | None = None) -> AsyncIterator[JSON]:
        content, usage = self._answer(body)
        return self._chunks(content, usage, f"chatcmpl-demo-{next(_ids)}")

    async def _chunks(self, content: str, usage: JSON, cid: str) -> AsyncIterator[JSON]:
        created = int(time.time())

        def chunk(delta: JSON, finish: str | None = None) -> JSON:
            return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": self.model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

        yield chunk({"role": "assistant", "content": ""})
        words = content.split(" ")
        for i, word in enumerate(words):
            yield chunk({"content": word if i == 0 else " " + word})
        yield chunk({}, "stop")
        yield {"id": cid, "object": "chat.completion.chunk", "created": created, "model": self.model,
               "choices": [], "usage": usage}

    async def embeddings(self, body: JSON, *, deadline: float | None = None) -> JSON:
        raw = body.get("input")
        inputs = [raw] if isinstance(raw, str) else raw
        if not isinstance(inputs, list) or not inputs or not all(isinstance(x, str) for x in inputs):
            raise ProviderError("demo embeddings need a string or a list of strings", status=400)
        dim = int(body.get("dimensions") or 64)
        if not 1 <= dim <= MAX_DEMO_DIMENSIONS:  # the vector is allocated whole: a huge one is memory, not an answer
            raise ProviderError(f"demo embeddings have 1 to {MAX_DEMO_DIMENSIONS} dimensions", status=400)
        data = [{"object": "embedding", "index": i, "embedding": _bag_of_words(t, dim)} for i, t in enumerate(inputs)]
        tokens = sum(len(t.split()) for t in inputs)
        return {"object": "list", "data": data, "model": self.model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    async def close(self) -> None:
        return None


def _bag_of_words(text: str, dim: int) -> list[float]:
    vec = [0.0] * dim
    for word in _WORD.findall(text.lower()):
        digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
        vec[int.from_bytes(digest[:4], "little") % dim] += 1.0 if digest[4] & 1 else -1.0
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return [v / norm for v in vec]
