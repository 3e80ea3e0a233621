"""The agent definitions arrive two ways (the mounted file and the API watch's ConfigMap data): both
take the same validation path, content already applied is not applied again, and a file copy the
watch has already delivered (older) does not roll back what is served. Real files, no cluster."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from strata_runtime.agents.registry import AgentRegistry
from tests.unit.test_parse_cache import TEMPLATE, new_cache, runtime_config

pytestmark = pytest.mark.unit


def text(prompt: str, agent: str = "helper") -> str:
    return yaml.safe_dump({"agents": [{"id": agent, "tenant": "globex", **TEMPLATE, "systemPrompt": prompt}]})


def prompt(registry: AgentRegistry, agent: str = "helper") -> str | None:
    served = registry.lookup("globex", agent)
    return served.config.system_prompt if served else None


async def started(path: Path) -> AgentRegistry:
    config = runtime_config(agentManager={"definitionsPath": str(path)})
    registry = AgentRegistry(lambda: config, new_cache())
    await registry.start()
    return registry


async def test_a_file_path_takes_only_its_own_key_of_the_config_map(tmp_path: Path) -> None:
    mounted = tmp_path / "agents.yaml"
    mounted.write_text(text("v1"))
    registry = await started(mounted)
    try:
        result = await registry.apply_data({"config.yaml": "server: {}\n", "agents.yaml": text("v2")})
        assert result.updated == ["globex/helper"] and result.errors == []
        assert prompt(registry) == "v2" and registry.applied_from == "configMap"
        assert registry.errors == {}  # config.yaml was not read as definitions
        await registry.apply_data({"config.yaml": "server: {}\n"})  # the key removed: as a deleted file
        assert prompt(registry) is None
    finally:
        await registry.close()


async def test_a_directory_takes_every_definitions_key(tmp_path: Path) -> None:
    registry = await started(tmp_path)
    try:
        await registry.apply_data({"a.yaml": text("a", "one"), "b.json": text("b", "two"),
                                   ".hidden.yaml": text("h", "three"), "notes.txt": "x"})
        assert (prompt(registry, "one"), prompt(registry, "two"), prompt(registry, "three")) == ("a", "b", None)
    finally:
        await registry.close()


async def test_the_newer_source_wins_and_nothing_is_applied_twice(tmp_path: Path) -> None:
    mounted = tmp_path / "agents.yaml"
    mounted.write_text(text("v1"))
    registry = await started(mounted)
    try:
        start = registry.reloads  # the load at start-up
        await registry.apply_data({"agents.yaml": text("v1")})  # the first list: what the file holds
        assert registry.reloads == start and registry.applied_from == "file"
        await registry.apply_data({"agents.yaml": text("v2")})
        assert prompt(registry) == "v2" and registry.reloads == start + 1
        mounted.write_text(text("v2"))  # the kubelet catches up: no second reload
        assert not (await registry.reload()).changed and registry.reloads == start + 1
        mounted.write_text(text("v1"))  # an older copy: not a rollback
        await registry.reload()
        assert prompt(registry) == "v2" and registry.reloads == start + 1
        mounted.write_text(text("v3"))  # content the watch never delivered (it is behind): the file wins
        await registry.reload()
        assert prompt(registry) == "v3" and registry.applied_from == "file" and registry.reloads == start + 2
        await registry.apply_data({"agents.yaml": text("v3")})  # the watch catches up: nothing to do
        assert registry.reloads == start + 2 and registry.applied_from == "file"
    finally:
        await registry.close()


async def test_an_invalid_config_map_keeps_the_last_good_definition_with_the_field_path(tmp_path: Path) -> None:
    mounted = tmp_path / "agents.yaml"
    mounted.write_text(text("v1"))
    registry = await started(mounted)
    try:
        bad = yaml.safe_dump({"agents": [{"id": "helper", "tenant": "globex", **TEMPLATE,
                                          "limits": {"maxToolSteps": "lots"}}]})
        result = await registry.apply_data({"agents.yaml": bad})
        assert any("agents.yaml: agents[0].limits.maxToolSteps" in e for e in result.errors), result.errors
        assert prompt(registry) == "v1"
    finally:
        await registry.close()
