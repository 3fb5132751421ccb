"""Acceptance, approvals: real Envoy, `mcp-authz serve`, the sample MCP server and a test approval
webhook (a loopback HTTP server that checks the request's HMAC signature and decides by the
`repo` argument).

A call the webhook approves runs; one it denies gets a JSON-RPC error and never runs; one it
answers after the wait gets a "pending" error, and once the signed callback approves it the
identical retry runs exactly once (a second retry, and a retry with other arguments, do not).
A forged callback and a replayed one are refused. Every step leaves an audit event.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from harness import Authorizer, Envoy, Factory, RawMcp, Redis, SampleServer, free_port, mcp_client
from mcp.shared.exceptions import MCPError
from stack import call_body

from authz.approval.gate import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign, signature_valid
from authz.config.load import parse_config
from authz.identity.devkey import ensure_key, mint
from authz.observe.audit import STREAM
from authz.render.envoy import render_envoy_yaml

WEBHOOK_SECRET = "e2e-webhook-secret"
CALLBACK_SECRET = "e2e-callback-secret"
DECISIONS = {"approve-me": "approve", "deny-me": "deny"}  # anything else: 202, answered later


class ApprovalWebhook:
    """Answers approval requests by the `repo` argument; refuses (401) a request it cannot verify."""

    def __init__(self) -> None:
        received: list[dict[str, Any]] = []
        self.received = received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                ts, sig = self.headers.get(TIMESTAMP_HEADER), self.headers.get(SIGNATURE_HEADER)
                if not signature_valid(WEBHOOK_SECRET, ts, sig, body, 60):
                    self._answer(401, {"error": "bad signature"})
                    return
                request = json.loads(body)
                received.append(request)
                decision = DECISIONS.get(str((request.get("arguments") or {}).get("repo")))
                answer = {"approval_id": request["approval_id"], "decision": decision}
                self._answer(200 if decision else 202, answer if decision else {"status": "queued"})

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                raw = json.dumps(body).encode()
                ts = str(int(time.time()))
                self.send_response(status)
                self.send_header(TIMESTAMP_HEADER, ts)  # an immediate decision counts only when signed
                self.send_header(SIGNATURE_HEADER, sign(WEBHOOK_SECRET, ts, raw))
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/approvals"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


@dataclass
class Approvals:
    authorizer: Authorizer
    sample: SampleServer
    webhook: ApprovalWebhook
    key: Path
    base: str

    @property
    def url(self) -> str:
        return f"{self.base}/mcp"

    def token(self) -> str:
        return mint(self.key, issuer=f"{self.base}/dev", audience=self.url, subject="alice", scopes=["tools:write"])

    def deletions(self) -> list[str]:
        return [c["arguments"]["repo"] for c in self.sample.calls() if c.get("tool") == "delete_repo"]

    def callback(self, approval_id: str, decision: str, secret: str = CALLBACK_SECRET) -> httpx.Response:
        body = json.dumps({"approval_id": approval_id, "decision": decision}).encode()
        ts = str(int(time.time()))
        return self.post_callback(approval_id, body, {TIMESTAMP_HEADER: ts, SIGNATURE_HEADER: sign(secret, ts, body)})

    def post_callback(self, approval_id: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
        url = f"{self.authorizer.discovery_url}/approvals/{approval_id}"
        return httpx.post(url, content=body, headers={"content-type": "application/json", **headers}, timeout=10.0)

    def approval_steps(self) -> list[tuple[str, str | None]]:
        events = [json.loads(line) for line in self.authorizer.proc.log_text().splitlines() if STREAM in line]
        return [(e["step"], e.get("approval_id")) for e in events if e.get("event") == "approval"]


def approval_config(base: str, key: Path, sample: SampleServer, webhook: ApprovalWebhook, **top: Any) -> str:
    """The authorizer config: one server whose delete_repo needs approval (wait 2 s, Envoy's timeout 5 s)."""
    spec = {
        "listen": {"grpc": f"127.0.0.1:{free_port()}", "discovery": f"127.0.0.1:{free_port()}"},
        "issuers": [{"name": "dev", "issuer": f"{base}/dev", "local_key_file": str(key)}],
        "servers": [
            {
                "name": "sample",
                "resource": f"{base}/mcp",
                "upstream": sample.upstream,
                "policy": {
                    "default": "deny",
                    "rules": [
                        {"name": "protocol", "methods": ["initialize", "ping", "notifications/*", "*/list"]},
                        {"name": "dangerous", "tools": ["delete_repo"], "scopes": ["tools:write"], "approval": True},
                    ],
                },
            }
        ],
        "approvals": {
            "webhook_url": webhook.url,
            "webhook_secret": WEBHOOK_SECRET,
            "callback_secret": CALLBACK_SECRET,
            "wait_ms": 2000,  # room for the webhook on two busy cores
            "keep_seconds": 300,
            "include_arguments": True,
        },
        "envoy": {"listen": base.removeprefix("http://"), "admin_port": free_port(), "timeout_ms": 5000},
        **top,
    }
    return yaml.safe_dump(spec, sort_keys=False)


@pytest.fixture(scope="module")
def webhook() -> Iterator[ApprovalWebhook]:
    hook = ApprovalWebhook()
    yield hook
    hook.close()


@pytest.fixture(scope="module")
def appr(
    tmp_path_factory: pytest.TempPathFactory,
    sample_server: Factory[SampleServer],
    envoy: Factory[Envoy],
    authorizer: Factory[Authorizer],
    webhook: ApprovalWebhook,
) -> Approvals:
    key = ensure_key(tmp_path_factory.mktemp("approvals") / "signing-key.pem")
    sample = sample_server(json_response=True)
    base = f"http://127.0.0.1:{free_port()}"
    text = approval_config(base, key, sample, webhook)
    running = authorizer(text)
    envoy(render_envoy_yaml(parse_config(text, "e2e-approvals.yaml")))
    return Approvals(running, sample, webhook, key, base)


async def delete(appr: Approvals, repo: str, request_id: int = 1) -> Any:
    """A 2026-07-28 tools/call of delete_repo with the given JSON-RPC id."""
    headers = {
        "content-type": "application/json",
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": "tools/call",
        "mcp-name": "delete_repo",
    }
    async with RawMcp(appr.url, token=appr.token()) as mcp:
        return await mcp.post(call_body("delete_repo", {"repo": repo}, request_id), headers=headers)


async def test_an_approved_call_runs(appr: Approvals) -> None:
    response = await delete(appr, "approve-me")
    assert response.status == 200 and "error" not in response.message, response.text
    assert appr.deletions() == ["approve-me"]
    request = appr.webhook.received[-1]
    assert (request["tool"], request["subject"], request["server"]) == ("delete_repo", "alice", "sample")
    assert request["arguments"] == {"repo": "approve-me"} and len(request["arguments_sha256"]) == 64
    assert ("approved", request["approval_id"]) in appr.approval_steps()


async def test_a_denied_call_never_runs(appr: Approvals) -> None:
    before = appr.deletions()
    response = await delete(appr, "deny-me", request_id=5)
    assert response.status == 403, response.text
    message = response.message
    approval_id = appr.webhook.received[-1]["approval_id"]
    assert message["id"] == 5 and message["error"]["data"] == {"approval_id": approval_id, "approval": "denied"}
    assert appr.deletions() == before
    # An MCP client (the SDK) reads it as the call's error.
    async with mcp_client(appr.url, headers={"authorization": f"Bearer {appr.token()}"}) as client:
        with pytest.raises(MCPError, match="denied"):
            await client.call_tool("delete_repo", {"repo": "deny-me"})
    assert appr.deletions() == before


async def test_a_late_approval_lets_the_identical_retry_run_once(appr: Approvals) -> None:
    before = appr.deletions()
    pending = await delete(appr, "later", request_id=3)
    assert pending.status == 403, pending.text
    error = pending.message["error"]
    assert pending.message["id"] == 3 and error["data"]["approval"] == "pending"
    approval_id = error["data"]["approval_id"]
    assert approval_id == appr.webhook.received[-1]["approval_id"] and approval_id in error["message"]
    assert appr.deletions() == before

    approved = appr.callback(approval_id, "approve")
    assert approved.status_code == 200, approved.text
    assert appr.callback(approval_id, "approve").status_code == 409  # replayed: refused

    other = await delete(appr, "later-other")  # other arguments: not covered by that approval
    assert other.status == 403 and other.message["error"]["data"]["approval"] == "pending"
    retry = await delete(appr, "later")
    assert retry.status == 200 and "error" not in retry.message, retry.text
    again = await delete(appr, "later")
    assert again.status == 403 and again.message["error"]["data"]["approval"] == "pending"
    assert appr.deletions() == [*before, "later"]  # exactly once
    steps = appr.approval_steps()
    assert ("pending", approval_id) in steps and ("callback_approved", approval_id) in steps
    assert [s for s, _ in steps].count("grant_used") == 1


async def test_a_forged_callback_is_refused(appr: Approvals) -> None:
    pending = await delete(appr, "forged")
    approval_id = pending.message["error"]["data"]["approval_id"]
    assert appr.callback(approval_id, "approve", secret="guessed").status_code == 401
    unsigned = appr.post_callback(
        approval_id, json.dumps({"approval_id": approval_id, "decision": "approve"}).encode(), {}
    )
    assert unsigned.status_code == 401
    stale_ts = str(int(time.time()) - 3600)
    body = json.dumps({"approval_id": approval_id, "decision": "approve"}).encode()
    stale = appr.post_callback(
        approval_id, body, {TIMESTAMP_HEADER: stale_ts, SIGNATURE_HEADER: sign(CALLBACK_SECRET, stale_ts, body)}
    )
    assert stale.status_code == 401
    retry = await delete(appr, "forged")
    assert retry.status == 403 and "forged" not in appr.deletions()
    assert sum(1 for s, a in appr.approval_steps() if s == "callback_refused" and a == approval_id) == 3


async def test_a_late_approval_given_at_another_replica_works_here(
    tmp_path: Path,
    sample_server: Factory[SampleServer],
    envoy: Factory[Envoy],
    authorizer: Factory[Authorizer],
    redis: Factory[Redis],
    webhook: ApprovalWebhook,
) -> None:
    """Two replicas sharing Redis: Envoy talks to one, the callback reaches the other."""
    store = {"store": {"url": redis().url, "timeout_ms": 2000}}  # two busy cores: no 50 ms deadline
    key = ensure_key(tmp_path / "signing-key.pem")
    sample = sample_server(json_response=True)
    base = f"http://127.0.0.1:{free_port()}"
    text = approval_config(base, key, sample, webhook, **store)
    behind_envoy = authorizer(text)
    envoy(render_envoy_yaml(parse_config(text, "e2e-approvals-a.yaml")))
    other = authorizer(approval_config(base, key, sample, webhook, **store))
    here = Approvals(behind_envoy, sample, webhook, key, base)
    there = Approvals(other, sample, webhook, key, base)

    pending = await delete(here, "replicated")
    assert pending.status == 403 and pending.message["error"]["data"]["approval"] == "pending", pending.text
    approval_id = pending.message["error"]["data"]["approval_id"]
    assert there.callback(approval_id, "approve").status_code == 200
    assert here.callback(approval_id, "approve").status_code == 409  # answered once, for every replica
    assert (await delete(here, "replicated")).status == 200
    assert (await delete(here, "replicated")).status == 403
    assert here.deletions() == ["replicated"]
