"""Audit events (authz/audit.py): the fields of one event per decision, the argument allow-list,
no token text, traceparent parsing, and an Auditor that never raises into the Check."""

from __future__ import annotations

import io
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from support import DevStack, dev_stack, http_request, make_checker, policy, rpc, server_spec, tool_call

from authz.model import Decision, HttpRequest
from authz.observe.audit import STREAM, Auditor, session_fingerprint, trace_id

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE}-00f067aa0ba902b7-01"


@pytest.fixture
def stack(tmp_path: Path) -> DevStack:
    rules = policy(
        {"name": "delete", "tools": ["delete_*"], "scopes": ["tools:write"]},
        {"name": "tools", "tools": ["*"], "scopes": ["tools:read"]},
        {"name": "rest", "methods": ["*"]},
    )
    return dev_stack(tmp_path, [server_spec(scopes_supported=["tools:read", "tools:write"], policy=rules)])


async def audit(stack: DevStack, req: HttpRequest, argument_keys: tuple[str, ...] = ()) -> tuple[str, dict[str, Any]]:
    """The audit line a Check of ``req`` writes, raw and parsed."""
    out = io.StringIO()
    decision = await stack.checker.check(req)
    Auditor(argument_keys=argument_keys, out=out)(req, decision)
    text = out.getvalue()
    assert text.endswith("\n") and text.count("\n") == 1
    return text, json.loads(text)


async def test_allow_event_has_every_field(stack: DevStack) -> None:
    token = stack.token(scopes=["tools:read"])
    req = http_request(
        tool_call("search", id=3, query="secret words"),
        token=token,
        headers={"x-request-id": "rid-1", "traceparent": TRACEPARENT, "mcp-session-id": "s-1"},
    )
    line, ev = await audit(stack, req)
    assert ev["stream"] == STREAM
    assert datetime.fromisoformat(ev["time"]).utcoffset() is not None and ev["time"].endswith("Z")
    assert (ev["decision"], ev["reason"], ev["status"], ev["rule"]) == ("allow", "allowed", 200, "tools")
    assert (ev["subject"], ev["client_id"], ev["issuer"], ev["identity_mode"]) == (
        "alice",
        "dev-cli",
        "https://issuer.test",
        "jwt",
    )
    assert (ev["server"], ev["method"], ev["tool"], ev["resource"], ev["prompt"]) == (
        "mcp",
        "tools/call",
        "search",
        None,
        None,
    )
    # the session id is a bearer secret: the event names it by the fingerprint the logs use
    assert (ev["request_id"], ev["trace_id"], ev["session"]) == ("rid-1", TRACE, session_fingerprint("s-1"))
    assert "session_id" not in ev and '"s-1"' not in line
    assert ev["revision"] and ev["http_method"] == "POST"
    assert ev["arguments"] is None
    assert token not in line and "secret words" not in line and "authorization" not in line.lower()


async def test_insufficient_scope_deny(stack: DevStack) -> None:
    token = stack.token(scopes=["tools:read"])
    line, ev = await audit(stack, http_request(tool_call("delete_repo"), token=token))
    assert (ev["decision"], ev["reason"], ev["status"], ev["rule"]) == ("deny", "insufficient_scope", 403, "delete")
    assert (ev["server"], ev["method"], ev["tool"]) == ("mcp", "tools/call", "delete_repo")
    assert ev["trace_id"] is None and ev["request_id"] is None
    assert token not in line


async def test_malformed_body_is_400(stack: DevStack) -> None:
    token = stack.token(scopes=["tools:read"])
    line, ev = await audit(stack, http_request(b"{not json", token=token))
    assert (ev["decision"], ev["status"]) == ("deny", 400)
    assert ev["reason"] and ev["method"] is None
    assert token not in line


async def test_401_without_token(stack: DevStack) -> None:
    _, ev = await audit(stack, http_request(tool_call("x")))
    assert (ev["decision"], ev["reason"], ev["status"]) == ("deny", "token_missing", 401)
    assert ev["subject"] is None and ev["client_id"] is None


