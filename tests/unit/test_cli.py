"""Both console scripts: --version, validated log levels, and `strata-runtime check`."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

from strata_operator.cli import parse_settings
from strata_runtime.cli import main as runtime_main

pytestmark = pytest.mark.unit

SAMPLE = Path(__file__).resolve().parents[2] / "manifests" / "samples" / "runtime-local.yaml"


def exit_code(call: object) -> int:
    assert isinstance(call, SystemExit)
    return int(call.code or 0)


@pytest.mark.parametrize(("run", "prog"), [(runtime_main, "strata-runtime"), (parse_settings, "strata-operator")])
def test_version_is_the_installed_package_version(run, prog: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        run(["--version"])
    assert exit_code(stopped.value) == 0
    assert capsys.readouterr().out.split() == [prog, version("strata")]


@pytest.mark.parametrize("run", [runtime_main, lambda argv: parse_settings(argv, env={})], ids=["runtime", "operator"])
def test_an_unknown_log_level_is_a_usage_error_not_a_traceback(run, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        run(["--log-level", "verbose", "--config", str(SAMPLE)])
    assert exit_code(stopped.value) == 2
    err = capsys.readouterr().err
    assert "'verbose' is not a log level" in err
    assert "debug, info, warning, error, critical" in err
    assert "Traceback" not in err


def test_the_log_level_from_the_environment_is_validated_too(monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("STRATA_LOG_LEVEL", "loud")
    with pytest.raises(SystemExit) as stopped:
        runtime_main(["check", "--config", str(SAMPLE)])
    assert exit_code(stopped.value) == 2
    assert "'loud' is not a log level (--log-level or $STRATA_LOG_LEVEL)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_settings([], env={"STRATA_LOG_LEVEL": "loud"})


def test_operator_log_levels_any_case_and_verbose_means_debug() -> None:
    assert parse_settings(["--log-level", "Warning"], env={}).log_level == "WARNING"
    assert parse_settings([], env={}).log_level == "INFO"
    debug = parse_settings([], env={"STRATA_LOG_LEVEL": "debug"})
    assert (debug.log_level, debug.verbose) == ("DEBUG", True)
    verbose = parse_settings(["-v", "--log-level", "error"], env={})
    assert (verbose.log_level, verbose.verbose) == ("DEBUG", True)


def test_check_prints_what_the_config_would_run(capsys: pytest.CaptureFixture[str]) -> None:
    assert runtime_main(["check", "--config", str(SAMPLE)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{SAMPLE}: valid\n")
    assert "server   127.0.0.1:8080" in out
    assert "  demo: demo" in out
    assert "  support (tenant local): model demo; skills card_arrival, password_reset" in out
    assert "; guard (warn) ok" in out
    assert "  cache    auto, scope user: exact on, semantic on (verifier, maxWrongHitRate 0.01)" in out
    assert "  routing  1 rule(s)" in out


def test_check_names_the_field_of_an_invalid_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"server": {"port": 99999},
                                    "models": [{"name": "m", "provider": "demo"}],
                                    "agents": [{"id": "a b", "tenant": "t", "model": "m"}]}))
    assert runtime_main(["check", "--config", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "server.port: Input should be less than or equal to 65535" in captured.err
    assert "agents.0.id: String should match pattern" in captured.err


def test_check_of_a_missing_file_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert runtime_main(["check", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "cannot read config file" in capsys.readouterr().err


def test_check_never_prints_a_credential(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "secret.yaml"
    path.write_text(yaml.safe_dump({
        "auth": {"mode": "none"},
        "stores": {"redis": {"backend": "redis", "url": "redis://app:hunter2@redis.example:6380/0"},
                   "sql": {"backend": "postgresql", "dsnEnv": "PG_DSN"}},
        "models": [{"name": "m", "provider": "openai", "baseUrl": "https://u:hunter2@llm.example/v1",
                    "apiKeyEnv": "OPENAI_API_KEY"}],
    }))
    assert runtime_main(["check", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out
    assert "redis://***@redis.example:6380/0" in out
    assert "postgres $PG_DSN" in out
    assert "key $OPENAI_API_KEY" in out


def test_check_says_whether_a_bge_embedder_s_weights_are_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    config = yaml.safe_load(SAMPLE.read_text())
    config["embedder"] = {"provider": "local", "model": "bge-small-en-v1.5+multilingual-e5-small"}
    path = tmp_path / "bge.yaml"
    path.write_text(yaml.safe_dump(config))
    assert runtime_main(["check", "--config", str(path)]) == 0
    assert "embedder local bge-small-en-v1.5+multilingual-e5-small (weights in " in capsys.readouterr().out
    monkeypatch.setenv("STRATA_MODELS_DIR", str(tmp_path / "empty"))
    assert runtime_main(["check", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "(NOT INSTALLED, the runtime will not start: " in out and "fetch_models.py" in out
    assert runtime_main(["check", "--config", str(SAMPLE)]) == 0
    assert "embedder local multilingual-e5-small\n" in capsys.readouterr().out


def test_the_operator_watch_timeout_and_the_idle_timeout_it_implies() -> None:
    default = parse_settings([], env={})
    assert (default.watch_server_timeout_seconds, default.watch_idle_timeout_seconds) == (300, 75)  # bookmark + 15
    short = parse_settings(["--watch-timeout", "15"], env={})
    assert (short.watch_server_timeout_seconds, short.watch_idle_timeout_seconds) == (15, 30)
    assert parse_settings([], env={"STRATA_WATCH_TIMEOUT_SECONDS": "40"}).watch_idle_timeout_seconds == 55
