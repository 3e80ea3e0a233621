"""The chosen skill in the prompt: its instructions and the tools it may use join the system prompt."""

from __future__ import annotations

from strata_runtime.config.agents import AgentConfig, SkillConfig
from strata_runtime.routing.decision import RouteDecision


def chosen_skill(agent: AgentConfig, decision: RouteDecision | None) -> SkillConfig | None:
    if decision is None or decision.route != "skill":
        return None
    return next((s for s in agent.skills if s.name == decision.skill), None)


def system_prompt(agent: AgentConfig, decision: RouteDecision | None) -> str:
    """The agent's system prompt, followed by the chosen skill's instructions and tool list."""
    skill = chosen_skill(agent, decision)
    if skill is None:
        return agent.system_prompt
    parts = [agent.system_prompt.strip(), f"Skill: {skill.name}"]
    if skill.instructions.strip():
        parts.append(skill.instructions.strip())
    if skill.tools:
        parts.append("Tools this skill may use: " + ", ".join(skill.tools))
    return "\n\n".join(p for p in parts if p)
