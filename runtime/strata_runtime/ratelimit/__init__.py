"""Per-agent and per-tenant request and token budgets, shared by every pod through Redis."""

from strata_runtime.ratelimit.limiter import RateLimiter, Reservation

__all__ = ["RateLimiter", "Reservation"]
