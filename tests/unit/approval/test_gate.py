"""Approval of tool calls (authz/upstream/approval.py): the signed webhook request, holding the Check,
late answers through the signed callback (on this or another replica), the one-use grant for the
identical retry, refusal of forged and replayed callbacks, and the config rules around it."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from support import (
    build_verifier,
    dev_stack,
    http_request,
    make_checker,
    make_config,
    policy,
    serve_app,
    server_spec,
    tool_call,
)

from authz.approval.gate import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    ApprovalGate,
    arguments_digest,
    sign,
    signature_valid,
)
from authz.check import Checker
from authz.config.runtime import Config
from authz.errors import FORBIDDEN_CODE
from authz.model import Decision
from authz.store.memory import MemoryStore

WEBHOOK_SECRET = "webhook-hmac-secret"
CALLBACK_SECRET = "callback-hmac-secret"
POLICY = policy(
    {"name": "dangerous", "tools": ["delete_repo"], "approval": True},
    {"name": "tools", "tools": ["*"]},
)


@dataclass
class Webhook:
    """A loopback approval webhook: answers with ``answer`` (a decision, or None: 202 pending), signed with
    ``secret`` (None: unsigned) for the request's approval id (or ``answer_for``)."""

    url: str = ""
    answer: str | None = "approve"
    status: int = 200
    secret: str | None = WEBHOOK_SECRET
    answer_for: str | None = None
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    on_request: Callable[[dict[str, Any]], Any] | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append(({k.lower(): v for k, v in request.headers.items()}, body))
        if self.on_request is not None:
            await self.on_request(json.loads(body))
        if self.status != 200:
            return web.Response(status=self.status)
        if self.answer is None:
            return web.json_response({"status": "pending"}, status=202)
        approval_id = self.answer_for or json.loads(body)["approval_id"]
        raw = json.dumps({"approval_id": approval_id, "decision": self.answer}).encode()
        headers = {"content-type": "application/json"}
        if self.secret is not None:
            ts = str(int(time.time()))
            headers.update({TIMESTAMP_HEADER: ts, SIGNATURE_HEADER: sign(self.secret, ts, raw)})
        return web.Response(body=raw, headers=headers)

    def last(self) -> dict[str, Any]:
        return dict(json.loads(self.requests[-1][1]))


@pytest.fixture
async def webhook() -> AsyncIterator[Webhook]:
    state = Webhook()
    app = web.Application()
    app.router.add_post("/approve", state.handle)
    async with serve_app(app) as base:
        state.url = f"{base}/approve"
        yield state


def approvals(url: str, **fields: Any) -> dict[str, Any]:
    return {
        "webhook_url": url,
        "webhook_secret": WEBHOOK_SECRET,
        "callback_secret": CALLBACK_SECRET,
        "wait_ms": 300,
        "keep_seconds": 60,
        **fields,
    }


@dataclass
class Gated:
    checker: Checker
    gate: ApprovalGate
    token: str
    events: list[dict[str, Any]]
    store: MemoryStore

    async def call(self, tool: str = "delete_repo", id: int = 1, **arguments: Any) -> Decision:
        return await self.checker.check(http_request(tool_call(tool, id=id, **arguments), token=self.token))


def gated(
    tmp_path: Path, url: str, session: aiohttp.ClientSession, store: MemoryStore | None = None, **settings: Any
) -> Gated:
    timeout = max(1000, int(settings.get("wait_ms", 0)) + 500)
    stack = dev_stack(
        tmp_path, [server_spec(policy=POLICY)], approvals=approvals(url, **settings), envoy={"timeout_ms": timeout}
    )
    events: list[dict[str, Any]] = []
    store = store or MemoryStore()
    gate = ApprovalGate(stack.config.approvals, store, lambda: session, events.append)
    verifier, _ = build_verifier(stack.config)
    return Gated(make_checker(stack.config, verifier, approvals=gate), gate, stack.token(), events, store)


