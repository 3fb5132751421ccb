"""Envoy's MCP filter metadata as the Check's input (authz.mcp_metadata), and the parser taking it."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from support import http_request, make_config, policy, server_spec

from authz import mcp_metadata, request
from authz.errors import BadRequest, TooLarge, Unavailable
from authz.model import McpRequest

OK: dict[str, Any] = {"status": "mcp_ok", "is_mcp_request": True, "jsonrpc": "2.0"}


def test_the_metadata_is_the_message_with_integral_doubles_as_integers() -> None:
    fields = {**OK, "id": 7.0, "method": "tools/call", "params": {"name": "search", "n": [1.0, 1.5]}}
    assert mcp_metadata.message(fields) == {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {"name": "search", "n": [1, 1.5]},
    }


@pytest.mark.parametrize(
    ("fields", "refusal"),
    [
        ({**OK, "is_exceeding_limit": True, "method": "tools/list"}, TooLarge),  # a half-parsed body
        ({**OK, "status": "parse_error"}, BadRequest),
        ({**OK, "is_mcp_request": False}, BadRequest),
        ({}, BadRequest),
        ({**OK, "method": mcp_metadata.RESPONSE_METHOD}, Unavailable),  # needs the body: fail closed
    ],
)
def test_metadata_of_an_incomplete_or_failed_parse_is_refused(fields: dict[str, Any], refusal: type) -> None:
    with pytest.raises(refusal):
        mcp_metadata.message(fields)


def test_a_server_whose_policy_reads_arguments_needs_the_body() -> None:
    reads = policy({"name": "big", "methods": ["tools/call"], "when": "mcp.arguments.size() < 3"})
    config = make_config(
        servers=[
            server_spec(),
            server_spec("args", "https://mcp.example.com/args", policy=reads),
            server_spec("params", "https://mcp.example.com/params", param_headers={"sql": {"Region": "region"}}),
        ]
    )
    assert mcp_metadata.body_needed(config.servers["mcp"]) is None
    assert "reads the tool arguments" in (mcp_metadata.body_needed(config.servers["args"]) or "")
    assert "Mcp-Param" in (mcp_metadata.body_needed(config.servers["params"]) or "")


def test_the_parser_decides_on_the_metadata_as_on_the_body() -> None:
    server = make_config().servers["mcp"]
    body = {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "search", "arguments": {}}}
    from_body = request.parse(http_request(body), server)
    fields = {**OK, "id": 3.0, "method": "tools/call", "params": {"name": "search"}}
    from_envoy = request.parse(dataclasses.replace(http_request(body), body=None, envoy_mcp=fields), server)
    assert isinstance(from_body, McpRequest) and isinstance(from_envoy, McpRequest)
    assert [(c.method, c.tool, c.id) for c in from_envoy.calls] == [(c.method, c.tool, c.id) for c in from_body.calls]
