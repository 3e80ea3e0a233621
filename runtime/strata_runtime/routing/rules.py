"""Layer 0: regex / keyword rules, checked in order; the first match decides.

A rule is anchored by default: it must match the whole message, apart from surrounding
whitespace and trailing punctuation, so `hello` routes "Hello!" but not "hello, close my
account". Rules are case-insensitive by default. Keywords are literal alternatives (any
language; no word boundaries are assumed, so they work for Chinese too).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from strata_runtime.config.policies import RoutingRule
from strata_runtime.routing.decision import Route, RouteDecision

_TRAILING = re.compile(r"[\s.!?,;:~\u2026\u3001\u3002\uFF01\uFF0C\uFF1A\uFF1B\uFF1F\uFF5E]+$")  # incl. CJK punctuation


@dataclass(frozen=True)
class CompiledRule:
    index: int
    regex: re.Pattern[str]
    anchored: bool
    route: Route
    skill: str | None


def compile_rules(rules: list[RoutingRule], skills: set[str]) -> tuple[list[CompiledRule], list[str]]:
    """Rules naming a skill the agent does not have are left out and reported as problems."""
    compiled: list[CompiledRule] = []
    problems: list[str] = []
    for i, rule in enumerate(rules):
        route, skill = rule.target()
        if skill is not None and skill not in skills:
            problems.append(f"routing.rules[{i}] routes to unknown skill {skill!r}; the rule is ignored")
            continue
        flags = 0 if rule.case_sensitive else re.IGNORECASE
        compiled.append(CompiledRule(index=i, regex=re.compile(rule.expression(), flags), anchored=rule.anchored,
                                     route=route, skill=skill))
    return compiled, problems


def match_rules(rules: list[CompiledRule], message: str) -> RouteDecision | None:
    stripped = message.strip()
    whole = _TRAILING.sub("", stripped) or stripped
    for rule in rules:
        hit = rule.regex.fullmatch(whole) if rule.anchored else rule.regex.search(stripped)
        if hit:
            return RouteDecision(route=rule.route, layer="L0", skill=rule.skill, confidence=1.0,
                                 reason=f"rule {rule.index}")
    return None