def signed(
    body: dict[str, Any], secret: str = CALLBACK_SECRET, timestamp: int | None = None
) -> tuple[dict[str, str], bytes]:
    raw = json.dumps(body).encode()
    ts = str(int(time.time()) if timestamp is None else timestamp)
    return {TIMESTAMP_HEADER: ts, SIGNATURE_HEADER: sign(secret, ts, raw)}, raw


async def answer(gate: ApprovalGate, approval_id: str, decision: str, **kw: Any) -> tuple[int, dict[str, Any]]:
    headers, body = signed({"approval_id": approval_id, "decision": decision}, **kw)
    return await gate.callback(approval_id, headers, body)


def rpc_error(decision: Decision) -> dict[str, Any]:
    body = json.loads(decision.body)
    assert body["jsonrpc"] == "2.0"
    return dict(body["error"]) | {"id": body["id"]}


# ---------------------------------------------------------------- signatures


def test_signature_covers_timestamp_and_body() -> None:
    now = str(int(time.time()))
    good = sign("k", now, b"{}")
    assert signature_valid("k", now, good, b"{}", 300)
    assert not signature_valid("other", now, good, b"{}", 300)
    assert not signature_valid("k", now, good, b"{ }", 300)
    assert not signature_valid("k", str(int(now) + 1), good, b"{}", 300)
    old = str(int(time.time()) - 301)
    assert not signature_valid("k", old, sign("k", old, b"{}"), b"{}", 300)
    assert not signature_valid("k", None, good, b"{}", 300) and not signature_valid("k", "x1", good, b"{}", 300)


def test_the_digest_is_over_canonical_json() -> None:
    assert arguments_digest({"b": 1, "a": "é"}) == arguments_digest({"a": "é", "b": 1})
    assert arguments_digest({"a": 1}) != arguments_digest({"a": 2})
    assert arguments_digest(None) == arguments_digest({})


# ---------------------------------------------------------------- the Check


async def test_an_immediate_approval_lets_the_call_through(
    tmp_path: Path, webhook: Webhook, http_session: aiohttp.ClientSession
) -> None:
    g = gated(tmp_path, webhook.url, http_session)
    decision = await g.call(repo="sample")
    assert decision.allowed and decision.rule == "dangerous"
    (headers, body) = webhook.requests[0]
    assert signature_valid(WEBHOOK_SECRET, headers[TIMESTAMP_HEADER], headers[SIGNATURE_HEADER], body, 300)
    sent = webhook.last()
    assert sent["tool"] == "delete_repo" and sent["subject"] == "alice" and sent["server"] == "mcp"
    assert sent["arguments_sha256"] == arguments_digest({"repo": "sample"}) and sent["arguments"] is None
    assert sent["jsonrpc_id"] == 1 and sent["callback_path"] == f"/approvals/{sent['approval_id']}"
    assert [e["step"] for e in g.events] == ["requested", "approved"]
    # An approval is for one call: the same call again asks again.
    assert (await g.call(repo="sample")).allowed and len(webhook.requests) == 2


@pytest.mark.parametrize(
    ("secret", "answer_for", "problem"),
    [(None, None, "signature"), (CALLBACK_SECRET, None, "signature"), (WEBHOOK_SECRET, "another", "approval_id")],
)
async def test_an_unsigned_or_misdirected_immediate_approval_approves_nothing(
    tmp_path: Path,
    webhook: Webhook,
    http_session: aiohttp.ClientSession,
    secret: str | None,
    answer_for: str | None,
    problem: str,
) -> None:
    webhook.secret, webhook.answer_for = secret, answer_for
    g = gated(tmp_path, webhook.url, http_session)
    decision = await g.call(repo="sample")
    assert not decision.allowed and decision.reason == "approval_pending"
    assert [(e["step"], e.get("detail")) for e in g.events][:2] == [
        ("requested", None),
        ("webhook_answer_refused", problem),
    ]


