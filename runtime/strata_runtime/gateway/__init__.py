"""The LLM gateway: logical models → providers, retries, limits, cache, usage."""
