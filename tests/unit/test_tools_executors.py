"""The python executor's allow-list and deadline, the SSRF classification and the URL templates."""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any

import pytest

from strata_runtime.tools.contract import CallContext, ToolSpec
from strata_runtime.tools.http_executor import fill_template
from strata_runtime.tools.python_executor import PythonExecutor, is_allowed
from strata_runtime.tools.ssrf import SsrfRefused, is_internal, resolve_checked

CTX = CallContext(call_id="c1", tenant="acme", agent_id="support")


def _py(target: str, timeout: float = 5.0) -> ToolSpec:
    return ToolSpec(
        id="t",
        name="t",
        description="",
        input_schema={"type": "object"},
        executor="python",
        target=target,
        timeout_seconds=timeout,
    )


async def _run(executor: PythonExecutor, target: str, args: dict[str, Any], timeout: float = 5.0) -> Any:
    return await executor.call(_py(target, timeout), args, CTX)


async def test_only_allow_listed_entry_points_run() -> None:
    executor = PythonExecutor(["tests.support.tool_functions:add", "os:*"])
    assert (await _run(executor, "tests.support.tool_functions:add", {"a": 1, "b": 2})).result == {"sum": 3}
    refused = await _run(executor, "tests.support.tool_functions:broken", {})
    assert refused.error is not None and refused.error.code == "executor_unavailable"
    assert not is_allowed("os:_exit", ["os:*"])
    await executor.aclose()


async def test_a_hung_function_times_out_without_blocking_the_loop() -> None:
    executor = PythonExecutor(["tests.support.tool_functions:*"])
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    outcome = await _run(executor, "tests.support.tool_functions:sleepy", {"seconds": 1.0}, timeout=0.3)
    task.cancel()
    assert outcome.error is not None and outcome.error.code == "timeout"
    assert ticks > 5  # the loop kept running while the function slept in its thread
    await executor.aclose()


async def test_errors_and_bad_arguments_of_a_function_are_outcomes() -> None:
    executor = PythonExecutor(["tests.support.tool_functions:*"])
    raised = await _run(executor, "tests.support.tool_functions:broken", {})
    assert raised.error is not None and raised.error.code == "upstream_error"
    wrong = await _run(executor, "tests.support.tool_functions:add", {"a": 1})
    assert wrong.error is not None and wrong.error.code == "invalid_arguments"
    assert (await _run(executor, "tests.support.tool_functions:async_add", {"a": 1, "b": 1})).result == 2
    await executor.aclose()


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "::1",
        "fe80::1",
        "fc00::1",
        "::ffff:127.0.0.1",
        "224.0.0.1",
    ],
)
def test_internal_addresses_are_recognised(address: str) -> None:
    assert is_internal(ipaddress.ip_address(address))


def test_public_addresses_pass() -> None:
    assert not is_internal(ipaddress.ip_address("8.8.8.8"))
    assert not is_internal(ipaddress.ip_address("2606:4700::1111"))


async def test_an_allowed_host_may_be_internal_and_others_may_not() -> None:
    assert (await resolve_checked("127.0.0.1", 80, {"127.0.0.1"})).address == "127.0.0.1"
    with pytest.raises(SsrfRefused):
        await resolve_checked("localhost", 80, set())


RESOLVES = {  # DNS answers of names a tool could be pointed at (no name server on this machine serves them)
    "intranet.corp.test": ["10.20.30.40"],
    "nas.home.test": ["192.168.1.20"],
    "k8s.svc.test": ["172.16.0.10"],
    "metadata.cloud.test": ["169.254.169.254"],
    "v6.internal.test": ["fd00::1"],
    "cgnat.isp.test": ["100.64.0.7"],
    "mixed.test": ["93.184.216.34", "10.0.0.1"],  # one public answer does not hide a private one
    "public.test": ["93.184.216.34", "2606:4700::1111"],
}


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in RESOLVES:
            return real(host, port, *args, **kwargs)
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
                for a in RESOLVES[host]]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.mark.parametrize("host", [h for h in RESOLVES if h != "public.test"])
async def test_names_resolving_to_internal_addresses_are_refused(dns: None, host: str) -> None:
    with pytest.raises(SsrfRefused, match="resolves to an internal address"):
        await resolve_checked(host, 80, set())
    assert (await resolve_checked(host, 80, {host})).address == RESOLVES[host][0]  # unless explicitly allowed


async def test_a_public_name_is_pinned_to_the_address_that_was_checked(dns: None) -> None:
    resolved = await resolve_checked("public.test", 443, set())
    assert (resolved.host, resolved.address) == ("public.test", "93.184.216.34")


def test_url_templates_take_their_arguments_quoted() -> None:
    url, rest = fill_template("https://api.example/users/{user}/items", {"user": "a/b c", "n": 1})
    assert url == "https://api.example/users/a%2Fb%20c/items" and rest == {"n": 1}
    with pytest.raises(ValueError, match="user"):
        fill_template("https://api.example/users/{user}", {})
