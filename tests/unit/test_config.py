"""The runtime config model: the sample loads, mistakes are named, hashes are stable."""

from __future__ import annotations

from pathlib import Path

import pytest

from strata_runtime.config import ConfigError, RuntimeConfig, config_hash, load_config, parse_config

SAMPLE = Path(__file__).resolve().parents[2] / "manifests" / "samples" / "runtime-local.yaml"


def _minimal(**overrides: object) -> dict[str, object]:
    raw: dict[str, object] = {
        "auth": {"mode": "none"},
        "models": [{"name": "m", "provider": "demo"}],
        "agents": [{"id": "a", "tenant": "t", "model": "m"}],
    }
    raw.update(overrides)
    return raw


def test_the_sample_config_loads_with_its_agent_and_skills() -> None:
    config = load_config(SAMPLE)
    assert config.agents[0].id == "support"
    assert [s.name for s in config.agents[0].skills] == ["card_arrival", "password_reset"]
    assert config.stores.redis.backend == "auto"


def test_spec_defaults_apply_when_sections_are_omitted() -> None:
    config = parse_config(_minimal())
    assert config.cache.exact.ttl_seconds == 3600
    assert config.cache.semantic.ttl_seconds == 86400
    assert config.memory.buffer_turns == 10
    assert config.usage.ttl_days == 90
    assert config.server.port == 8080


def test_an_unknown_field_is_named_in_camel_case() -> None:
    with pytest.raises(ConfigError, match=r"stores\.redis\.bakend"):
        parse_config(_minimal(stores={"redis": {"bakend": "redis"}}))


def test_a_wrong_enum_value_names_the_field_and_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"models\.0\.provider.*'openai'"):
        parse_config(_minimal(models=[{"name": "m", "provider": "nope"}]))


def test_upstream_response_caps_default_to_the_providers_built_in_caps() -> None:
    from strata_runtime.providers.openai_compat import Limits

    model = parse_config(_minimal()).models[0]
    assert Limits.of(model) == Limits()  # the defaults did not move when they became settings
    assert Limits() == Limits(body=128 * 1024 * 1024, stream=256 * 1024 * 1024, event=4 * 1024 * 1024,
                              error_body=64 * 1024)


def test_upstream_response_caps_are_read_per_model() -> None:
    from strata_runtime.providers.openai_compat import Limits

    limits = {"bodyBytes": 2048, "streamBytes": 8192, "eventBytes": 4096, "errorBodyBytes": 1024}
    model = parse_config(_minimal(models=[{"name": "m", "provider": "demo", "responseLimits": limits}])).models[0]
    assert Limits.of(model) == Limits(body=2048, stream=8192, event=4096, error_body=1024)


