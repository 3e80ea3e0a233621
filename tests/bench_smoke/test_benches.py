"""Every benchmark in bench/ runs once with --smoke, so none can rot between `make bench` runs.

Found by glob (bench/*.py, not starting with `_`): a benchmark added later is included without
editing this file. Each runs as `python -m bench.NAME --smoke` from the repository root, as its own
process with the suite's environment (Redis/Postgres URLs, KUBECONFIG from `make test`). The
contract (bench/README.md, "Smoke runs"): exit 0 within seconds, at least one JSON result line on
stdout, and its human table. Only that is checked, never a figure: the machine is shared.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.bench_smoke

ROOT = Path(__file__).resolve().parents[2]
BENCHES = sorted(p.stem for p in (ROOT / "bench").glob("*.py") if not p.name.startswith("_"))
NUMBER = re.compile(r"^-?\d+(\.\d+)?(e[-+]?\d+)?$")


def json_lines(stdout: str) -> list[dict[str, Any]]:
    records = []
    for line in stdout.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            assert isinstance(record, dict), line
            records.append(record)
    return records


def table_rows(output: str) -> list[str]:
    """Lines of a human table: not JSON, and at least two numeric columns."""
    return [line for line in output.splitlines()
            if not line.startswith("{") and sum(bool(NUMBER.match(f.rstrip("%"))) for f in line.split()) >= 2]


def test_every_benchmark_is_found() -> None:
    assert {"gateway", "cache", "memory", "operator", "config", "streams", "mcp"} <= set(BENCHES)


@pytest.mark.parametrize("name", BENCHES)
def test_benchmark_smoke_run(name: str) -> None:
    proc = subprocess.run([sys.executable, "-m", f"bench.{name}", "--smoke"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, stdin=subprocess.DEVNULL)
    output = f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"
    assert proc.returncode == 0, f"bench/{name}.py --smoke exited {proc.returncode}\n{output}"
    assert json_lines(proc.stdout), f"bench/{name}.py --smoke printed no JSON result line\n{output}"
    assert table_rows(proc.stdout + "\n" + proc.stderr), f"bench/{name}.py --smoke printed no table\n{output}"
