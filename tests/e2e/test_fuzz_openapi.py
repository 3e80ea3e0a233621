"""Property-based fuzzing of every operation of the runtime's OpenAPI description (schemathesis).

A real runtime process (real HTTP parsing, real middleware) with the API description switched
on is sent requests generated from its own `/openapi.json`: data that fits the schema and data
that does not (wrong types, missing fields, odd strings and numbers), with the tenant key and
the internal token so that the requests reach the handlers. Every answer must be a 2xx/3xx/4xx
with a JSON body (no 5xx), and neither an answer nor the process log may hold a stack trace.

The run is bounded: STRATA_FUZZ_EXAMPLES examples per operation and mode (default 20), no
shrinking, no example database. The counts are printed (pytest -s shows them).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.generation.case import Case

from tests.support.runtime_process import RuntimeProcess, embedded_config

EXAMPLES = int(os.environ.get("STRATA_FUZZ_EXAMPLES", "20"))
AUTH = {"authorization": "Bearer acme-key-123", "x-strata-internal-token": "internal-token-789"}
ENV = {"STRATA_KEY_ACME": "acme-key-123", "STRATA_INTERNAL_TOKEN": "internal-token-789"}
TRACE_MARKERS = ("Traceback (most recent call last)", 'File "/')


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeProcess]:
    workdir: Path = tmp_path_factory.mktemp("fuzz")
    config = embedded_config(
        workdir,
        server={"openapi": True},
        auth={"mode": "apiKey", "apiKeys": [{"tenant": "acme", "keyEnv": "STRATA_KEY_ACME"}],
              "internalTokenEnv": "STRATA_INTERNAL_TOKEN"},
        agents=[{"id": "support", "tenant": "acme", "model": "demo"}],
        cache={"enabled": False},
    )
    process = RuntimeProcess(config, workdir, env=ENV).start(timeout=90)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def schema(runtime: RuntimeProcess) -> Any:
    described = httpx.get(f"{runtime.base_url}/openapi.json", headers=AUTH, timeout=30)
    assert described.status_code == 200, described.text
    return schemathesis.openapi.from_dict(described.json())


def content_type(response: Any) -> str:
    values = {k.lower(): v for k, v in response.headers.items()}.get("content-type") or [""]
    return str(values[0])


def test_every_operation_answers_fuzzed_requests_without_a_5xx_or_a_stack_trace(runtime: RuntimeProcess,
                                                                                schema: Any) -> None:
    statuses: Counter[int] = Counter()
    per_operation: Counter[str] = Counter()
    failures: list[str] = []
    session = requests.Session()

    def check(case: Case) -> None:
        response = case.call(base_url=runtime.base_url, session=session, headers=AUTH, timeout=30)
        statuses[response.status_code] += 1
        per_operation[f"{case.method} {case.path}"] += 1
        problem = ""
        if response.status_code >= 500:
            problem = "5xx"
        elif any(marker in response.text for marker in TRACE_MARKERS):
            problem = "stack trace in the answer"
        elif response.status_code >= 400 and not content_type(response).startswith("application/json"):
            problem = "a non-JSON error"
        if problem:
            failures.append(f"{problem}: {case.method} {case.formatted_path} -> {response.status_code} "
                            f"{response.text[:300]!r}\n  {case.as_curl_command(headers=AUTH)[:600]}")

    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15, [op.label for op in operations]
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            run = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=False,
                           phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))(
                given(case=operation.as_strategy(generation_mode=mode))(check))
            try:
                run()
            except Unsatisfiable:  # nothing of this operation can be made invalid (no parameters, no body)
                assert mode is GenerationMode.NEGATIVE, operation.label

    total = sum(statuses.values())
    print(f"\nfuzz: {total} requests over {len(per_operation)} operations; statuses {dict(sorted(statuses.items()))}; "
          f"{len(failures)} failures")
    kinds = Counter(failure.split("\n")[0].split(" -> ")[0] for failure in failures)
    assert not failures, f"{dict(kinds)}\n" + "\n".join(failures[:10])
    assert sum(n for status, n in statuses.items() if status >= 500) == 0
    assert len(per_operation) == len(operations)  # every operation was exercised
    log = runtime.logs()
    assert not any(marker in log for marker in TRACE_MARKERS), log[-3000:]
