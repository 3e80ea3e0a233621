"""What of an upstream's error may reach a tenant, and which proxy the environment selects (pure logic)."""

from __future__ import annotations

import pytest

from strata_runtime.errors import BadRequest, UpstreamError
from strata_runtime.logs import request_id_from
from strata_runtime.providers.proxy import ProxyRoute, parse_proxy_url, proxy_for
from strata_runtime.providers.upstream_errors import parse_error, scrub

KEY = "sk-proj-Zq8uXb3LmN4pR7tV9wY2aC5eG1iK0oQ6sU"


def test_known_openai_fields_pass_and_the_message_is_kept() -> None:
    info = parse_error({"error": {"message": "This model's maximum context length is 8192 tokens.",
                                  "type": "invalid_request_error", "param": "messages[3].content",
                                  "code": "context_length_exceeded"}})
    assert (info.code, info.type, info.param) == ("context_length_exceeded", "invalid_request_error",
                                                  "messages[3].content")
    assert info.message == "This model's maximum context length is 8192 tokens."


@pytest.mark.parametrize("code", [KEY, "Bearer abc", "weird_new_code", "x" * 300, 42])
def test_an_unknown_code_type_or_param_is_dropped(code: object) -> None:
    info = parse_error({"error": {"message": "no", "type": code, "param": code, "code": code}})
    assert (info.code, info.type, info.param) == (None, None, None)


@pytest.mark.parametrize("message", [
    f"Incorrect API key provided: {KEY}.",
    f"Incorrect API key provided: {KEY[:8]}***************{KEY[-4:]}.",
    f"header was Authorization: Bearer {KEY}",
    "token ghp_A1b2C3d4E5f6G7h8I9j0 leaked",
    "signature 9fQ2xLr7Tz0bWm4KpVn8Yc1Hs6Ju3Ad5 expired",
    "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig was rejected",
])
def test_credential_like_strings_are_scrubbed_from_messages(message: str) -> None:
    cleaned = scrub(message)
    assert "[redacted]" in cleaned
    for secret in (KEY[3:15], "A1b2C3d4E5f6", "9fQ2xLr7Tz0b", "eyJhbGciOiJIUzI1NiJ9"):
        assert secret not in cleaned


def test_the_configured_key_is_scrubbed_whatever_it_looks_like() -> None:
    assert scrub("you sent plainpassword123", secrets=["plainpassword123"]) == "you sent [redacted]"


def test_the_configured_key_is_scrubbed_before_a_long_message_is_cut() -> None:
    """A long random token shrinks to `[redacted]`, so text from past the first cut shows: a key the
    cut went through must not show as its first characters (before: "[redacted] correct-h")."""
    key = "correct-horse-battery-staple"  # nothing credential-like but the configured key itself
    noise = "".join("aB3dE5gH7jK9mN1pQ2sT4vW6yZ8"[i % 27] for i in range(2390))
    cleaned = scrub(noise + " " + key + " was sent", secrets=[key])
    assert cleaned.startswith("[redacted] [redact") and "correct" not in cleaned


def test_ordinary_words_model_names_and_urls_survive_scrubbing() -> None:
    text = ("The model `meta-llama/Meta-Llama-3.1-70B-Instruct` does not exist at https://api.example.com/v1; "
            "see context_length_exceeded_documentation_page for maximum_context_length details")
    assert scrub(text) == text


def test_messages_are_cut_and_control_characters_removed() -> None:
    cleaned = scrub("a\x00b\nc" + "word " * 500)
    assert cleaned.startswith("a b c")
    assert len(cleaned) <= 600


def test_an_upstream_code_overrides_ours_only_when_given() -> None:
    assert BadRequest("x", code="context_length_exceeded").body()["error"]["code"] == "context_length_exceeded"
    assert BadRequest("x", code=None).body()["error"]["code"] == "bad_request"
    body = UpstreamError("x", param="messages").body()["error"]
    assert (body["type"], body["param"]) == ("upstream_error", "messages")


@pytest.mark.parametrize("header", [b"abc-123", b"req_01HZX", b"!~" * 64])
def test_a_valid_request_id_is_kept(header: bytes) -> None:
    assert request_id_from(header) == (header.decode(), True)


@pytest.mark.parametrize("header", [None, b"", b"\xff\xfe", "naïve".encode(), b"has space", b"a\tb", b"x" * 129])
def test_an_invalid_or_missing_request_id_is_replaced_by_a_new_one(header: bytes | None) -> None:
    request_id, from_client = request_id_from(header)
    assert not from_client
    assert request_id.startswith("req_") and len(request_id) == 36


HTTPS = "https://api.openai.com/v1"
HTTP = "http://10.1.2.3:8000/v1"


@pytest.mark.parametrize(("url", "env", "expected"), [
    (HTTPS, {}, None),
    (HTTPS, {"HTTPS_PROXY": "http://proxy:3128"}, ProxyRoute("proxy", 3128)),
    (HTTPS, {"https_proxy": "proxy.lower:8080", "HTTPS_PROXY": "http://upper:1"}, ProxyRoute("proxy.lower", 8080)),
    (HTTPS, {"HTTP_PROXY": "http://proxy:3128"}, None),
    (HTTP, {"HTTP_PROXY": "http://proxy:3128"}, ProxyRoute("proxy", 3128)),
    (HTTP, {"ALL_PROXY": "http://all:1080"}, ProxyRoute("all", 1080)),
    (HTTPS, {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "openai.com"}, None),
    (HTTPS, {"HTTPS_PROXY": "http://p:1", "NO_PROXY": ".openai.com"}, None),
    (HTTPS, {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "notopenai.com"}, ProxyRoute("p", 1)),
    (HTTPS, {"HTTPS_PROXY": "http://p:1", "no_proxy": "*"}, None),
    (HTTPS, {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "api.openai.com:8443"}, ProxyRoute("p", 1)),
    (HTTPS, {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "api.openai.com:443"}, None),
    (HTTP, {"HTTP_PROXY": "http://p:1", "NO_PROXY": "10.0.0.0/8"}, None),
    (HTTP, {"HTTP_PROXY": "http://p:1", "NO_PROXY": "192.168.0.0/16, 10.1.2.3"}, None),
    (HTTP, {"HTTP_PROXY": "http://p:1", "NO_PROXY": "192.168.0.0/16"}, ProxyRoute("p", 1)),
])
def test_the_proxy_is_chosen_like_curl_and_httpx_choose_it(url: str, env: dict[str, str],
                                                           expected: ProxyRoute | None) -> None:
    assert proxy_for(url, env) == expected


def test_proxy_credentials_become_a_basic_proxy_authorization_header() -> None:
    route = parse_proxy_url("http://us%40er:p%3Ass@proxy:3128")
    assert route.authorization == b"Proxy-Authorization: Basic dXNAZXI6cDpzcw==\r\n"


def test_an_https_proxy_url_is_refused_with_a_clear_message() -> None:
    with pytest.raises(ValueError, match="proxy URL must be http"):
        parse_proxy_url("https://proxy:443")
