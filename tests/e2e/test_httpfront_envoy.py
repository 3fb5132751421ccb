"""The HTTP ext_authz fast path end to end: a real Envoy 1.40 rendered with ``envoy.authorizer: http``,
``mcp-authz serve`` with ``listen.http``, and the sample MCP server behind them.

What only a real Envoy can show: the route metadata reaches the authorizer as ``x-mcp-authz-server``
(and a client's own copy does not), ``x-envoy-auth-headers-to-remove`` strips the token upstream,
``allowed_upstream_headers`` overwrites the client's identity headers, and denials keep their
status, ``WWW-Authenticate`` and body.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness import Authorizer, Envoy, Factory, RawMcp, SampleServer, free_port

from authz.config.load import parse_config
from authz.identity.devkey import ensure_key, mint
from authz.render.envoy import render_envoy_yaml

SUBJECT = "alice@example.test"


@dataclass(frozen=True)
class Stack:
    envoy: Envoy
    authorizer: Authorizer
    sample: SampleServer
    key: Path
    base: str

    @property
    def resource(self) -> str:
        return f"{self.base}/mcp"

    @property
    def url(self) -> str:
        return self.resource

    def token(self, scopes: list[str], *, audience: str | None = None, subject: str = SUBJECT) -> str:
        return mint(
            self.key, issuer=f"{self.base}/dev", audience=audience or self.resource, subject=subject, scopes=scopes
        )

    def upstream_calls(self, tool: str) -> list[dict[str, str]]:
        """Headers of the tools/call requests for ``tool`` that reached the sample server."""
        return [
            r["headers"]
            for r in self.sample.requests()
            if r["headers"].get("mcp-method") == "tools/call" and r["headers"].get("mcp-name") == tool
        ]


def authz_config(base: str, envoy_port: int, key: Path, upstream: str, **listen: str) -> dict[str, Any]:
    return {
        "listen": {
            "grpc": f"127.0.0.1:{free_port()}",
            "http": f"127.0.0.1:{free_port()}",
            "discovery": f"127.0.0.1:{free_port()}",
            **listen,
        },
        "issuers": [{"name": "dev", "issuer": f"{base}/dev", "local_key_file": str(key)}],
        "servers": [
            {
                "name": "sample",
                "resource": f"{base}/mcp",
                "upstream": upstream,
                "scopes_supported": ["tools:read", "tools:admin"],
                "policy": {
                    "default": "deny",
                    "rules": [
                        {"name": "protocol", "methods": ["initialize", "ping", "notifications/*", "*/list"]},
                        {"name": "read", "tools": ["search", "echo_headers"], "scopes": ["tools:read"]},
                        {"name": "admin", "tools": ["delete_repo"], "scopes": ["tools:admin"]},
                    ],
                },
            },
            {
                # A second server, so the authorizer cannot fall back to "the only one": every
                # allow below proves the route metadata named the server.
                "name": "locked",
                "resource": f"{base}/locked",
                "upstream": upstream,
                "policy": {"default": "deny", "rules": []},
            },
        ],
        "log_level": "debug",
        "envoy": {
            "listen": f"127.0.0.1:{envoy_port}",
            "admin_port": free_port(),
            "authorizer": "http",
        },
    }


def start_stack(
    tmp: Path,
    sample: SampleServer,
    authorizer: Factory[Authorizer] | None,
    envoy: Factory[Envoy],
    **listen: str,
) -> tuple[Envoy, Authorizer | None, Path, str]:
    key = ensure_key(tmp / "signing-key.pem")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    spec = authz_config(base, port, key, sample.upstream, **listen)
    text = yaml.safe_dump(spec, sort_keys=False)
    running = authorizer(text) if authorizer is not None else None
    front = envoy(render_envoy_yaml(parse_config(text, "e2e-http.yaml")))
    return front, running, key, base


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    sample_server: Factory[SampleServer],
    envoy: Factory[Envoy],
    authorizer: Factory[Authorizer],
) -> Iterator[Stack]:
    sample = sample_server(json_response=True)
    front, running, key, base = start_stack(tmp_path_factory.mktemp("http"), sample, authorizer, envoy)
    assert running is not None
    yield Stack(front, running, sample, key, base)


@pytest.fixture
def fresh(stack: Stack) -> Stack:
    stack.sample.clear_logs()
    return stack


async def test_allow_reaches_upstream_with_identity_and_without_the_token(fresh: Stack) -> None:
    async with RawMcp(fresh.url, token=fresh.token(["tools:read"])) as mcp:
        response = await mcp.call_tool("search", {"query": "readme"})
    assert response.status == 200, response.text
    assert "result" in response.message
    [headers] = fresh.upstream_calls("search")
    assert "authorization" not in headers
    assert headers["x-mcp-subject"] == SUBJECT
    assert headers["x-mcp-scopes"] == "tools:read"
    assert headers["x-mcp-client-id"] == "dev-cli"
    assert not [h for h in headers if h.startswith("x-mcp-authz-")]
    assert fresh.sample.tool_calls() == ["search"]


async def test_client_identity_headers_never_reach_upstream(fresh: Stack) -> None:
    forged = {
        "x-mcp-subject": "mallory",
        "x-mcp-scopes": "tools:admin",
        "x-mcp-issuer": "https://evil.test",
        "x-mcp-authz-server": "locked",  # would deny if it reached the authorizer
    }
    async with RawMcp(fresh.url, token=fresh.token(["tools:read"]), headers=forged) as mcp:
        response = await mcp.call_tool("search", {"query": "x"})
    assert response.status == 200, response.text
    [headers] = fresh.upstream_calls("search")
    assert headers["x-mcp-subject"] == SUBJECT  # overwritten, not appended
    assert headers["x-mcp-scopes"] == "tools:read"
    assert headers["x-mcp-issuer"] == f"{fresh.base}/dev"
    assert "mallory" not in str(headers)


async def test_no_token_is_401_with_resource_metadata(fresh: Stack) -> None:
    async with RawMcp(fresh.url) as mcp:
        response = await mcp.call_tool("search", {"query": "x"})
    assert response.status == 401
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    assert f'resource_metadata="{fresh.base}/.well-known/oauth-protected-resource/mcp"' in challenge
    assert "error=" not in challenge  # RFC 6750 §3.1: no error code when no token was sent
    assert response.headers["content-type"] == "application/json"
    assert fresh.sample.requests() == []


async def test_forbidden_tool_is_403_insufficient_scope(fresh: Stack) -> None:
    async with RawMcp(fresh.url, token=fresh.token(["tools:read"])) as mcp:
        response = await mcp.call_tool("delete_repo", {"name": "x"})
    assert response.status == 403
    challenge = response.headers["www-authenticate"]
    assert 'error="insufficient_scope"' in challenge
    assert 'scope="tools:admin"' in challenge
    assert "resource_metadata=" in challenge
    assert response.message["error"]["message"].startswith("insufficient_scope")
    assert response.message["id"] is not None
    assert fresh.sample.requests() == []


async def test_bad_token_is_401_invalid_token(fresh: Stack) -> None:
    wrong_audience = fresh.token(["tools:read"], audience=f"{fresh.base}/locked")
    async with RawMcp(fresh.url, token=wrong_audience) as mcp:
        response = await mcp.call_tool("search", {"query": "x"})
    assert response.status == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


async def test_the_route_names_the_server(fresh: Stack) -> None:
    """The same token at the other server's path is checked against that server (audience, policy)."""
    locked = f"{fresh.base}/locked"
    async with RawMcp(locked, token=fresh.token(["tools:read"], audience=locked)) as mcp:
        response = await mcp.call_tool("search", {"query": "x"})
    assert response.status == 403  # the locked server's policy denies everything


async def test_list_and_header_mismatch(fresh: Stack) -> None:
    async with RawMcp(fresh.url, token=fresh.token(["tools:read"])) as mcp:
        listed = await mcp.request("tools/list")
        mismatch = await mcp.call_tool("search", {"query": "x"}, headers={"mcp-name": "delete_repo"})
    assert listed.status == 200
    assert mismatch.status == 400
    assert mismatch.message["error"]["code"] == -32020


async def test_authorizer_down_is_503(
    tmp_path: Path, sample_server: Factory[SampleServer], envoy: Factory[Envoy], stack: Stack
) -> None:
    front, _, key, base = start_stack(tmp_path, stack.sample, None, envoy)
    token = mint(key, issuer=f"{base}/dev", audience=f"{base}/mcp", subject=SUBJECT, scopes=["tools:read"])
    async with RawMcp(front.url("/mcp"), token=token) as mcp:
        response = await mcp.call_tool("search", {"query": "x"})
    assert response.status == 503
    front.proc.stop()
