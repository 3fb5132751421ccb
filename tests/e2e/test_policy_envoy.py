"""Acceptance, policy: the rules of examples/config.yaml with the real identity provider as issuer,
through real Envoy, with the `mcp` SDK client where a client is the point and raw HTTP where the
request is one no SDK would send.

The server here advertises only `tools:read` (RFC 9728 `scopes_supported`, hence the 401
challenge): clients start least-privileged, and `tools:write` comes by step-up when an operation
needs it (a `403 insufficient_scope` naming it).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest
from harness import (
    Authorizer,
    Envoy,
    Factory,
    IdP,
    InMemoryTokenStorage,
    LoginDriver,
    RawMcp,
    SampleServer,
    auth_code_provider,
    mcp_client,
)
from mcp.shared.exceptions import MCPError
from stack import ACCEPT, Stack, challenge_params, post_call, start_stack


@pytest.fixture(scope="module")
def stack(
    e2e_log_dir: Path,
    idp_server: IdP,
    sample_server: Factory[SampleServer],
    authorizer: Factory[Authorizer],
    envoy: Factory[Envoy],
) -> Iterator[Stack]:
    started = start_stack(
        e2e_log_dir,
        name="policy",
        idp=idp_server,
        sample_server=sample_server,
        authorizer=authorizer,
        envoy=envoy,
        server={"scopes_supported": ["tools:read"]},
    )
    yield started
    started.stop()


@pytest.fixture
def pol(stack: Stack) -> Stack:
    stack.clear()
    return stack


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def scopes_of(token: str) -> set[str]:
    return set(jwt.decode(token, options={"verify_signature": False})["scope"].split())


def without_offline(scope: str) -> set[str]:
    return set(scope.split()) - {"offline_access"}


# ---------------------------------------------------------------- scopes and step-up


async def test_read_scope_may_search_but_not_delete(pol: Stack) -> None:
    token = pol.idp_token("m2m-reader", "tools:read")
    assert pol.sample.tool_calls() == []
    allowed = post_call(pol, "search", {"query": "x"}, headers=bearer(token))
    assert allowed.status_code == 200, allowed.text

    before = len(pol.decisions())
    refused = post_call(pol, "delete_repo", {"repo": "sample"}, headers=bearer(token))
    assert refused.status_code == 403
    params = challenge_params(refused.headers["www-authenticate"])
    assert params == {
        "error": "insufficient_scope",
        "scope": "tools:write",  # what this operation needs, not what the token has (SEP-2350)
        "resource_metadata": f"{pol.base_url}/.well-known/oauth-protected-resource/mcp",
    }
    body = refused.json()
    assert body["jsonrpc"] == "2.0" and body["id"] == 1  # the refused request's id
    assert "tools:write" in body["error"]["message"]
    denial = pol.last_denial(before)
    assert (denial["reason"], denial["rule"], denial["mcp_name"]) == (
        "insufficient_scope",
        "write-tools",
        "delete_repo",
    )
    assert pol.sample.tool_calls() == ["search"]


async def test_sdk_client_steps_up_for_the_scope_in_the_challenge(pol: Stack) -> None:
    storage = InMemoryTokenStorage()
    driver = LoginDriver("bob")
    provider = auth_code_provider(pol.url, driver, storage=storage)
    async with mcp_client(pol.url, auth=provider) as client:
        searched = await client.call_tool("search", {"query": "readme"})
        assert not searched.is_error
        assert storage.tokens is not None
        assert scopes_of(storage.tokens.access_token) == {"tools:read"}
        assert pol.sample.tool_calls() == ["search"]
        before = len(pol.decisions())

        deleted = await client.call_tool("delete_repo", {"repo": "sample"})
        assert not deleted.is_error
        assert deleted.content[0].text == "deleted sample"  # type: ignore[union-attr]

    # One 403 insufficient_scope, then a second login asking for the union of scopes, then the call.
    denials = [d for d in pol.decisions()[before:] if d["message"] == "deny"]
    assert [(d["status"], d["reason"], d.get("mcp_name")) for d in denials] == [
        (403, "insufficient_scope", "delete_repo")
    ]
    assert len(driver.authorization_urls) == 2
    first, second = ({k: v[0] for k, v in parse_qs(urlsplit(u).query).items()} for u in driver.authorization_urls)
    assert without_offline(first["scope"]) == {"tools:read"}
    assert without_offline(second["scope"]) == {"tools:read", "tools:write"}
    assert scopes_of(storage.tokens.access_token) == {"tools:read", "tools:write"}

    # delete_repo ran once, and only with the stepped-up token.
    assert pol.sample.tool_calls() == ["search", "delete_repo"]
    deletes = [r["headers"] for r in pol.sample.requests() if r["headers"].get("mcp-name") == "delete_repo"]
    assert len(deletes) == 1
    assert set(deletes[0]["x-mcp-scopes"].split()) >= {"tools:read", "tools:write"}
    assert deletes[0]["x-mcp-subject"] == "bob"


# ---------------------------------------------------------------- a rule on a claim


async def test_claim_rule_allows_admins_only_with_the_same_scopes(pol: Stack) -> None:
    admin = pol.idp_token("m2m-admin", "tools:read tools:write")
    writer = pol.idp_token("m2m-writer", "tools:read tools:write")
    assert scopes_of(admin) == scopes_of(writer) == {"tools:read", "tools:write"}

    before = len(pol.decisions())
    refused = post_call(pol, "admin_reset", {}, headers=bearer(writer))
    assert refused.status_code == 403
    # Not a scope problem: no challenge, so a client does not try to re-authorize.
    assert "www-authenticate" not in refused.headers
    assert refused.json()["id"] == 1
    denial = pol.last_denial(before)
    assert (denial["reason"], denial["rule"]) == ("policy_condition_failed", "admin-only")
    assert pol.sample.tool_calls() == []

    allowed = post_call(pol, "admin_reset", {}, headers=bearer(admin))
    assert allowed.status_code == 200, allowed.text
    assert pol.sample.tool_calls() == ["admin_reset"]


@pytest.mark.parametrize(("login", "allowed"), [("admin-dana", True), ("erin", False)])
async def test_claim_rule_with_sdk_logins(pol: Stack, login: str, allowed: bool) -> None:
    """Users from the login form: names starting with `admin` get `groups: ["admins"]`."""
    storage = InMemoryTokenStorage()
    provider = auth_code_provider(pol.url, LoginDriver(login), storage=storage)
    async with mcp_client(pol.url, auth=provider) as client:
        if allowed:
            result = await client.call_tool("admin_reset", {})
            assert not result.is_error
        else:
            with pytest.raises(MCPError):
                await client.call_tool("admin_reset", {})
    # Both stepped up to tools:write first; only the group decides.
    assert storage.tokens is not None
    assert scopes_of(storage.tokens.access_token) == {"tools:read", "tools:write"}
    assert pol.sample.tool_calls() == (["admin_reset"] if allowed else [])
    if not allowed:
        assert pol.decisions()[-1]["reason"] == "policy_condition_failed"


# ---------------------------------------------------------------- batches (2025-03-26)


async def test_a_batch_with_one_forbidden_call_is_refused_whole(pol: Stack) -> None:
    token = pol.idp_token("m2m-reader", "tools:read")
    async with RawMcp(pol.url, protocol_version="2025-03-26", token=token) as raw:
        init = await raw.initialize()
        assert init.status == 200, init.text
        assert raw.session_id
        headers = {"content-type": "application/json", "mcp-protocol-version": "2025-03-26"}
        headers["mcp-session-id"] = raw.session_id

        def call(request_id: int, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
            params = {"name": tool, "arguments": arguments}
            return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}

        pol.clear()
        before = len(pol.decisions())
        mixed = [call(10, "search", {"query": "x"}), call(11, "delete_repo", {"repo": "sample"})]
        refused = await raw.post(mixed, headers=headers)
        assert refused.status == 403
        assert challenge_params(refused.headers["www-authenticate"])["scope"] == "tools:write"
        assert pol.last_denial(before)["reason"] == "insufficient_scope"
        assert pol.sample.requests() == []  # not even the allowed half

        # The control: the same batch without the forbidden call passes the authorizer and reaches
        # the server (which, being the mcp 2.x SDK, answers a batch itself with 400: it takes none).
        harmless = [call(12, "search", {"query": "x"}), call(13, "read_file", {"path": "src/main.py"})]
        passed = await raw.post(harmless, headers=headers)
        assert passed.status != 403, passed.text
        assert len(pol.sample.requests()) == 1
        assert pol.sample.requests()[0]["headers"]["x-mcp-subject"] == "m2m-reader"
    assert "delete_repo" not in pol.sample.tool_calls()


# ---------------------------------------------------------------- malformed requests


def raw_post(stack: Stack, body: bytes, content_type: str = "application/json") -> httpx.Response:
    headers = {"content-type": content_type, "accept": ACCEPT}
    headers["authorization"] = f"Bearer {stack.dev_token(scopes=('tools:read', 'tools:write'))}"
    return httpx.post(stack.url, content=body, headers=headers, timeout=10.0)


def dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


MALFORMED: dict[str, tuple[bytes, str, int | None, str]] = {
    # name: (body, content type, JSON-RPC error code, reason)
    "not-json": (b'{"jsonrpc": "2.0", "id": 1, "method": ', "application/json", -32700, "body_invalid"),
    "not-utf8": (b'{"jsonrpc": "2.0", "id": 1, "method": "\xff"}', "application/json", -32700, "body_invalid"),
    "jsonrpc-1.0": (
        dumps({"jsonrpc": "1.0", "id": 1, "method": "tools/list"}),
        "application/json",
        -32600,
        "jsonrpc_invalid",
    ),
    "no-jsonrpc-member": (dumps({"id": 1, "method": "tools/list"}), "application/json", -32600, "jsonrpc_invalid"),
    "json-array-of-numbers": (b"[1, 2]", "application/json", -32600, "jsonrpc_invalid"),
    "text-plain": (
        dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}),
        "text/plain",
        -32600,
        "content_type_invalid",
    ),
    "tools-call-without-name": (
        dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"arguments": {}}}),
        "application/json",
        -32602,
        "params_invalid",
    ),
    # Two parsers, two answers: the last "name" wins in most, the first in some. Refused outright.
    "duplicate-name-key": (
        b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call",'
        b' "params": {"name": "search", "name": "delete_repo", "arguments": {}}}',
        "application/json",
        -32700,
        "body_duplicate_key",
    ),
    "empty-body": (b"", "application/json", None, "body_missing"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
async def test_malformed_requests_get_400_and_never_reach_the_server(pol: Stack, case: str) -> None:
    body, content_type, code, reason = MALFORMED[case]
    before = len(pol.decisions())
    response = raw_post(pol, body, content_type)
    assert response.status_code == 400, response.text
    if code is not None:
        assert response.json()["error"]["code"] == code
    denial = pol.last_denial(before)
    assert denial["status"] == 400
    if reason:
        assert denial["reason"] == reason
    assert pol.sample.requests() == []


async def test_a_body_over_max_request_bytes_gets_413_from_envoy(pol: Stack) -> None:
    before = len(pol.decisions())
    arguments = {"query": "x" * pol.max_request_bytes}
    big = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "search", "arguments": arguments}}
    response = raw_post(pol, dumps(big))
    assert response.status_code == 413
    assert len(pol.decisions()) == before  # Envoy refused it before any Check
    assert pol.sample.requests() == []


# ---------------------------------------------------------------- Origin (DNS rebinding)


@pytest.mark.parametrize(
    ("origin", "status"),
    [
        ("http://evil.example", 403),
        ("null", 403),
        ("http://127.0.0.1:1", 403),  # right host, wrong port
        ("own", 200),
        ("localhost", 200),
        (None, 200),  # not a browser: no Origin, nothing to check
    ],
)
async def test_origin_allow_list(pol: Stack, origin: str | None, status: int) -> None:
    token = pol.idp_token("m2m-reader", "tools:read")
    headers = bearer(token)
    if origin == "own":
        origin = pol.base_url
    elif origin == "localhost":
        origin = f"http://localhost:{pol.port}"
    if origin is not None:
        headers.append(("origin", origin))
    before = len(pol.decisions())
    response = post_call(pol, "search", {"query": "x"}, headers=headers)
    assert response.status_code == status, response.text
    if status == 403:
        assert pol.last_denial(before)["reason"] == "origin_not_allowed"
        assert pol.sample.requests() == []
    else:
        assert pol.sample.tool_calls() == ["search"]
