"""Audit events end to end: real Envoy (gRPC ext_authz), ``mcp-authz serve`` and the sample MCP server.

The authorizer's stdout goes to its log file in the harness; the audit events are the lines there
with ``"stream": "mcp-authz-audit"``. An allowed call, a forbidden call and a malformed body each
leave one event with the expected fields, and no line of the log holds the token.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from harness import Authorizer, Envoy, Factory, RawMcp, SampleServer, free_port
from stack import sample_spec

from authz.config.load import parse_config
from authz.identity.devkey import ensure_key, mint
from authz.observe.audit import STREAM
from authz.render.envoy import render_envoy_yaml

SUBJECT = "audit@example.test"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


@dataclass(frozen=True)
class Stack:
    authorizer: Authorizer
    key: Path
    base: str

    @property
    def url(self) -> str:
        return f"{self.base}/mcp"

    def token(self, scopes: list[str]) -> str:
        return mint(self.key, issuer=f"{self.base}/dev", audience=self.url, subject=SUBJECT, scopes=scopes)

    def events(self) -> list[dict[str, Any]]:
        lines = self.authorizer.proc.log_text().splitlines()
        found = []
        for line in lines:
            if STREAM in line:
                event = json.loads(line)
                assert event["stream"] == STREAM
                found.append(event)
        return found

    def event_where(self, what: str, **fields: Any) -> dict[str, Any]:
        def match() -> list[dict[str, Any]]:
            return [e for e in self.events() if all(e[k] == v for k, v in fields.items())]

        self.authorizer.proc.wait_until(f"audit event {what}", lambda: bool(match()), 10.0)
        (event,) = match()
        return event


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    sample_server: Factory[SampleServer],
    envoy: Factory[Envoy],
    authorizer: Factory[Authorizer],
) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("audit")
    key = ensure_key(tmp / "signing-key.pem")
    sample = sample_server(json_response=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    spec = sample_spec(key, port, sample.upstream, audit={"argument_keys": ["repo"]})
    text = yaml.safe_dump(spec, sort_keys=False)
    running = authorizer(text)
    envoy(render_envoy_yaml(parse_config(text, "e2e-audit.yaml")))
    yield Stack(running, key, base)


async def test_allowed_forbidden_and_malformed_calls_are_audited(stack: Stack) -> None:
    token = stack.token(["tools:read"])
    traceparent = f"00-{TRACE}-00f067aa0ba902b7-01"

    async with RawMcp(stack.url, token=token, headers={"traceparent": traceparent}) as mcp:
        allowed = await mcp.call_tool("search", {"query": "private words"})
    assert allowed.status == 200, allowed.text
    async with RawMcp(stack.url, token=token) as mcp:
        refused = await mcp.call_tool("delete_repo", {"repo": "sample", "reason": "private words"})
    assert refused.status == 403, refused.text
    async with httpx.AsyncClient() as client:
        malformed = await client.post(
            stack.url,
            content=b'{"jsonrpc": "2.0", "id": 1, "method": ',
            headers={
                "authorization": f"Bearer {token}",
                "content-type": "application/json",
                "accept": "application/json, text/event-stream",
            },
        )
    assert malformed.status_code == 400, malformed.text

    # Envoy replaces a client's x-request-id at the edge; each event carries the id Envoy gave.
    allow = stack.event_where("allow", tool="search")
    assert (allow["decision"], allow["status"], allow["rule"], allow["server"]) == ("allow", 200, "read", "sample")
    assert (allow["subject"], allow["client_id"], allow["identity_mode"]) == (SUBJECT, "dev-cli", "jwt")
    assert allow["issuer"] == f"{stack.base}/dev"
    assert (allow["method"], allow["tool"], allow["trace_id"]) == ("tools/call", "search", TRACE)
    assert allow["revision"] == "2026-07-28" and allow["source_address"]
    assert allow["arguments"] == {}

    deny = stack.event_where("deny", tool="delete_repo")
    assert (deny["decision"], deny["reason"], deny["status"], deny["rule"]) == (
        "deny",
        "insufficient_scope",
        403,
        "admin",
    )
    assert (deny["method"], deny["tool"], deny["trace_id"]) == ("tools/call", "delete_repo", None)
    assert deny["arguments"] == {"repo": "sample"}

    bad = stack.event_where("400", status=400)
    assert (bad["decision"], bad["status"], bad["server"]) == ("deny", 400, "sample")
    assert (bad["reason"], bad["method"]) == ("body_invalid", None)

    ids = {e["request_id"] for e in (allow, deny, bad)}
    assert len(ids) == 3 and all(isinstance(i, str) and i for i in ids)

    log = stack.authorizer.proc.log_text()
    assert token not in log
    assert token.split(".")[2] not in log
    assert "private words" not in log