@pytest.mark.parametrize(("limits", "message"), [
    ({"bodyBytes": 1023}, r"models\.0\.responseLimits\.bodyBytes.*greater than or equal to 1024"),
    ({"streamBytes": 0}, r"models\.0\.responseLimits\.streamBytes"),
    ({"eventBytes": 2 * 1024 ** 3}, r"models\.0\.responseLimits\.eventBytes.*less than or equal"),
    ({"errorBodyBytes": -1}, r"models\.0\.responseLimits\.errorBodyBytes"),
    ({"bodyBytes": "lots"}, r"models\.0\.responseLimits\.bodyBytes"),
    ({"bodyByte": 4096}, r"models\.0\.responseLimits\.bodyByte"),
])
def test_an_upstream_response_cap_out_of_bounds_is_rejected_by_name(limits: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(_minimal(models=[{"name": "m", "provider": "demo", "responseLimits": limits}]))


def test_an_agent_naming_an_unknown_model_is_rejected() -> None:
    with pytest.raises(ConfigError, match="unknown model 'gpt-9'"):
        parse_config(_minimal(agents=[{"id": "a", "tenant": "t", "model": "gpt-9"}]))


def test_a_fallback_to_an_unknown_model_is_rejected() -> None:
    with pytest.raises(ConfigError, match="fallbacks names unknown model 'x'"):
        parse_config(_minimal(models=[{"name": "m", "provider": "demo", "fallbacks": ["x"]}]))


def test_api_key_mode_without_keys_is_rejected() -> None:
    with pytest.raises(ConfigError, match="apiKeys is empty"):
        parse_config(_minimal(auth={"mode": "apiKey"}))


def test_an_api_key_needs_exactly_one_source() -> None:
    with pytest.raises(ConfigError, match="exactly one of keyEnv or keyFile"):
        parse_config(_minimal(auth={"apiKeys": [{"tenant": "t", "keyEnv": "A", "keyFile": "/k"}]}))


def test_explicit_redis_without_an_address_is_rejected() -> None:
    with pytest.raises(ConfigError, match="neither url nor urlEnv"):
        parse_config(_minimal(stores={"redis": {"backend": "redis"}}))


def test_semantic_routing_low_may_not_exceed_high() -> None:
    with pytest.raises(ConfigError, match=r"semantic\.low must not exceed"):
        parse_config(_minimal(routing={"semantic": {"low": 0.9, "high": 0.8}}))


def test_an_invalid_routing_regex_is_rejected() -> None:
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        parse_config(_minimal(routing={"rules": [{"pattern": "(unclosed"}]}))


def test_a_missing_file_and_bad_yaml_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("server: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_the_hash_ignores_key_order_and_changes_with_content() -> None:
    a = parse_config(_minimal())
    reordered = dict(reversed(list(_minimal().items())))
    b = parse_config(reordered)
    assert config_hash(a) == config_hash(b)
    c = parse_config(_minimal(server={"port": 9090}))
    assert config_hash(a) != config_hash(c)


def test_a_dumped_config_validates_back_to_the_same_model() -> None:
    config = load_config(SAMPLE)
    again = RuntimeConfig.model_validate(config.model_dump(mode="json", by_alias=True))
    assert again == config


def test_the_local_embedder_only_accepts_the_model_it_ships() -> None:
    with pytest.raises(ConfigError, match=r"embedder: .*ships multilingual-e5-small"):
        parse_config(_minimal(embedder={"provider": "local", "model": "bge-large"}))


def test_an_openai_embedder_needs_a_base_url() -> None:
    with pytest.raises(ConfigError, match="needs baseUrl"):
        parse_config(_minimal(embedder={"provider": "openai", "model": "text-embedding-3-small"}))


def _write(tmp_path: Path, raw: dict[str, object]) -> Path:
    import yaml

    path = tmp_path / "runtime.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_the_agent_manager_environment_variables_override_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, _minimal(agentManager={"agentIdleSeconds": 900, "llmParsing": {"model": "m"}}))
    env = {"AGENT_IDLE_TIMEOUT": "45", "AGENT_CLEANUP_INTERVAL": " 7.5 ", "ENABLE_LLM_PARSING": "True"}
    manager = load_config(path, env).agent_manager
    assert (manager.agent_idle_seconds, manager.agent_cleanup_interval_seconds) == (45.0, 7.5)
    assert manager.llm_parsing.enabled and manager.llm_parsing.model == "m"  # the rest of the section kept
    assert load_config(path, {"ENABLE_LLM_PARSING": "0", "AGENT_IDLE_TIMEOUT": ""}).agent_manager \
        .agent_idle_seconds == 900.0
    assert load_config(path, {}).agent_manager.agent_idle_seconds == 900.0
    assert load_config(path).agent_manager.agent_idle_seconds == 900.0  # no environment given: the file alone


@pytest.mark.parametrize(("env", "says"), [
    ({"AGENT_IDLE_TIMEOUT": "five minutes"}, "AGENT_IDLE_TIMEOUT='five minutes': expected a number of seconds"),
    ({"ENABLE_LLM_PARSING": "maybe"}, "ENABLE_LLM_PARSING='maybe': expected true or false"),
    ({"AGENT_CLEANUP_INTERVAL": "-1"},
     "agentManager.agentCleanupIntervalSeconds (set by the environment variable AGENT_CLEANUP_INTERVAL): "
     "Input should be greater than 0"),
])
def test_a_bad_environment_value_is_an_invalid_config_naming_the_variable(tmp_path: Path, env: dict[str, str],
                                                                          says: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(_write(tmp_path, _minimal()), env)
    assert says in str(raised.value)
