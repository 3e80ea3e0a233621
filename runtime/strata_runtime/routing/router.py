"""The router: L0 rules → L1 complexity → L1.5 skill embeddings → L2 LLM classifier, per agent.

L1 sends a low-complexity message to direct chat unless it shares a distinctive term with one of
the skills (`heuristic.skillTerms`); such a message goes on to L1.5 (and L2) like any other.

Everything derived from an agent's skills (compiled rules, L1's skill terms, the embedded skill index) is kept
per skill-set fingerprint, so it is computed when a skill set is first seen or changes (at
start for the configured agents), never per query. The embedder failing, missing its
deadline or returning NaN skips L1.5 (logged, counted); the classifier failing means direct
chat. Routing never fails a query.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from strata_runtime.config.agents import AgentConfig, SkillConfig
from strata_runtime.config.loading import canonical_json
from strata_runtime.config.policies import RoutingPolicySpec
from strata_runtime.embeddings.contract import Embedder, EmbeddingUnavailable
from strata_runtime.gateway.contract import CallContext, ChatGateway
from strata_runtime.metrics import Metrics
from strata_runtime.routing.classifier import AnswerCache, Classifier
from strata_runtime.routing.decision import RouteDecision
from strata_runtime.routing.heuristic import Complexity
from strata_runtime.routing.index import Index, Vectors, build_index
from strata_runtime.routing.rules import CompiledRule, compile_rules, match_rules
from strata_runtime.routing.semantic import SemanticLayer, Zone, index_options
from strata_runtime.routing.terms import SkillTerms, Vocabulary

log = logging.getLogger("strata.routing")

MAX_EMBED_CHARS = 2000  # the start of a long message says what it is about; embedders truncate anyway
RETRY_BUILD_SECONDS = 30.0
MAX_SEEN = 4096  # skill lists remembered by identity (agent configs are replaced, not changed, on reload)


def fingerprint(data: object) -> str:
    return hashlib.sha256(canonical_json(data)).hexdigest()[:32]


@dataclass
class SkillPlan:
    """What one skill set needs at query time."""

    skills: tuple[SkillConfig, ...]
    fingerprint: str
    rules: list[CompiledRule]
    terms: Vocabulary | None = None  # L1's distinctive skill terms (None: not computed yet)
    index: Index | None = None
    building: asyncio.Task[Index] | None = None
    failed_at: float = field(default=-RETRY_BUILD_SECONDS)


class Router:
    def __init__(self, policy: RoutingPolicySpec, embedder: Embedder | None,
                 gateway_source: Callable[[], ChatGateway | None], metrics: Metrics | None = None, *,
                 agents: Callable[[], Sequence[AgentConfig]] = tuple):
        self.policy = policy
        self.policy_hash = fingerprint(policy.model_dump(mode="json", by_alias=True))
        self.embedder = embedder
        self._gateway_source = gateway_source
        self.metrics = metrics
        self.complexity = Complexity.from_config(policy.heuristic)
        self.skill_terms = SkillTerms(policy.heuristic.skill_terms)
        self.semantic = SemanticLayer(policy.semantic)
        self.classifier = Classifier(policy.classifier, AnswerCache(policy.classifier.cache_entries,
                                                                    policy.classifier.cache_ttl_seconds))
        self._plans: dict[str, SkillPlan] = {}
        self._seen: dict[int, tuple[Sequence[SkillConfig], SkillPlan]] = {}
        self._agents = agents
        self._preparing: asyncio.Task[None] | None = None

    # skill sets -------------------------------------------------------------------------------
    def plan(self, skills: Sequence[SkillConfig]) -> SkillPlan:
        seen = self._seen.get(id(skills))
        if seen is not None and seen[0] is skills:  # the same (frozen) agent config: no re-hashing per query
            return seen[1]
        key = fingerprint([s.model_dump(mode="json", by_alias=True) for s in skills])
        plan = self._plans.get(key)
        if plan is None:
            names = {s.name for s in skills}
            rules, problems = compile_rules(self.policy.rules, names)
            problems += [f"routing.semantic.skills[{i}] names unknown skill {t.name!r}; ignored"
                         for i, t in enumerate(self.policy.semantic.skills) if t.name not in names]
            for problem in problems:
                log.warning("routing policy problem", extra={"problem": problem})
            plan = SkillPlan(skills=tuple(skills), fingerprint=key, rules=rules)
            self._plans[key] = plan
        if len(self._seen) >= MAX_SEEN:
            self._seen.clear()
        self._seen[id(skills)] = (skills, plan)  # holding `skills` keeps its id from being reused
        return plan

    async def start(self) -> None:
        """Index the configured agents' skills in the background (queries never wait for all of them)."""
        self._preparing = asyncio.create_task(self.prepare(self._agents()), name="skill-index-prepare")

    async def close(self) -> None:
        tasks = [t for t in [self._preparing, *(p.building for p in self._plans.values())] if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task

    async def prepare(self, agents: Sequence[AgentConfig]) -> None:
        for agent in agents:
            plan = self.plan(agent.skills)
            if plan.terms is None and self._uses_terms():  # ~25 µs per text: off the event loop
                plan.terms = await asyncio.to_thread(self.skill_terms.vocabulary, plan.skills)
            if plan.skills and self.semantic.config.enabled:
                with contextlib.suppress(EmbeddingUnavailable, TimeoutError):
                    await self._index(plan, wait=None)

    def _start_build(self, plan: SkillPlan) -> asyncio.Task[Index]:
        assert self.embedder is not None
        plan.building = asyncio.create_task(
            build_index(plan.skills, self.embedder, **index_options(self.policy.semantic)), name="skill-index")
        return plan.building

    async def _index(self, plan: SkillPlan, *, wait: float | None) -> Index:
        if plan.index is not None:
            return plan.index
        task = plan.building
        if task is None:
            if time.monotonic() - plan.failed_at < RETRY_BUILD_SECONDS:
                raise EmbeddingUnavailable("the skill index failed to build recently; retried later")
            task = self._start_build(plan)
        try:
            index = await asyncio.wait_for(asyncio.shield(task), timeout=wait)
        except TimeoutError:
            raise
        except Exception as e:
            plan.building = None
            plan.failed_at = time.monotonic()
            log.warning("building the skill index failed", extra={"error": type(e).__name__})
            raise EmbeddingUnavailable(f"the skill index could not be built: {type(e).__name__}") from e
        plan.index, plan.building = index, None
        if index.unindexed:
            log.warning("skills without any text are not semantically routed",
                        extra={"skills": list(index.unindexed)[:20]})
        return index

    def _uses_terms(self) -> bool:
        return self.policy.heuristic.enabled and self.policy.heuristic.skill_terms.enabled

    def terms(self, plan: SkillPlan) -> Vocabulary:
        """L1's skill terms of a skill set; computed once (in `prepare` for the configured agents, else
        at the first low-complexity message of a skill set not seen before)."""
        if plan.terms is None:
            plan.terms = self.skill_terms.vocabulary(plan.skills) if self._uses_terms() else Vocabulary()
        return plan.terms

    def thresholds(self, skill: str | None) -> dict[str, float]:
        """The L1.5 thresholds in force for a skill (the policy's when it has none of its own)."""
        low, high = self.semantic.thresholds(skill) if skill else (self.policy.semantic.low, self.policy.semantic.high)
        return {"low": low, "high": high}

    # one message ------------------------------------------------------------------------------
    async def route(self, agent: AgentConfig, message: str, ctx: CallContext) -> RouteDecision:
        started = time.perf_counter()
        decision = await self._route(agent, message, ctx)
        if self.metrics is not None:
            self.metrics.routing_decisions.labels(decision.layer, decision.route).inc()
            self.metrics.routing_duration.labels(decision.layer).observe(time.perf_counter() - started)
        return decision

    async def _route(self, agent: AgentConfig, message: str, ctx: CallContext) -> RouteDecision:
        plan = self.plan(agent.skills)
        ruled = match_rules(plan.rules, message)
        if ruled is not None:
            return ruled
        if self.policy.heuristic.enabled:
            low, score, fired = self.complexity.is_low(message)
            # low, unless it shares a distinctive term with a skill (or its terms are in a script the
            # skills' are not, so terms cannot tell): then on to L1.5 like any request
            if low and self.skill_terms.reason_to_keep(message, self.terms(plan)) is None:
                return RouteDecision(route="direct", layer="L1", confidence=1.0 - score,
                                     reason=f"complexity {score:.2f} (features: {', '.join(fired) or 'none'})")
        if not plan.skills:
            return RouteDecision(route="direct", layer="L1", confidence=1.0, reason="the agent has no skills")
        zone = await self._semantic(plan, message)
        if zone is not None and zone.zone == "high":
            return RouteDecision(route="skill", layer="L1.5", skill=zone.skill, confidence=zone.score,
                                 candidates=zone.candidates, reason="similarity above high")
        hint = zone.skill if zone is not None and zone.zone == "hint" else None
        candidates = zone.candidates if zone is not None else ()
        if not self.policy.classifier.enabled:
            return RouteDecision(route="direct", layer="L1.5", confidence=zone.score if zone else 0.0, hint=hint,
                                 candidates=candidates, reason="classifier disabled")
        result = await self.classifier.classify(
            self._gateway_source(), model=self.policy.classifier.model or agent.model, skills=plan.skills,
            message=message, hint=hint, ctx=ctx, key=(self.policy_hash, plan.fingerprint, message))
        if self.metrics is not None:
            self.metrics.routing_classifier.labels(result.outcome).inc()
        failed = result.outcome not in ("ok", "cached")
        return RouteDecision(route="skill" if result.skill else "direct", layer="L2", skill=result.skill,
                             confidence=0.0 if failed else 1.0, hint=hint, candidates=candidates,
                             reason=f"classifier {result.outcome}")

    async def _semantic(self, plan: SkillPlan, message: str) -> Zone | None:
        config = self.semantic.config
        if not config.enabled or self.embedder is None:
            return None
        started = time.monotonic()
        try:
            index = await self._index(plan, wait=config.timeout_seconds)
            remaining = max(0.0, config.timeout_seconds - (time.monotonic() - started))
            async with asyncio.timeout(remaining):  # no extra task, unlike wait_for
                query = await self._embed(message)
        except Exception as e:  # the embedder's failure of any kind only skips this layer
            reason = "deadline" if isinstance(e, TimeoutError) else "embedder"
            log.warning("semantic routing skipped", extra={"reason": reason, "error": str(e)[:200]})
            if self.metrics is not None:
                self.metrics.routing_semantic_skipped.labels(reason).inc()
            return None
        return self.semantic.zone(index, query)

    async def _embed(self, message: str) -> Vectors:
        assert self.embedder is not None
        vectors = await self.embedder.embed([message.strip()[:MAX_EMBED_CHARS] or " "])
        if vectors.ndim != 2 or vectors.shape[0] != 1 or not np.isfinite(vectors).all():
            raise EmbeddingUnavailable("the embedder returned a vector that is not finite")
        return np.asarray(vectors[0], dtype=np.float32)
