"""Build the configured embedder (the one place that reads `config.embedder`)."""

from __future__ import annotations

from collections.abc import Mapping

from strata_runtime.config.runtime import EmbedderConfig
from strata_runtime.embeddings.local import LocalMiniLMEmbedder
from strata_runtime.embeddings.openai import OpenAIEmbedder

EmbedderImpl = LocalMiniLMEmbedder | OpenAIEmbedder


def build_embedder(config: EmbedderConfig, env: Mapping[str, str]) -> EmbedderImpl:
    if config.provider == "local":
        if config.model not in ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"):
            raise ValueError(f"embedder.model {config.model!r}: the local provider only ships all-MiniLM-L6-v2")
        return LocalMiniLMEmbedder(timeout_seconds=config.timeout_seconds)
    if not config.base_url:
        raise ValueError("embedder.provider is openai but embedder.baseUrl is not set")
    api_key = env.get(config.api_key_env) if config.api_key_env else None
    return OpenAIEmbedder(base_url=config.base_url, model=config.model, api_key=api_key,
                          timeout_seconds=config.timeout_seconds, dimensions=config.dimensions)