async def test_arguments_are_sent_only_when_configured(
    tmp_path: Path, webhook: Webhook, http_session: aiohttp.ClientSession
) -> None:
    g = gated(tmp_path, webhook.url, http_session, include_arguments=True)
    assert (await g.call(repo="sample")).allowed
    assert webhook.last()["arguments"] == {"repo": "sample"}


async def test_calls_of_other_rules_never_wait(
    tmp_path: Path, webhook: Webhook, http_session: aiohttp.ClientSession
) -> None:
    g = gated(tmp_path, webhook.url, http_session)
    assert (await g.call("search", query="x")).allowed
    assert webhook.requests == [] and g.events == []


async def test_a_denial_is_a_jsonrpc_error_with_the_approval_id(
    tmp_path: Path, webhook: Webhook, http_session: aiohttp.ClientSession
) -> None:
    webhook.answer = "deny"
    g = gated(tmp_path, webhook.url, http_session)
    decision = await g.call(id=42, repo="sample")
    assert not decision.allowed and decision.status == 403 and decision.reason == "approval_denied"
    error = rpc_error(decision)
    approval_id = webhook.last()["approval_id"]
    assert error["id"] == 42 and error["code"] == FORBIDDEN_CODE
    assert error["data"] == {"approval_id": approval_id, "approval": "denied"}
    assert "denied" in error["message"] and approval_id in error["message"]
    assert [e["step"] for e in g.events] == ["requested", "denied"]
    # The webhook answered: a callback for that approval is refused.
    assert (await answer(g.gate, approval_id, "approve"))[0] == 409


async def test_a_late_approval_lets_the_identical_retry_through_once(
    tmp_path: Path, webhook: Webhook, http_session: aiohttp.ClientSession
) -> None:
    webhook.answer = None  # 202: the answer comes later through the callback
    g = gated(tmp_path, webhook.url, http_session)
    pending = await g.call(id=7, repo="sample")
    assert not pending.allowed and pending.reason == "approval_pending"
    error = rpc_error(pending)
    approval_id = error["data"]["approval_id"]
    assert error["id"] == 7 and error["data"]["approval"] == "pending" and "pending" in error["message"]

    assert await answer(g.gate, approval_id, "approve") == (200, {"status": "recorded", "decision": "approve"})
    assert (await g.call(repo="other")).reason == "approval_pending"  # other arguments: not this approval
    retry = await g.call(id=8, repo="sample")
    assert retry.allowed
    again = await g.call(id=9, repo="sample")
    assert not again.allowed and again.reason == "approval_pending"  # used up
    steps = [e["step"] for e in g.events]
    assert steps.count("grant_used") == 1 and "callback_approved" in steps


async def test_a_late_denial_is_kept_from_the_retry(
    tmp_path: Path, webhook: Webhook, http_session: aiohttp.ClientSession
) -> None:
    webhook.answer = None
    g = gated(tmp_path, webhook.url, http_session)
    approval_id = rpc_error(await g.call(repo="sample"))["data"]["approval_id"]
    assert (await answer(g.gate, approval_id, "deny"))[0] == 200
    assert (await g.call(repo="sample")).reason == "approval_pending"  # a new request, not a pass


async def test_a_callback_within_the_wait_decides_the_held_call(
    tmp_path: Path, webhook: Webhook, http_session: aiohttp.ClientSession
) -> None:
    webhook.answer = None
    g = gated(tmp_path, webhook.url, http_session, wait_ms=3000)

    async def approve_soon(request: dict[str, Any]) -> None:
        async def later() -> None:
            await asyncio.sleep(0.05)
            assert (await answer(g.gate, request["approval_id"], "approve"))[0] == 200

        asyncio.get_running_loop().create_task(later())

    webhook.on_request = approve_soon
    assert (await g.call(repo="sample")).allowed
    # The held call used the approval: nothing is left for a retry.
    webhook.on_request = None
    assert g.gate.approvals is not None
    g.gate.configure(replace(g.gate.approvals, wait=0.2), g.store)
    assert (await g.call(repo="sample")).reason == "approval_pending"


