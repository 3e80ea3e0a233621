"""Pure gateway logic: backoff, circuit breaker, in-memory token buckets, usage aggregation."""

from __future__ import annotations

import datetime as dt
import random

from strata_runtime.gateway.resilience import MAX_RETRY_AFTER, CircuitBreaker, backoff_delay
from strata_runtime.gateway.tokens import estimate_request_tokens
from strata_runtime.ratelimit.limiter import _Bucket, _MemoryBuckets
from strata_runtime.usage.recorder import UsageQuery, _aggregate


def test_full_jitter_backoff_stays_within_the_exponential_ceiling() -> None:
    rng = random.Random(1)
    for attempt in range(6):
        delays = [backoff_delay(attempt, rng=rng) for _ in range(200)]
        assert all(0 <= d <= min(2.0, 0.1 * 2**attempt) for d in delays)
        assert len(set(delays)) > 100  # jittered, not a fixed sleep


def test_a_bounded_retry_after_wins_and_an_unbounded_one_is_ignored() -> None:
    assert backoff_delay(0, 1.5) == 1.5
    assert backoff_delay(0, MAX_RETRY_AFTER + 100) <= 0.1


def test_the_breaker_opens_at_the_threshold_and_lets_one_probe_through_when_half_open() -> None:
    breaker = CircuitBreaker(failure_threshold=2, open_seconds=10)
    breaker.record_failure()
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state == "open" and not breaker.allow()
    breaker.opened_at -= 11
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # only one at a time
    breaker.record_failure()
    assert breaker.state == "open"


def test_memory_buckets_refuse_what_exceeds_the_budget_and_refund_on_reconcile() -> None:
    now = [0.0]
    buckets = _MemoryBuckets(clock=lambda: now[0])
    take = [_Bucket("t", capacity=100, cost=60, scope="tenant")]
    assert buckets.acquire(take) == (0.0, 0)
    wait, _ = buckets.acquire(take)
    assert wait > 0
    buckets.reconcile(take, 50)  # the call used 10 of the 60 reserved
    assert buckets.acquire(take) == (0.0, 0)


def test_the_token_estimate_covers_the_prompt_and_the_completion_allowance() -> None:
    body = {"messages": [{"role": "user", "content": "one two three"}], "max_tokens": 20}
    assert estimate_request_tokens(body) >= 4 + 20


def test_usage_fields_split_correctly_even_when_the_model_name_has_colons() -> None:
    raw = {"2026-01-02": {"acme:bot:llama3:8b:requests": 2.0, "acme:bot:llama3:8b:prompt_tokens": 7.0,
                          "other:-:m:requests": 5.0}}
    q = UsageQuery(start=dt.date(2026, 1, 1), end=dt.date(2026, 1, 3), tenant="acme")
    report = _aggregate(raw, q)
    assert report["items"] == [{**report["items"][0], "tenant": "acme", "agent": "bot", "model": "llama3:8b"}]
    assert report["totals"]["requests"] == 2 and report["totals"]["prompt_tokens"] == 7
