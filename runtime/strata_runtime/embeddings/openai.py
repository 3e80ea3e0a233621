"""Any OpenAI-compatible `/v1/embeddings` endpoint (TEI, vLLM, Ollama, OpenAI).

Every call has a deadline, and after a failure the endpoint is skipped for a short
cool-down: a dead embedding endpoint must cost callers a cache miss, not seconds per
request (without a deadline, requests to a dead endpoint were seen to hang for 685 s).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Sequence

import httpx
import numpy as np
import numpy.typing as npt

from strata_runtime.embeddings.contract import EmbeddingUnavailable


class OpenAIEmbedder:
    def __init__(self, *, base_url: str, model: str, api_key: str | None = None, timeout_seconds: float = 2.0,
                 dimensions: int | None = None, cooldown_seconds: float = 5.0, max_batch: int = 256):
        self.name = model
        self.dimension = dimensions or 0  # learnt from the first response when not configured
        self._dimensions_param = dimensions
        self.timeout_seconds = timeout_seconds
        self.cooldown_seconds = cooldown_seconds
        self.max_batch = max_batch
        self._down_until = 0.0
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), headers=headers,
            timeout=httpx.Timeout(timeout_seconds, connect=min(1.0, timeout_seconds)),
        )

    async def start(self) -> None:
        return None

    async def embed(self, texts: Sequence[str], *, background: bool = False) -> npt.NDArray[np.float32]:
        # `background` changes nothing here: the endpoint has its own queue, and its own deadline applies.
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        if time.monotonic() < self._down_until:
            raise EmbeddingUnavailable("embedding endpoint is cooling down after a failure")
        parts = [await self._embed_batch(list(texts[i:i + self.max_batch]))
                 for i in range(0, len(texts), self.max_batch)]
        return np.concatenate(parts, axis=0)

    async def _embed_batch(self, texts: list[str]) -> npt.NDArray[np.float32]:
        payload: dict[str, object] = {"model": self.name, "input": texts, "encoding_format": "base64"}
        if self._dimensions_param:
            payload["dimensions"] = self._dimensions_param
        try:
            response = await self._client.post("/embeddings", json=payload)
        except httpx.HTTPError as e:
            self._down_until = time.monotonic() + self.cooldown_seconds
            raise EmbeddingUnavailable(f"embedding endpoint unreachable: {type(e).__name__}") from e
        if response.status_code != 200:
            self._down_until = time.monotonic() + self.cooldown_seconds
            raise EmbeddingUnavailable(f"embedding endpoint answered HTTP {response.status_code}")
        try:
            data = sorted(response.json()["data"], key=lambda d: d["index"])
            rows = [
                np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4")
                if isinstance(d["embedding"], str) else np.asarray(d["embedding"], dtype=np.float32)
                for d in data
            ]
            matrix = np.vstack(rows).astype(np.float32)
        except (KeyError, TypeError, ValueError) as e:
            raise EmbeddingUnavailable("embedding endpoint returned a malformed body") from e
        if matrix.shape[0] != len(texts):
            raise EmbeddingUnavailable("embedding endpoint returned the wrong number of vectors")
        if self.dimension and matrix.shape[1] != self.dimension:
            raise EmbeddingUnavailable(f"embedding dimension changed to {matrix.shape[1]}")
        self.dimension = int(matrix.shape[1])
        norms = np.clip(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12, None)
        result: npt.NDArray[np.float32] = (matrix / norms).astype(np.float32)
        return result

    async def close(self) -> None:
        await self._client.aclose()
