"""Acceptance, MCP 2026-07-28 `Mcp-Param-{Name}` headers through real Envoy, on the gRPC and the HTTP front.

The demo server declares `search`'s argument `query` as the header `Mcp-Param-Query` (`servers[].param_headers`,
as a tool whose input schema says `x-mcp-header: Query`), and its policy lets `search` run only where
`mcp.params.Query` is `mcp`. What only Envoy can show: on the HTTP front the declared header reaches the
authorizer (Envoy's `allowed_headers` lists it), and an undeclared `Mcp-Param-*` header travels upstream unread.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from harness import free_port
from stack import Stack, post_call, start_stack

POLICY = {
    "default": "deny",
    "rules": [
        {"name": "protocol", "methods": ["*/list", "ping", "server/discover"]},
        {"name": "query-mcp", "tools": ["search"], "scopes": ["tools:read"], "when": 'mcp.params.Query == "mcp"'},
    ],
}


@pytest.fixture(scope="module", params=["grpc", "http"])
def stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    front = request.param
    started = start_stack(
        request.getfixturevalue("e2e_log_dir"),
        name=f"params-{front}",
        idp=request.getfixturevalue("idp_server"),
        sample_server=request.getfixturevalue("sample_server"),
        authorizer=request.getfixturevalue("authorizer"),
        envoy=request.getfixturevalue("envoy"),
        server={"param_headers": {"search": {"Query": "query"}}, "policy": POLICY},
        envoy_settings={"authorizer": front},
        listen={"http": f"127.0.0.1:{free_port()}"} if front == "http" else None,
    )
    yield started
    started.stop()


def call(stack: Stack, token: str, query: str, *headers: tuple[str, str]) -> Any:
    return post_call(stack, "search", {"query": query}, headers=[("authorization", f"Bearer {token}"), *headers])


def test_the_declared_header_is_checked_against_the_body_and_decides_policy(stack: Stack) -> None:
    stack.clear()
    token = stack.idp_token("m2m-reader", "tools:read")
    allowed = call(stack, token, "mcp", ("mcp-param-query", "mcp"))
    assert allowed.status_code == 200, allowed.text

    forbidden = call(stack, token, "other", ("mcp-param-query", "other"))
    assert forbidden.status_code == 403, forbidden.text

    mismatch = call(stack, token, "other", ("mcp-param-query", "mcp"))  # the header claims what policy allows
    assert mismatch.status_code == 400, mismatch.text
    assert mismatch.json()["error"]["code"] == -32020

    missing = call(stack, token, "mcp")  # 2026-07-28: a set argument's declared header is required
    assert missing.status_code == 400, missing.text
    assert stack.sample.tool_calls() == ["search"]  # only the allowed call ran


def test_an_undeclared_param_header_travels_upstream_unchanged(stack: Stack) -> None:
    stack.clear()
    token = stack.idp_token("m2m-reader", "tools:read")
    allowed = call(stack, token, "mcp", ("mcp-param-query", "mcp"), ("mcp-param-unknown", "=?base64?w6k=?="))
    assert allowed.status_code == 200, allowed.text
    posts = [r for r in stack.sample.requests() if r["method"] == "POST"]
    assert posts[-1]["headers"]["mcp-param-unknown"] == "=?base64?w6k=?="
    assert posts[-1]["headers"]["mcp-param-query"] == "mcp"
