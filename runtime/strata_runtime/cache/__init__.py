"""The LLM response cache: exact and semantic, tenant-partitioned, single-flight."""
