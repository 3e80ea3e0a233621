"""Text embeddings behind one small interface (local multilingual-e5-small or MiniLM, or an OpenAI-compatible API)."""

from strata_runtime.embeddings.contract import Embedder, EmbedderBusy, EmbeddingUnavailable
from strata_runtime.embeddings.factory import build_embedder
from strata_runtime.embeddings.local import LocalEmbedder, LocalMiniLMEmbedder
from strata_runtime.embeddings.openai import OpenAIEmbedder

__all__ = ["Embedder", "EmbedderBusy", "EmbeddingUnavailable", "LocalEmbedder", "LocalMiniLMEmbedder",
           "OpenAIEmbedder", "build_embedder"]
