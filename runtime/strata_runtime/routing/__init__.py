"""Semantic routing: every query goes L0 rules → L1 complexity → L1.5 skill embeddings → L2 LLM."""
