"""Text embeddings behind one small interface (local MiniLM in numpy, or an OpenAI-compatible API)."""

from strata_runtime.embeddings.contract import Embedder, EmbeddingUnavailable
from strata_runtime.embeddings.factory import build_embedder
from strata_runtime.embeddings.local import LocalMiniLMEmbedder
from strata_runtime.embeddings.openai import OpenAIEmbedder

__all__ = ["Embedder", "EmbeddingUnavailable", "LocalMiniLMEmbedder", "OpenAIEmbedder", "build_embedder"]
