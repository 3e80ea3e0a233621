"""Usage and cost accounting: per-day Redis hashes, write-behind, aggregated on read."""

from strata_runtime.usage.recorder import UsageEvent, UsageQuery, UsageRecorder, token_count

__all__ = ["UsageEvent", "UsageQuery", "UsageRecorder", "token_count"]
