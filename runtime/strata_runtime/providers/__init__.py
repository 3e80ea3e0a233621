"""LLM upstreams: one OpenAI-compatible client per configured model, and the offline demo."""

from strata_runtime.providers.base import Provider, ProviderError, build_provider

__all__ = ["Provider", "ProviderError", "build_provider"]
