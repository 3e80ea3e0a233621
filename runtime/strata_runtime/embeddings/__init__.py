"""Text embeddings behind one small interface (local MiniLM in numpy, or an OpenAI-compatible API)."""

from strata_runtime.embeddings.contract import Embedder, EmbeddingUnavailable

__all__ = ["Embedder", "EmbeddingUnavailable"]
