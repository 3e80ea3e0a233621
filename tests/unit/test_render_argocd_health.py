"""The Argo CD health checks (Lua) read our conditions the way Argo CD would run them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from lupa import lua51

pytestmark = pytest.mark.unit

HEALTH = Path(__file__).resolve().parents[2] / "manifests" / "argocd" / "health"


def health(script: str, obj: dict[str, Any]) -> tuple[str, str]:
    """Run a health script as Argo CD does: a Lua 5.1 chunk (gopher-lua) with the object in the
    global `obj`, returning a table {status, message}. Lua 5.1 embedded by lupa: no apt package."""
    lua = lua51.LuaRuntime()
    lua.globals().obj = lua.table_from(obj, recursive=True)
    hs = lua.execute((HEALTH / script).read_text())
    return str(hs["status"]), str(hs["message"])


def agent(generation: int, *conditions: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"generation": generation}, "status": {"conditions": list(conditions)}}


def cond(type_: str, status: str, reason: str, generation: int = 1) -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "message": "m", "observedGeneration": generation}


def test_ready_agent_deployment_is_healthy() -> None:
    obj = agent(1, cond("Ready", "True", "RolloutComplete"), cond("Degraded", "False", "AsExpected"))
    assert health("agentdeployment.lua", obj)[0] == "Healthy"


def test_degraded_agent_deployment_is_degraded_with_its_reason() -> None:
    obj = agent(1, cond("Ready", "False", "PolicyNotFound"), cond("Degraded", "True", "PolicyNotFound"))
    assert health("agentdeployment.lua", obj) == ("Degraded", "PolicyNotFound: m")


def test_ready_for_an_older_generation_is_still_progressing() -> None:
    obj = agent(2, cond("Ready", "True", "RolloutComplete", generation=1))
    assert health("agentdeployment.lua", obj)[0] == "Progressing"


def test_no_status_yet_is_progressing() -> None:
    assert health("agentdeployment.lua", {"metadata": {"generation": 1}})[0] == "Progressing"


def test_invalid_policy_is_degraded_and_valid_policy_healthy() -> None:
    assert health("policy.lua", agent(1, cond("Ready", "False", "InvalidSpec")))[0] == "Degraded"
    assert health("policy.lua", agent(1, cond("Ready", "True", "Valid")))[0] == "Healthy"
