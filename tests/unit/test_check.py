"""The Check pipeline end to end in-process (authz/check.py, response.py, bearer.py): a Checker built
from parse_config with a development key, HttpRequests built by hand."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from support import (
    METADATA_URL,
    OTHER_RESOURCE,
    STATELESS,
    DevStack,
    dev_stack,
    http_request,
    policy,
    rpc,
    server_spec,
    stateless_headers,
    tool_call,
)

from authz import check as check_module
from authz.errors import FORBIDDEN_CODE, InsufficientScope, RateLimited
from authz.model import Decision, HttpRequest
from authz.response import challenge, deny

WRITE_POLICY = policy(
    {"name": "delete", "tools": ["delete_*"], "scopes": ["tools:write", "offline_access"]},
    {"name": "tools", "tools": ["*"], "scopes": ["tools:read"]},
    {"name": "rest", "methods": ["*"]},
    {"name": "stream", "http_methods": ["GET", "DELETE"]},
)


@pytest.fixture
def stack(tmp_path: Path) -> DevStack:
    return dev_stack(
        tmp_path,
        [server_spec(scopes_supported=["tools:read", "tools:write", "offline_access"], policy=WRITE_POLICY)],
    )


async def run(stack: DevStack, req: HttpRequest) -> Decision:
    return await stack.checker.check(req)


def header(decision: Decision, name: str) -> str | None:
    values = [v for k, v in decision.deny_headers if k == name]
    assert len(values) <= 1
    return values[0] if values else None


def body(decision: Decision) -> Any:
    assert header(decision, "content-type") == "application/json"
    return json.loads(decision.body)


# ---------------------------------------------------------------- 401


async def test_no_token_is_401_with_resource_metadata_and_no_error(stack: DevStack) -> None:
    decision = await run(stack, http_request(tool_call("x")))
    assert (decision.allowed, decision.status, decision.reason) == (False, 401, "token_missing")
    assert header(decision, "www-authenticate") == (
        f'Bearer scope="tools:read tools:write", resource_metadata="{METADATA_URL}"'
    )
    assert "error=" not in (header(decision, "www-authenticate") or "")
    assert body(decision) == {"error": "unauthorized", "error_description": "authorization required"}


async def test_no_token_without_advertised_scopes(tmp_path: Path) -> None:
    stack = dev_stack(tmp_path)
    decision = await run(stack, http_request(method="GET"))
    assert decision.status == 401
    assert header(decision, "www-authenticate") == f'Bearer resource_metadata="{METADATA_URL}"'


@pytest.mark.parametrize(
    ("authorization", "reason"),
    [
        ("Bearer not-a-jwt", "token_segments_invalid"),
        ("Bearer a.b.c", "token_malformed"),
        ("Bearer ", "token_empty"),
        ("Bearer", "token_empty"),
        ("Basic YWxpY2U6c2VjcmV0", "token_malformed"),
        ("Bearer two tokens", "token_malformed"),
    ],
)
async def test_bad_token_is_401_invalid_token(stack: DevStack, authorization: str, reason: str) -> None:
    decision = await run(stack, http_request(tool_call("x"), headers={"authorization": authorization}))
    assert (decision.allowed, decision.status, decision.reason) == (False, 401, reason)
    assert header(decision, "www-authenticate") == f'Bearer error="invalid_token", resource_metadata="{METADATA_URL}"'
    assert body(decision)["error"] == "invalid_token"


async def test_token_for_another_server_is_401(stack: DevStack) -> None:
    token = stack.token(audience=OTHER_RESOURCE, scopes=["tools:read"])
    decision = await run(stack, http_request(tool_call("x"), token=token))
    assert (decision.status, decision.reason) == (401, "token_audience_mismatch")


async def test_lowercase_bearer_scheme_and_padding_are_accepted(stack: DevStack) -> None:
    token = stack.token(scopes=["tools:read"])
    decision = await run(stack, http_request(tool_call("x"), headers={"authorization": f"  bearer   {token}  "}))
    assert decision.allowed


async def test_two_authorization_headers_are_refused(stack: DevStack) -> None:
    token = stack.token(scopes=["tools:read"])
    req = http_request(tool_call("x"), header_values={"authorization": (f"Bearer {token}", f"Bearer {token}")})
    decision = await run(stack, req)
    assert (decision.status, decision.reason) == (401, "token_malformed")


# ---------------------------------------------------------------- 403


async def test_insufficient_scope_is_403_with_step_up_challenge(stack: DevStack) -> None:
    token = stack.token(scopes=["tools:read"])
    decision = await run(stack, http_request(tool_call("delete_repo", id="req-7"), token=token))
    assert (decision.allowed, decision.status, decision.reason, decision.rule) == (
        False,
        403,
        "insufficient_scope",
        "delete",
    )
    assert header(decision, "www-authenticate") == (
        f'Bearer error="insufficient_scope", scope="tools:write", resource_metadata="{METADATA_URL}"'
    )
    assert body(decision) == {
        "jsonrpc": "2.0",
        "id": "req-7",
        "error": {"code": FORBIDDEN_CODE, "message": "insufficient_scope: requires tools:write"},
    }


async def test_policy_refusal_is_403_without_challenge(tmp_path: Path) -> None:
    pol = policy({"name": "no", "tools": ["delete_repo"], "effect": "deny"}, {"name": "all", "methods": ["*"]})
    stack = dev_stack(tmp_path, [server_spec(policy=pol)])
    decision = await run(stack, http_request(tool_call("delete_repo", id=5), token=stack.token()))
    assert (decision.status, decision.reason, decision.rule) == (403, "policy_denied", "no")
    assert header(decision, "www-authenticate") is None
    assert body(decision) == {"jsonrpc": "2.0", "id": 5, "error": {"code": -32001, "message": "Forbidden"}}


async def test_origin_allow_list(tmp_path: Path) -> None:
    stack = dev_stack(tmp_path, [server_spec(origins=["https://app.example"])])
    token = stack.token()
    evil = await run(stack, http_request(rpc("ping"), token=token, headers={"origin": "https://evil.example"}))
    assert (evil.allowed, evil.status, evil.reason) == (False, 403, "origin_not_allowed")
    # refused before the token is even looked at
    no_token = await run(stack, http_request(rpc("ping"), headers={"origin": "http://localhost:1"}))
    assert no_token.reason == "origin_not_allowed"
    good = await run(stack, http_request(rpc("ping"), token=token, headers={"origin": "https://app.example"}))
    assert good.allowed
    assert (await run(stack, http_request(rpc("ping"), token=token))).allowed  # no Origin: not a browser


async def test_server_selection(tmp_path: Path) -> None:
    stack = dev_stack(tmp_path, [server_spec(), server_spec("other", OTHER_RESOURCE)])
    token = stack.token()
    for context in ({}, {"mcp_server": "nope"}):
        decision = await run(stack, http_request(rpc("ping"), token=token, context=context))
        assert (decision.allowed, decision.status, decision.reason, decision.server) == (
            False,
            403,
            "server_unknown",
            None,
        )
    assert (await run(stack, http_request(rpc("ping"), token=token, context={"mcp_server": "mcp"}))).allowed
    other = await run(stack, http_request(rpc("ping"), token=token, context={"mcp_server": "other"}))
    assert (other.reason, other.server) == ("token_audience_mismatch", "other")


async def test_single_server_needs_no_context(tmp_path: Path) -> None:
    stack = dev_stack(tmp_path)
    assert (await run(stack, http_request(rpc("ping"), token=stack.token()))).allowed
    unknown = await run(stack, http_request(rpc("ping"), token=stack.token(), context={"mcp_server": "x"}))
    assert unknown.reason == "server_unknown"


# ---------------------------------------------------------------- 400


async def test_bad_requests_are_400_with_the_request_id(stack: DevStack) -> None:
    token = stack.token(scopes=["tools:read"])
    decision = await run(stack, http_request(rpc("tools/call", {"arguments": {}}, id=42), token=token))
    assert (decision.status, decision.reason) == (400, "params_invalid")
    assert body(decision) == {
        "jsonrpc": "2.0",
        "id": 42,
        "error": {"code": -32602, "message": "Bad Request: params_invalid"},
    }
    assert header(decision, "www-authenticate") is None

    mismatch = await run(
        stack, http_request(tool_call("delete_repo", id="a"), token=token, headers=stateless_headers("tools/call", "x"))
    )
    assert (mismatch.status, body(mismatch)["id"], body(mismatch)["error"]["code"]) == (400, "a", -32020)

    unparsable = await run(stack, http_request(b"{", token=token))
    assert body(unparsable) == {
        "jsonrpc": "2.0",
        "id": None,
        "error": {"code": -32700, "message": "Bad Request: body_invalid"},
    }


async def test_unsupported_revision_names_the_accepted_ones(tmp_path: Path) -> None:
    stack = dev_stack(tmp_path, [server_spec(revisions=["2025-06-18", "2025-11-25"])])
    decision = await run(stack, http_request(rpc("tools/list", id=3), token=stack.token(), revision=STATELESS))
    assert decision.status == 400
    assert body(decision) == {
        "jsonrpc": "2.0",
        "id": 3,
        "error": {
            "code": -32022,
            "message": "Bad Request: revision_unsupported",
            "data": {"supported": ["2025-06-18", "2025-11-25"], "requested": STATELESS},
        },
    }


async def test_token_is_checked_before_the_body(stack: DevStack) -> None:
    decision = await run(stack, http_request(b"{not json"))
    assert decision.status == 401


# ---------------------------------------------------------------- allow


async def test_allow_sets_identity_and_removes_the_token(stack: DevStack) -> None:
    token = stack.token(scopes=["tools:write", "tools:read"], client_id="app-1")
    req = http_request(tool_call("search", id=1), token=token, headers={"x-mcp-subject": "root"})
    decision = await run(stack, req)
    assert (decision.allowed, decision.status, decision.reason, decision.rule) == (True, 200, "allowed", "tools")
    assert dict(decision.set_headers) == {
        "x-mcp-subject": "alice",
        "x-mcp-client-id": "app-1",
        "x-mcp-scopes": "tools:read tools:write",
        "x-mcp-issuer": "https://issuer.test",
    }
    assert decision.remove_headers == ("authorization",)
    assert decision.caller is not None and decision.caller.subject == "alice"
    assert decision.mcp is not None and decision.mcp.calls[0].tool == "search"
    assert decision.deny_headers == () and decision.body == b""


async def test_allow_removes_identity_headers_the_caller_lacks(tmp_path: Path) -> None:
    headers = {"subject": "X-User", "client_id": "x-client", "scopes": "x-scopes", "issuer": "x-iss"}
    stack = dev_stack(tmp_path, [server_spec(identity_headers=headers)])
    token = stack.token(scopes=[])  # no scopes
    req = http_request(rpc("ping"), token=token, headers={"x-scopes": "admin", "x-user": "root"})
    decision = await run(stack, req)
    assert decision.allowed
    assert dict(decision.set_headers) == {"x-user": "alice", "x-client": "dev-cli", "x-iss": "https://issuer.test"}
    assert set(decision.remove_headers) == {"authorization", "x-scopes"}


async def test_get_and_delete(stack: DevStack) -> None:
    assert (await run(stack, http_request(method="GET"))).status == 401
    decision = await run(stack, http_request(method="DELETE", token=stack.token(), headers={"mcp-session-id": "s"}))
    assert (decision.allowed, decision.rule) == (True, "stream")
    assert decision.mcp is not None and decision.mcp.session_id == "s"


async def test_optional_mode(tmp_path: Path) -> None:
    pol = policy({"name": "public", "methods": ["tools/list"]}, {"name": "tools", "tools": ["*"], "scopes": ["t"]})
    stack = dev_stack(tmp_path, [server_spec(mode="optional", policy=pol)])
    anon = await run(stack, http_request(rpc("tools/list"), headers={"x-mcp-subject": "root"}))
    assert (anon.allowed, anon.set_headers) == (True, ())
    assert set(anon.remove_headers) == {
        "authorization",
        "x-mcp-subject",
        "x-mcp-client-id",
        "x-mcp-scopes",
        "x-mcp-issuer",
    }
    needs_token = await run(stack, http_request(tool_call("x")))
    assert (needs_token.status, needs_token.reason) == (401, "token_missing")
    bad = await run(stack, http_request(rpc("tools/list"), token="a.b.c"))
    assert (bad.status, bad.reason) == (401, "token_malformed")


async def test_permissive_mode(tmp_path: Path) -> None:
    pol = policy({"name": "public", "methods": ["tools/list"]}, {"name": "tools", "tools": ["*"], "scopes": ["t"]})
    stack = dev_stack(tmp_path, [server_spec(mode="permissive", policy=pol)])
    bad = await run(stack, http_request(rpc("tools/list"), token="a.b.c"))
    assert bad.allowed and bad.caller is not None and bad.caller.anonymous
    assert "authorization" in bad.remove_headers
    assert (await run(stack, http_request(tool_call("x"), token="a.b.c"))).status == 401


# ---------------------------------------------------------------- fail closed


@pytest.mark.parametrize("where", ["authorize", "identify", "parse", "allow"])
async def test_internal_error_denies_with_failure_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str, caplog: pytest.LogCaptureFixture
) -> None:
    stack = dev_stack(tmp_path, failure_status=500)

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom")

    async def aboom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom")

    if where == "authorize":
        monkeypatch.setattr(check_module, "authorize", boom)
    elif where == "identify":
        broken = dataclasses.replace(stack.checker.stages, identity=SimpleNamespace(identify=aboom))
        monkeypatch.setattr(stack.checker, "stages", broken)  # a stage handed in that raises
    elif where == "parse":
        monkeypatch.setattr(check_module.request, "parse", boom)
    else:
        monkeypatch.setattr(check_module.response, "allow", boom)
    decision = await run(stack, http_request(rpc("ping", id=1), token=stack.token()))
    assert (decision.allowed, decision.status, decision.reason) == (False, 500, "internal_error")
    assert decision.server == "mcp"
    assert body(decision)["error"]["code"] == FORBIDDEN_CODE
    assert "boom" in decision.detail and "boom" not in decision.body.decode()
    assert "internal error in Check" in caplog.text


async def test_default_failure_status_is_503(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stack = dev_stack(tmp_path)

    async def broken_verify(*args: Any) -> Any:
        raise KeyError("jwks")

    monkeypatch.setattr(stack.checker.stages.identity.verifier, "verify", broken_verify)
    decision = await run(stack, http_request(rpc("ping"), token=stack.token()))
    assert (decision.allowed, decision.status, decision.reason) == (False, 503, "internal_error")


# ---------------------------------------------------------------- response details


def test_challenge_quoting_and_rate_limit(tmp_path: Path) -> None:
    stack = dev_stack(tmp_path, [server_spec(resource='https://mcp.test/a"b')])
    server = stack.config.servers["mcp"]
    www = challenge(InsufficientScope(('x"y',)), server)
    assert (
        www
        == 'Bearer error="insufficient_scope", scope="x\\"y", resource_metadata="https://mcp.test/.well-known/oauth-protected-resource/a\\"b"'
    )
    limited = deny(RateLimited(7), server, None)
    assert (limited.status, dict(limited.deny_headers)["retry-after"]) == (429, "7")
    assert "www-authenticate" not in dict(limited.deny_headers)


def test_identity_claim_with_control_characters_is_refused_not_forwarded() -> None:
    from authz.config.load import parse_config
    from authz.errors import Forbidden
    from authz.model import Caller
    from authz.response import allow

    config = parse_config(
        "issuers: [{name: a, issuer: 'https://idp.example'}]\n"
        "servers: [{name: s, resource: 'https://mcp.example/mcp'}]\n"
    )
    caller = Caller(subject="alice\r\nx-mcp-subject: root", claims={}, scopes=frozenset())
    with pytest.raises(Forbidden) as refused:
        allow(config.servers["s"], caller, None, None)  # type: ignore[arg-type]
    assert refused.value.reason == "identity_unrepresentable"