async def test_an_answer_on_another_replica_reaches_the_held_call(
    tmp_path: Path, webhook: Webhook, http_session: aiohttp.ClientSession
) -> None:
    webhook.answer = None
    store = MemoryStore()
    holder = gated(tmp_path, webhook.url, http_session, store=store, wait_ms=3000)
    other = gated(tmp_path, webhook.url, http_session, store=store)

    async def deny_elsewhere(request: dict[str, Any]) -> None:
        async def later() -> None:
            await asyncio.sleep(0.05)
            assert (await answer(other.gate, request["approval_id"], "deny"))[0] == 200

        asyncio.get_running_loop().create_task(later())

    webhook.on_request = deny_elsewhere
    decision = await holder.call(repo="sample")
    assert decision.reason == "approval_denied"


async def test_a_late_approval_works_on_any_replica(
    tmp_path: Path, webhook: Webhook, http_session: aiohttp.ClientSession
) -> None:
    webhook.answer = None
    store = MemoryStore()
    one = gated(tmp_path, webhook.url, http_session, store=store)
    two = gated(tmp_path, webhook.url, http_session, store=store)
    approval_id = rpc_error(await one.call(repo="sample"))["data"]["approval_id"]
    assert (await answer(two.gate, approval_id, "approve"))[0] == 200
    assert (await two.call(repo="sample")).allowed
    assert not (await one.call(repo="sample")).allowed


async def test_forged_replayed_and_stale_callbacks_are_refused(
    tmp_path: Path, webhook: Webhook, http_session: aiohttp.ClientSession
) -> None:
    webhook.answer = None
    g = gated(tmp_path, webhook.url, http_session)
    approval_id = rpc_error(await g.call(repo="sample"))["data"]["approval_id"]
    assert (await answer(g.gate, approval_id, "approve", secret=WEBHOOK_SECRET))[0] == 401  # wrong key
    assert (await answer(g.gate, approval_id, "approve", timestamp=int(time.time()) - 3600))[0] == 401
    headers, body = signed({"approval_id": "another", "decision": "approve"})
    assert (await g.gate.callback(approval_id, headers, body))[0] == 400  # signed for another approval
    headers, body = signed({"approval_id": approval_id, "decision": "approve"})
    tampered = body.replace(b"approve", b"deny")
    assert (await g.gate.callback(approval_id, headers, tampered))[0] == 401
    assert (await g.gate.callback(approval_id, headers, body))[0] == 200
    assert (await g.gate.callback(approval_id, headers, body))[0] == 409  # the same callback replayed
    assert (await answer(g.gate, "unknown-id", "approve"))[0] == 409
    refused = [e for e in g.events if e["step"] == "callback_refused"]
    assert len(refused) == 5


async def test_a_webhook_failure_fails_closed(
    tmp_path: Path, webhook: Webhook, http_session: aiohttp.ClientSession
) -> None:
    webhook.status = 500
    g = gated(tmp_path, webhook.url, http_session)
    decision = await g.call(repo="sample")
    assert not decision.allowed and decision.status == 503 and decision.reason == "approval_webhook_failed"
    down = gated(tmp_path, "http://127.0.0.1:9/approve", http_session)
    assert (await down.call(repo="sample")).reason == "approval_webhook_failed"


async def test_a_batch_with_a_call_needing_approval_is_refused(
    tmp_path: Path, webhook: Webhook, http_session: aiohttp.ClientSession
) -> None:
    g = gated(tmp_path, webhook.url, http_session)
    for batch in (
        [tool_call("delete_repo", id=1, repo="sample"), tool_call("search", id=2, query="x")],  # hidden first
        [tool_call("search", id=1, query="x"), tool_call("delete_repo", id=2, repo="sample")],
    ):
        decision = await g.checker.check(http_request(batch, token=g.token, revision="2025-03-26"))
        assert not decision.allowed and decision.reason == "approval_batch"
    assert webhook.requests == []


