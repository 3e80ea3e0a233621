"""The runtime's upstream client honours HTTPS_PROXY / HTTP_PROXY / NO_PROXY, through a real proxy process.

The upstream runs as HTTPS (a throwaway CA from trustme, trusted through SSL_CERT_FILE, as
an operator would mount a corporate CA) and as plain HTTP; the proxy is a separate process
that records what went through it, so each test sees whether the request really took the
proxy (a CONNECT tunnel for https, an absolute-form request for http) or went direct.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from strata_runtime.config import parse_config
from strata_runtime.gateway.contract import CallContext
from strata_runtime.gateway.gateway import Gateway
from strata_runtime.metrics import Metrics
from strata_runtime.stores.redis import RedisConnector
from tests.support.fixtures import UpstreamServer
from tests.support.forward_proxy import ProxyProcess

CTX = CallContext(tenant="acme")


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def tls_upstream(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpstreamServer]:
    folder = tmp_path_factory.mktemp("tls")
    cert = ca.issue_cert("localhost")
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    for extra in cert.cert_chain_pems[1:]:
        extra.write_to_path(str(cert_file), append=True)
    cert.private_key_pem.write_to_path(str(key_file))
    with UpstreamServer(extra_args=("--tls-cert", str(cert_file), "--tls-key", str(key_file))) as server:
        yield server


@pytest.fixture
def trusted_ca(ca: trustme.CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """OpenSSL's default verify paths read SSL_CERT_FILE: the upstream's CA is trusted as a mounted one would be."""
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    monkeypatch.setenv("SSL_CERT_FILE", str(path))


async def _answer(base_url: str, env: dict[str, str]) -> str:
    config = parse_config({"auth": {"mode": "none"}, "models": [
        {"name": "primary", "provider": "openai", "upstreamModel": "gpt-4o-mini", "baseUrl": base_url,
         "maxRetries": 0, "timeoutSeconds": 10}]})
    redis = RedisConnector(config.stores.redis, {})
    await redis.start()
    gateway = Gateway(config, env, redis, Metrics())
    try:
        result = await gateway.complete({"model": "primary", "messages": [{"role": "user", "content": "via"}]}, CTX)
        return str(result.response["choices"][0]["message"]["content"])
    finally:
        await gateway.close()
        await redis.close()


def _https_url(server: UpstreamServer) -> str:
    return f"https://localhost:{server.port}/v1"


async def test_https_upstream_is_reached_through_a_connect_tunnel(tls_upstream: UpstreamServer,
                                                                 trusted_ca: None) -> None:
    with ProxyProcess() as proxy:
        assert await _answer(_https_url(tls_upstream), {"HTTPS_PROXY": proxy.url}) == "echo: via"
        assert proxy.stats()["connect"] == [f"localhost:{tls_upstream.port}"]


async def test_lower_case_https_proxy_with_credentials_is_honoured(tls_upstream: UpstreamServer,
                                                                   trusted_ca: None) -> None:
    with ProxyProcess(auth="strata:s3cret") as proxy:
        url = f"http://strata:s3cret@{proxy.host}:{proxy.port}"
        assert await _answer(_https_url(tls_upstream), {"https_proxy": url}) == "echo: via"
        stats = proxy.stats()
        assert stats["connect"] == [f"localhost:{tls_upstream.port}"]
        assert stats["refused"] == 0


async def test_no_proxy_sends_matching_hosts_direct(tls_upstream: UpstreamServer, trusted_ca: None) -> None:
    with ProxyProcess() as proxy:
        for no_proxy in ("localhost", ".localhost", "*", f"example.com, localhost:{tls_upstream.port}"):
            env = {"HTTPS_PROXY": proxy.url, "NO_PROXY": no_proxy}
            assert await _answer(_https_url(tls_upstream), env) == "echo: via"
        assert await _answer(_https_url(tls_upstream), {"HTTPS_PROXY": proxy.url, "NO_PROXY": "localhost:1"}) \
            == "echo: via"
        assert proxy.stats()["connect"] == [f"localhost:{tls_upstream.port}"]  # only the port-mismatch one


async def test_plain_http_upstream_goes_through_http_proxy_as_absolute_form_requests(
        openai_upstream: UpstreamServer) -> None:
    with ProxyProcess() as proxy:
        env = {"HTTP_PROXY": proxy.url, "HTTPS_PROXY": "http://127.0.0.1:9"}  # the https one must not be used
        assert await _answer(openai_upstream.base_url, env) == "echo: via"
        assert proxy.stats()["forwarded"] == [f"{openai_upstream.base_url}/chat/completions"]
        assert (await openai_upstream.astats())["by_path"]["/v1/chat/completions"] == 1


async def test_a_proxy_that_refuses_is_a_clear_connect_failure(tls_upstream: UpstreamServer,
                                                               trusted_ca: None) -> None:
    from strata_runtime.errors import UpstreamError

    with ProxyProcess(auth="strata:s3cret") as proxy:
        with pytest.raises(UpstreamError) as info:
            await _answer(_https_url(tls_upstream), {"HTTPS_PROXY": proxy.url})
        assert info.value.details["phase"] == "connect"
        assert proxy.stats()["refused"] == 1
