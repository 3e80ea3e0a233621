"""Build the configured embedder (the one place that reads `config.embedder`)."""

from __future__ import annotations

from collections.abc import Mapping

from strata_runtime.config.runtime import EmbedderConfig
from strata_runtime.embeddings.local import LocalEmbedder
from strata_runtime.embeddings.openai import OpenAIEmbedder

EmbedderImpl = LocalEmbedder | OpenAIEmbedder


def build_embedder(config: EmbedderConfig, env: Mapping[str, str]) -> EmbedderImpl:
    """The config model has already checked that the provider can serve the model."""
    if config.provider == "local":
        return LocalEmbedder(model=config.model, timeout_seconds=config.timeout_seconds)
    assert config.base_url is not None
    api_key = (env.get(config.api_key_env) or "").strip() or None if config.api_key_env else None
    return OpenAIEmbedder(base_url=config.base_url, model=config.model, api_key=api_key,
                          timeout_seconds=config.timeout_seconds, dimensions=config.dimensions)
