"""Hardening through a real Envoy 1.40, on both ext_authz fronts (gRPC and HTTP), with the sample MCP
server behind: what a client sends that the MCP server must never receive.

- A token in the query string (beside the ``Authorization`` header or alone) or in a form body:
  400 ``invalid_request`` (RFC 6750 §2, one method per request; MCP allows the header only).
- Client-sent ``x-mcp-authz-*`` headers (the names Envoy and the authorizer use between them)
  never reach the MCP server.
- A GET or DELETE with a body: refused, since the authorizer decides those on method and identity.
- Audit events name a ``Mcp-Session-Id`` by its fingerprint, as the logs do, never by its value.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from harness import Authorizer, Envoy, Factory, SampleServer, free_port
from stack import ACCEPT, call_body, challenge_params, sample_spec

from authz.config.load import parse_config
from authz.identity.devkey import ensure_key, mint
from authz.observe.audit import STREAM
from authz.render.envoy import render_envoy_yaml

SUBJECT = "hardening@example.test"
POLICY = {
    "default": "deny",
    "rules": [
        {"name": "protocol", "methods": ["initialize", "ping", "notifications/*", "*/list"]},
        {"name": "read", "tools": ["search", "echo_headers"], "scopes": ["tools:read"]},
        {"name": "stream-and-close", "http_methods": ["GET", "DELETE"]},
    ],
}


@dataclass(frozen=True)
class Stack:
    front: str
    authorizer: Authorizer
    sample: SampleServer
    key: Path
    base: str

    @property
    def url(self) -> str:
        return f"{self.base}/mcp"

    def token(self) -> str:
        return mint(self.key, issuer=f"{self.base}/dev", audience=self.url, subject=SUBJECT, scopes=["tools:read"])

    def post(
        self, tool: str, *, path: str = "/mcp", headers: list[tuple[str, str]] | None = None, token: bool = True
    ) -> tuple[httpx.Response, str]:
        """A 2026-07-28 tools/call of ``tool`` with a unique ``query`` marker; (response, marker)."""
        marker = uuid.uuid4().hex
        sent = [
            ("content-type", "application/json"),
            ("accept", ACCEPT),
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", tool),
            *([("authorization", f"Bearer {self.token()}")] if token else []),
            *(headers or []),
        ]
        body = json.dumps(call_body(tool, {"query": marker}))
        return httpx.post(self.base + path, content=body, headers=sent, timeout=10.0), marker

    def upstream_requests(self) -> list[dict[str, Any]]:
        return self.sample.requests()

    def reached_upstream(self, marker: str) -> bool:
        return any(marker in json.dumps(r) for r in self.upstream_requests()) or any(
            marker in json.dumps(c) for c in self.sample.calls()
        )

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.authorizer.proc.log_text().splitlines() if STREAM in line]


@pytest.fixture(scope="module", params=["grpc", "http"])
def stack(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    sample_server: Factory[SampleServer],
    authorizer: Factory[Authorizer],
    envoy: Factory[Envoy],
) -> Iterator[Stack]:
    front = str(request.param)
    tmp = tmp_path_factory.mktemp(f"hardening-{front}")
    key = ensure_key(tmp / "signing-key.pem")
    sample = sample_server(json_response=True)
    port = free_port()
    spec = sample_spec(key, port, sample.upstream, audit={"enabled": True})
    spec["servers"][0]["policy"] = POLICY
    if front == "http":
        spec["listen"]["http"] = f"127.0.0.1:{free_port()}"
        spec["envoy"]["authorizer"] = "http"
    text = yaml.safe_dump(spec, sort_keys=False)
    running = authorizer(text)
    proxy = envoy(render_envoy_yaml(parse_config(text, f"hardening-{front}.yaml")))
    yield Stack(front, running, sample, key, f"http://127.0.0.1:{port}")
    proxy.proc.stop()
    running.proc.stop()
    sample.proc.stop()


@pytest.fixture
def fresh(stack: Stack) -> Stack:
    stack.sample.clear_logs()
    return stack


# ---------------------------------------------------------------- issue 21 item 4: one way to send a token


def assert_invalid_request(response: httpx.Response) -> None:
    assert response.status_code == 400, response.text
    challenge = challenge_params(response.headers["www-authenticate"])
    assert challenge["error"] == "invalid_request"
    assert response.json()["error"]["code"] == -32600


@pytest.mark.parametrize("with_header", [True, False], ids=["beside-the-header", "alone"])
def test_a_token_in_the_query_is_refused_and_never_forwarded(fresh: Stack, with_header: bool) -> None:
    token = fresh.token()
    response, marker = fresh.post("search", path=f"/mcp?access_token={token}", token=with_header)
    assert_invalid_request(response)
    assert not fresh.reached_upstream(marker)
    assert not any(token in json.dumps(r) for r in fresh.upstream_requests())


def test_a_token_in_a_form_body_is_refused(fresh: Stack) -> None:
    token = fresh.token()
    headers = {"content-type": "application/x-www-form-urlencoded", "authorization": f"Bearer {token}"}
    response = httpx.post(fresh.url, content=f"access_token={token}", headers=headers, timeout=10.0)
    assert_invalid_request(response)
    assert fresh.upstream_requests() == []


def test_a_good_call_with_other_query_parameters_passes(fresh: Stack) -> None:
    response, marker = fresh.post("search", path="/mcp?tenant=a")
    assert response.status_code == 200, response.text
    assert fresh.reached_upstream(marker)


# ---------------------------------------------------------------- issue 21 item 11


def test_client_sent_authorizer_headers_never_reach_the_mcp_server(fresh: Stack) -> None:
    forged = [
        ("x-mcp-authz-source", "10.0.0.1"),
        ("x-mcp-authz-peer-uri-san", "spiffe://mesh/admin"),
        ("x-mcp-authz-server", "sample"),
        ("X-Mcp-Authz-Anything", "made up"),
        ("x-mcp-authz-list", "1"),
    ]
    response, _ = fresh.post("echo_headers", headers=forged)
    assert response.status_code == 200, response.text
    (upstream,) = fresh.upstream_requests()
    leaked = {k: v for k, v in upstream["headers"].items() if k.startswith("x-mcp-authz-")}
    assert leaked == {}
    assert upstream["headers"]["x-mcp-subject"] == SUBJECT


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_a_bodied_get_or_delete_is_refused(fresh: Stack, method: str) -> None:
    headers = {
        "authorization": f"Bearer {fresh.token()}",
        "accept": ACCEPT,
        "mcp-protocol-version": "2025-11-25",
        "content-type": "application/json",
    }
    body = json.dumps(call_body("search", {"query": "smuggled"}))
    response = httpx.request(method, fresh.url, content=body, headers=headers, timeout=10.0)
    assert response.status_code == 400, response.text
    assert fresh.upstream_requests() == []


def test_audit_events_carry_the_session_fingerprint_not_the_id(fresh: Stack) -> None:
    session = f"session-{uuid.uuid4().hex}"
    headers = {
        "authorization": f"Bearer {fresh.token()}",
        "accept": ACCEPT,
        "content-type": "application/json",
        "mcp-protocol-version": "2025-11-25",
        "mcp-session-id": session,
    }
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    httpx.post(fresh.url, content=json.dumps(body), headers=headers, timeout=10.0)
    fingerprint = hashlib.sha256(session.encode()).hexdigest()[:12]
    fresh.authorizer.proc.wait_until(
        "audit event with the session", lambda: any(e.get("session") == fingerprint for e in fresh.events()), 10.0
    )
    assert session not in fresh.authorizer.proc.log_text()
