"""Pure parts of the MCP client: back-off, how a tool's answer becomes an outcome, the server config."""

from __future__ import annotations

import pytest
from mcp.types import CallToolResult, ImageContent, TextContent
from pydantic import ValidationError

from strata_runtime.config import McpServerConfig
from strata_runtime.tools.contract import ErrorCode, ToolOutcome
from strata_runtime.tools.mcp_link import backoff_seconds, outcome_of

pytestmark = pytest.mark.unit


def test_backoff_doubles_from_half_a_second_and_stays_under_its_cap() -> None:
    for attempt, base in [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0)]:
        assert 0.8 * base <= backoff_seconds(attempt, cap=30) <= 1.2 * base
    assert all(backoff_seconds(attempt, cap=5) <= 5 for attempt in range(200))


def test_structured_content_is_the_result() -> None:
    result = CallToolResult(content=[TextContent(type="text", text="3")], structured_content={"result": 3})
    assert outcome_of(result) == ToolOutcome.success({"result": 3})


def test_text_only_content_is_joined() -> None:
    result = CallToolResult(content=[TextContent(type="text", text="a"), TextContent(type="text", text="b")])
    assert outcome_of(result) == ToolOutcome.success("a\nb")


def test_other_content_is_kept_as_blocks() -> None:
    result = CallToolResult(content=[ImageContent(type="image", data="aGk=", mime_type="image/png")])
    outcome = outcome_of(result)
    assert outcome.ok and outcome.result[0]["type"] == "image" and outcome.result[0]["mimeType"] == "image/png"


def test_an_error_result_is_a_bounded_upstream_error() -> None:
    result = CallToolResult(content=[TextContent(type="text", text="x" * 10_000)], is_error=True)
    outcome = outcome_of(result)
    assert outcome.error is not None and outcome.error.code == ErrorCode.UPSTREAM_ERROR
    assert len(outcome.error.message) <= 500


@pytest.mark.parametrize("name", ["a.b", "a/b", "", "-x", "x" * 64])
def test_a_server_name_that_would_make_tool_ids_ambiguous_is_refused(name: str) -> None:
    with pytest.raises(ValidationError):
        McpServerConfig.model_validate({"name": name, "url": "http://mcp.example/mcp"})


def test_each_transport_needs_its_address() -> None:
    with pytest.raises(ValidationError, match="needs url"):
        McpServerConfig.model_validate({"name": "a", "transport": "http"})
    with pytest.raises(ValidationError, match="needs command"):
        McpServerConfig.model_validate({"name": "a", "transport": "stdio"})
