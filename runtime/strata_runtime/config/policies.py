"""CachePolicy and RoutingPolicy specs: the same shapes in the runtime file and in the CRDs."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from strata_runtime.config.base import ConfigModel


class ExactCacheConfig(ConfigModel):
    enabled: bool = True
    ttl_seconds: int = Field(3600, ge=1, le=30 * 86400)


class SemanticCacheConfig(ConfigModel):
    enabled: bool = True
    threshold: float = Field(
        0.93, ge=0.5, le=1.0,
        description="Minimum cosine similarity of the last user message. 0.93 is calibrated for the local "
        "all-MiniLM-L6-v2 on banking77 (bench/cache.py calibrate: 0.84% wrong hits with the hit guard, "
        "vs 1.01% at 0.92); recalibrate for another embedder.",
    )
    ttl_seconds: int = Field(86400, ge=1, le=30 * 86400)
    max_temperature: float = Field(
        0.0, ge=0.0, le=2.0, description="Requests hotter than this never use the semantic cache."
    )


class CachePolicySpec(ConfigModel):
    enabled: bool = True
    backend: Literal["auto", "redis", "memory"] = "auto"
    scope: Literal["tenant", "user", "shared"] = Field(
        "tenant",
        description="Who may share entries: a tenant (default), a single user, or everyone "
        "(shared is only for public, non-personal content).",
    )
    exact: ExactCacheConfig = ExactCacheConfig()
    semantic: SemanticCacheConfig = SemanticCacheConfig()
    max_entries: int = Field(10000, ge=1, le=10_000_000)
    max_bytes: int = Field(256 * 1024 * 1024, ge=1024, description="Memory backend size bound.")
    streaming: bool = Field(True, description="Cache streamed responses and replay them as SSE.")


class RoutingRule(ConfigModel):
    pattern: str = Field(min_length=1, description="Python regular expression, matched case-insensitively.")
    route: Literal["direct", "skill", "classifier"] = "direct"
    skill: str | None = None

    @model_validator(mode="after")
    def _skill_route_names_a_skill(self) -> RoutingRule:
        import re

        try:
            re.compile(self.pattern)
        except re.error as e:
            raise ValueError(f"pattern is not a valid regular expression: {e}") from e
        if self.route == "skill" and not self.skill:
            raise ValueError("route 'skill' needs the skill name")
        return self


class HeuristicRoutingConfig(ConfigModel):
    low_complexity_below: float = Field(0.3, ge=0.0, le=1.0)


class SemanticRoutingConfig(ConfigModel):
    enabled: bool = True
    high: float = Field(0.85, ge=0.0, le=1.0, description="At or above: route straight to the skill.")
    low: float = Field(0.6, ge=0.0, le=1.0, description="Below: no hint is passed to the classifier.")

    @model_validator(mode="after")
    def _low_not_above_high(self) -> SemanticRoutingConfig:
        if self.low > self.high:
            raise ValueError("semantic.low must not exceed semantic.high")
        return self


class ClassifierConfig(ConfigModel):
    model: str | None = Field(None, description="Logical model used for Layer 2 classification.")


class RoutingPolicySpec(ConfigModel):
    rules: list[RoutingRule] = []
    heuristic: HeuristicRoutingConfig = HeuristicRoutingConfig()
    semantic: SemanticRoutingConfig = SemanticRoutingConfig()
    classifier: ClassifierConfig = ClassifierConfig()
