"""The usage counters and how a field names one: `{tenant}:{agent}:{model}:{metric}`.

The same field names are used by the Redis day hashes, the in-process day table and the usage
history. Tenant and agent ids cannot contain ':' (callers validate them) and the metric is the last
segment, so a field splits unambiguously even when a model name has ':' in it.
"""

from __future__ import annotations

INT_METRICS = ("requests", "errors", "prompt_tokens", "completion_tokens", "cache_hits",
               "saved_prompt_tokens", "saved_completion_tokens")
FLOAT_METRICS = ("cost", "saved_cost", "latency_ms_sum")
METRICS = (*INT_METRICS, *FLOAT_METRICS)


def split_field(field: str) -> tuple[str, str, str, str] | None:
    """(tenant, agent, model, metric) of a field, or None when it is not a usage counter."""
    head, _, metric = field.rpartition(":")
    tenant, _, rest = head.partition(":")
    agent, _, model = rest.partition(":")
    if metric not in METRICS or not model:
        return None
    return tenant, agent, model, metric