async def test_401_with_bad_token_never_shows_it(stack: DevStack) -> None:
    token = stack.token(scopes=["tools:read"])
    tampered = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    line, ev = await audit(stack, http_request(tool_call("x"), token=tampered))
    assert (ev["decision"], ev["status"]) == ("deny", 401)
    assert ev["subject"] is None
    for part in tampered.split("."):
        assert part not in line


async def test_argument_allow_list(stack: DevStack) -> None:
    token = stack.token(scopes=["tools:read"])
    req = http_request(tool_call("search", repo="mcp-authz", password="hunter2"), token=token)
    line, ev = await audit(stack, req, argument_keys=("repo", "absent"))
    assert ev["arguments"] == {"repo": "mcp-authz"}
    assert "hunter2" not in line and "password" not in line


async def test_batch_lists_its_methods(stack: DevStack) -> None:
    token = stack.token(scopes=["tools:read"])
    batch = [rpc("tools/list", id=1), tool_call("search", id=2)]
    _, ev = await audit(stack, http_request(batch, token=token, revision="2025-03-26"))
    assert (ev["decision"], ev["method"], ev["batch_size"], ev["tool"]) == (
        "allow",
        ["tools/list", "tools/call"],
        2,
        None,
    )


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (TRACEPARENT, TRACE),
        (f"01-{TRACE}-00f067aa0ba902b7-01-extra", TRACE),
        (None, None),
        ("", None),
        ("garbage", None),
        (f"00-{TRACE.upper()}-00f067aa0ba902b7-01", None),
        (f"00-{'0' * 32}-00f067aa0ba902b7-01", None),
        (f"00-{TRACE}-{'0' * 16}-01", None),
        (f"ff-{TRACE}-00f067aa0ba902b7-01", None),
        (f"00-{TRACE}-00f067aa0ba902b7-01-extra", None),
        (f"00-{TRACE[:-1]}-00f067aa0ba902b7-01", None),
    ],
)
def test_traceparent(header: str | None, expected: str | None) -> None:
    assert trace_id(header) == expected


def test_disabled_writes_nothing() -> None:
    out = io.StringIO()
    Auditor(enabled=False, out=out)(http_request(), Decision(allowed=True, status=200, reason="allowed"))
    assert out.getvalue() == ""


def test_write_errors_are_counted_not_raised() -> None:
    class Broken(io.StringIO):
        def write(self, s: str) -> int:
            raise OSError("stdout closed")

    auditor = Auditor(out=Broken())
    auditor(http_request(), Decision(allowed=False, status=503, reason="internal_error"))
    assert auditor.errors == 1


async def test_denied_event_names_the_identified_caller(tmp_path: Path) -> None:
    """A caller refused by policy (403) is still named in the decision, for audit."""
    from authz.config.load import parse_config
    from authz.identity import devkey
    from authz.identity.jwks import KeySet
    from authz.identity.rfc9068 import Verifier
    from authz.model import HttpRequest

    key = devkey.ensure_key(tmp_path / "k.pem")
    config = parse_config(
        f"issuers: [{{name: d, issuer: 'https://d', local_key_file: '{key}', algorithms: [ES256]}}]\n"
        "servers: [{name: s, resource: 'https://m/mcp', policy: {rules: [{name: r, tools: [x], scopes: [w]}]}}]\n"
    )
    keys = {"d": KeySet(config.issuers["d"], lambda: None)}  # type: ignore[arg-type,return-value]
    token = devkey.mint(key, issuer="https://d", audience="https://m/mcp", subject="alice", scopes=["r"])
    body = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}}'
    headers = {"content-type": "application/json", "authorization": f"Bearer {token}"}
    decision = await make_checker(config, Verifier(config.issuers, keys)).check(
        HttpRequest("POST", "/mcp", headers, body)
    )
    assert (decision.allowed, decision.status) == (False, 403)
    assert decision.caller is not None and decision.caller.subject == "alice"