async def test_without_a_gate_an_approval_rule_fails_closed(tmp_path: Path) -> None:
    stack = dev_stack(tmp_path, [server_spec(policy=POLICY)], approvals=approvals("http://127.0.0.1:9/x"))
    decision = await stack.checker.check(http_request(tool_call("delete_repo", repo="x"), token=stack.token()))
    assert not decision.allowed and decision.status == 503 and decision.reason == "approval_unavailable"


# ---------------------------------------------------------------- config


def test_the_wait_must_be_shorter_than_envoys_timeout() -> None:
    with pytest.raises(ValueError, match=r"approvals.wait_ms \(1000\) must be below envoy.timeout_ms \(1000\)"):
        make_config(servers=[server_spec(policy=POLICY)], approvals=approvals("https://hook.test", wait_ms=1000))
    config: Config = make_config(
        servers=[server_spec(policy=POLICY)],
        approvals=approvals("https://hook.test", wait_ms=1000),
        envoy={"timeout_ms": 1500},
    )
    assert config.approvals is not None and config.approvals.wait == 1.0
    assert config.servers["mcp"].policy is not None and config.servers["mcp"].policy.approval_rules == {"dangerous"}


def test_approval_rules_need_the_body() -> None:
    with pytest.raises(ValueError, match="header_only must be false"):
        make_config(servers=[server_spec(policy=POLICY, header_only=True)], approvals=approvals("https://hook.test"))


async def test_an_anonymous_caller_cannot_be_approved(
    tmp_path: Path, webhook: Webhook, http_session: aiohttp.ClientSession
) -> None:
    stack = dev_stack(tmp_path, [server_spec(policy=POLICY, mode="optional")], approvals=approvals(webhook.url))
    gate = ApprovalGate(stack.config.approvals, MemoryStore(), lambda: http_session)
    verifier, _ = build_verifier(stack.config)
    checker = make_checker(stack.config, verifier, approvals=gate)
    decision = await checker.check(http_request(tool_call("delete_repo", repo="x")))
    assert not decision.allowed and decision.status == 401 and decision.reason == "approval_needs_identity"
    assert webhook.requests == []


def test_an_approval_rule_needs_the_approvals_section() -> None:
    with pytest.raises(ValueError, match="need an approvals section"):
        make_config(servers=[server_spec(policy=POLICY)])


# ---------------------------------------------------------------- the discovery route


async def test_the_discovery_route_hands_signed_posts_to_the_gate(
    tmp_path: Path, webhook: Webhook, http_session: aiohttp.ClientSession
) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from discovery import build_app

    webhook.answer = None
    g = gated(tmp_path, webhook.url, http_session)
    approval_id = rpc_error(await g.call(repo="sample"))["data"]["approval_id"]
    app = build_app(g.checker.config, readiness=lambda: {}, approval_callback=g.gate.callback)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        assert (await client.get(f"/approvals/{approval_id}")).status == 405
        assert (await client.post("/approvals/bad%20id", data=b"{}")).status == 404
        assert (await client.post(f"/approvals/{approval_id}", data=b"x" * 20_000)).status == 413
        headers, body = signed({"approval_id": approval_id, "decision": "approve"})
        answered = await client.post(f"/approvals/{approval_id}", data=body, headers=headers)
        assert answered.status == 200 and (await answered.json())["decision"] == "approve"
        assert answered.headers["cache-control"] == "no-store"
    plain = build_app(g.checker.config, readiness=lambda: {})  # without a callback the path is unknown
    async with TestClient(TestServer(plain, host="127.0.0.1")) as client:
        assert (await client.post(f"/approvals/{approval_id}", data=body, headers=headers)).status == 404
    assert (await g.call(repo="sample")).allowed


async def test_policy_explain_asks_nobody(tmp_path: Path, webhook: Webhook) -> None:
    from authz.explain.offline import explain_file

    stack = dev_stack(tmp_path, [server_spec(policy=POLICY)], approvals=approvals(webhook.url))
    result = await explain_file(stack.config, tool_call("delete_repo", repo="x"), stack.token())
    assert (result["decision"], result["reason"]) == ("deny", "approval_pending")
    assert webhook.requests == []
