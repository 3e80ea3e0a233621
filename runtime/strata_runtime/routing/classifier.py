"""Layer 2: an LLM picks the skill, answering with strict JSON `{"skill": "<name>" | "none"}`.

The L1.5 hint (a plausible skill) goes into the prompt. Answers are cached per (policy, skill
set, message), so a repeated question costs one call. Any failure (deadline, upstream error,
an answer that is not exactly that JSON, an unknown skill) means direct chat, never an error.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from strata_runtime.config.agents import SkillConfig
from strata_runtime.config.policies import ClassifierConfig
from strata_runtime.gateway.contract import CallContext, ChatGateway

log = logging.getLogger("strata.routing")

NONE = "none"
MAX_MESSAGE_CHARS = 4000
MAX_SKILL_TEXT = 300


@dataclass(frozen=True)
class Classification:
    skill: str | None  # None: no skill fits (direct chat)
    outcome: str  # ok | cached | invalid | timeout | error


def classifier_prompt(skills: Sequence[SkillConfig], message: str, hint: str | None) -> list[dict[str, str]]:
    lines = []
    for skill in skills:
        about = " | ".join(p for p in (skill.description, ", ".join(skill.keywords)) if p)[:MAX_SKILL_TEXT]
        lines.append(f"- {skill.name}: {about}" if about else f"- {skill.name}")
    system = ("You route a user's message to one skill of an assistant. The skills:\n" + "\n".join(lines)
              + '\n\nAnswer with only a JSON object: {"skill": "<skill name>"} for the one skill that fits '
              'the message, or {"skill": "none"} when none fits. No other text.')
    if hint:
        system += f"\nA similarity search suggests the skill {hint!r}; choose it only if it fits."
    return [{"role": "system", "content": system}, {"role": "user", "content": message[:MAX_MESSAGE_CHARS]}]


def parse_answer(content: str, names: set[str]) -> str | None:
    """The skill named by a strict JSON answer; raises ValueError for anything else."""
    text = content.strip()
    if text.startswith("```"):
        text = text.strip("`").removeprefix("json").strip()
    data = orjson.loads(text)
    if not isinstance(data, dict) or set(data) != {"skill"} or not isinstance(data["skill"], str):
        raise ValueError('the answer is not {"skill": "<name>"}')
    skill = data["skill"].strip()
    if skill.lower() == NONE:
        return None
    if skill not in names:
        raise ValueError(f"the answer names unknown skill {skill!r}")
    return skill


class AnswerCache:
    """A small LRU with a TTL; only successful classifications are stored."""

    def __init__(self, entries: int, ttl_seconds: float):
        self.entries = entries
        self.ttl = ttl_seconds
        self._data: OrderedDict[tuple[str, str, str], tuple[float, str | None]] = OrderedDict()

    def get(self, key: tuple[str, str, str]) -> tuple[bool, str | None]:
        item = self._data.get(key)
        if item is None or item[0] < time.monotonic():
            self._data.pop(key, None)
            return False, None
        self._data.move_to_end(key)
        return True, item[1]

    def put(self, key: tuple[str, str, str], skill: str | None) -> None:
        self._data[key] = (time.monotonic() + self.ttl, skill)
        self._data.move_to_end(key)
        while len(self._data) > self.entries:
            self._data.popitem(last=False)


class Classifier:
    def __init__(self, config: ClassifierConfig, cache: AnswerCache):
        self.config = config
        self.cache = cache

    async def classify(self, gateway: ChatGateway | None, *, model: str, skills: Sequence[SkillConfig],
                       message: str, hint: str | None, ctx: CallContext, key: tuple[str, str, str]
                       ) -> Classification:
        found, skill = self.cache.get(key)
        if found:
            return Classification(skill, "cached")
        if gateway is None:
            return Classification(None, "error")
        body = {"model": model, "messages": classifier_prompt(skills, message, hint), "temperature": 0,
                "max_tokens": 64}
        try:
            result = await asyncio.wait_for(gateway.complete(body, ctx), timeout=self.config.timeout_seconds)
        except TimeoutError:
            log.warning("routing classifier missed its deadline; direct chat",
                        extra={"agent_id": ctx.agent_id, "timeout_s": self.config.timeout_seconds})
            return Classification(None, "timeout")
        except Exception as e:
            log.warning("routing classifier call failed; direct chat",
                        extra={"agent_id": ctx.agent_id, "error": type(e).__name__})
            return Classification(None, "error")
        choices = result.response.get("choices") or [{}]
        content = str((choices[0].get("message") or {}).get("content") or "")
        try:
            skill = parse_answer(content, {s.name for s in skills})
        except ValueError as e:
            log.warning("routing classifier answer rejected; direct chat",
                        extra={"agent_id": ctx.agent_id, "reason": str(e)[:200]})
            return Classification(None, "invalid")
        self.cache.put(key, skill)
        return Classification(skill, "ok")
