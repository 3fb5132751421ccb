"""The audit webhook sink (authz/webhook.py) against a real loopback HTTP receiver: signed batches that
verify, retries with backoff, refusals, a receiver that is down, and Checks through the HTTP front that
answer while the receiver is stuck, with the events that do not fit in the queue dropped and counted."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from support import STATELESS, dev_stack, enveloped, serve_app, server_spec, tool_call

from authz.app import Authorizer
from authz.config.compile import compile_webhook
from authz.config.errors import ConfigError
from authz.config.runtime import AuditWebhook
from authz.config.schema import WebhookSpec
from authz.config.secrets import encrypt
from authz.front.http_service import start_http
from authz.observe import telemetry
from authz.observe.audit import STREAM, Auditor
from authz.observe.audit_webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, WebhookSink, verify

SECRET = "webhook-secret-0123456789abcdef"


@dataclass
class Receiver:
    url: str
    batches: list[list[Any]] = field(default_factory=list)
    bad_signatures: int = 0
    statuses: list[int] = field(default_factory=list)  # answers to give, in order; then 200
    requests: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    hold: bool = False  # keep each request waiting until `release` is set

    @property
    def events(self) -> list[Any]:
        return [e for batch in self.batches for e in batch]


def expected_signature(timestamp: str, body: bytes) -> str:
    """The receiver's side, written out from the README recipe (not with authz.observe.audit_webhook.sign)."""
    mac = hmac.new(SECRET.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    state = Receiver(url="")

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        state.requests += 1
        timestamp = request.headers[TIMESTAMP_HEADER]
        signature = request.headers[SIGNATURE_HEADER]
        ok = hmac.compare_digest(signature, expected_signature(timestamp, body))
        assert verify(SECRET.encode(), timestamp, body, signature) == ok
        if not ok or abs(time.time() - int(timestamp)) > 300:
            state.bad_signatures += 1
            return web.Response(status=401)
        state.arrived.set()
        if state.hold:
            await state.release.wait()
        if state.statuses:
            return web.Response(status=state.statuses.pop(0))
        assert request.content_type == "application/json"
        state.batches.append(json.loads(body))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/audit", handle)
    async with serve_app(app) as base:
        state.url = f"{base}/audit"
        try:
            yield state
        finally:
            state.release.set()  # a handler held on it must finish before the server stops


def spec(url: str, **fields: Any) -> AuditWebhook:
    return compile_webhook(WebhookSpec.model_validate({"url": url, "secret": SECRET, "flush_interval": 0.05, **fields}))


async def until(condition: Callable[[], bool], what: str) -> None:
    """Wait for ``condition`` (a correctness wait, not a timing assertion)."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


async def test_batches_arrive_signed_in_order(receiver: Receiver) -> None:
    sink = WebhookSink(spec(receiver.url, batch_size=2))
    sink.start()
    try:
        for i in range(5):
            sink.submit(json.dumps({"stream": STREAM, "n": i}))
        await until(lambda: len(receiver.events) == 5, "5 events received")
    finally:
        await sink.stop()
    assert [e["n"] for e in receiver.events] == [0, 1, 2, 3, 4]
    assert all(1 <= len(b) <= 2 for b in receiver.batches) and receiver.bad_signatures == 0
    assert (sink.sent, sink.failed, sink.dropped) == (5, 0, 0)


async def test_failed_posts_are_retried_and_signed_anew(receiver: Receiver) -> None:
    receiver.statuses = [503, 429]
    sent = telemetry.WEBHOOK.get("sent")
    sink = WebhookSink(spec(receiver.url), backoff=0.01)
    sink.start()
    try:
        sink.submit('{"n":1}')
        await until(lambda: sink.sent == 1, "the batch sent")
    finally:
        await sink.stop()
    assert receiver.requests == 3 and receiver.events == [{"n": 1}] and receiver.bad_signatures == 0
    assert telemetry.WEBHOOK.get("sent") == sent + 1


async def test_a_refused_batch_is_not_retried(receiver: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    receiver.statuses = [400]
    sink = WebhookSink(spec(receiver.url, max_retries=5), backoff=0.01)
    sink.start()
    try:
        sink.submit('{"n":1}')
        await until(lambda: sink.failed == 1, "the batch given up")
    finally:
        await sink.stop()
    assert receiver.requests == 1 and sink.sent == 0
    assert any("batch dropped after 1 attempts" in r.getMessage() for r in caplog.records)


async def test_receiver_down_fails_after_retries_and_never_logs_the_secret(
    unused_tcp_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    failed = telemetry.WEBHOOK.get("failed")
    sink = WebhookSink(spec(f"http://127.0.0.1:{unused_tcp_port}/audit", max_retries=2), backoff=0.01)
    sink.start()
    try:
        for i in range(3):
            sink.submit(json.dumps({"n": i}))
        await until(lambda: sink.failed == 3, "3 events failed")
    finally:
        await sink.stop()
    assert telemetry.WEBHOOK.get("failed") == failed + 3
    assert len([r for r in caplog.records if "batch dropped after 3 attempts" in r.getMessage()]) == 1
    assert SECRET not in caplog.text and SECRET not in repr(sink)


async def test_checks_answer_while_the_receiver_is_stuck_and_overflow_is_dropped_and_counted(
    tmp_path: Path, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.hold = True
    stack = dev_stack(
        tmp_path,
        [server_spec(scopes_supported=["tools:read"])],
        audit={"webhook": {"url": receiver.url, "secret": SECRET, "batch_size": 1, "queue_size": 3}},
    )
    authorizer = Authorizer(stack.config)
    authorizer.audit = Auditor(out=io.StringIO())
    authorizer._configure_webhook()  # as start() does
    sink = authorizer.webhook
    assert sink is not None and authorizer.audit.sink == sink.submit
    dropped = telemetry.WEBHOOK.get("dropped")
    server = await start_http("127.0.0.1:0", lambda: authorizer.checker, authorizer.observe)
    port = server.sockets[0].getsockname()[1]
    token = stack.token(scopes=["tools:read"])
    headers = {
        "content-type": "application/json",
        "authorization": f"Bearer {token}",
        "mcp-protocol-version": STATELESS,
        "mcp-method": "tools/call",
        "mcp-name": "search",
    }
    statuses: list[int] = []
    try:
        async with aiohttp.ClientSession() as client:

            async def check() -> None:
                url = f"http://127.0.0.1:{port}/mcp"
                async with client.post(
                    url, data=json.dumps(enveloped(tool_call("search"))), headers=headers
                ) as response:
                    statuses.append(response.status)

            await check()
            await receiver.arrived.wait()  # the first event's POST is now stuck in the receiver
            for _ in range(9):
                await check()
            assert not receiver.release.is_set() and receiver.batches == []  # every answer came while stuck
            assert statuses == [200] * 10
            assert (sink.queued, sink.dropped) == (3, 6)
            assert telemetry.WEBHOOK.get("dropped") == dropped + 6
            receiver.release.set()
            await until(lambda: len(receiver.events) == 4, "the held event and the 3 queued ones")
            await until(lambda: any("6 events dropped" in r.getMessage() for r in caplog.records), "drop logged")
    finally:
        server.close()
        await server.wait_closed()
        await sink.stop()
    [record] = [r for r in caplog.records if "events dropped" in r.getMessage()]
    assert (record.dropped, record.dropped_total, record.queue_size) == (6, 6, 3)  # type: ignore[attr-defined]
    assert all(e["decision"] == "allow" and e["tool"] == "search" for e in receiver.events)
    assert token not in json.dumps(receiver.events) and receiver.bad_signatures == 0


def test_webhook_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        WebhookSpec.model_validate({"url": "https://hooks.test/a", "secret": "short"})
    with pytest.raises(ValueError, match="http"):
        WebhookSpec.model_validate({"url": "ftp://hooks.test/a", "secret": SECRET})


async def test_an_encrypted_secret_signs_and_a_bad_one_is_refused_at_load(tmp_path: Path, receiver: Receiver) -> None:
    key = "k" * 32
    hook = {"url": receiver.url, "secret": encrypt(SECRET, key.encode()), "flush_interval": 0.05}
    stack = dev_stack(tmp_path, [server_spec()], secrets={"keys": [key]}, audit={"webhook": hook})
    sink = WebhookSink(stack.config.audit.webhook)  # type: ignore[arg-type]
    sink.start()
    try:
        sink.submit('{"n":1}')
        await until(lambda: sink.sent == 1, "the batch sent")
    finally:
        await sink.stop()
    assert receiver.events == [{"n": 1}] and receiver.bad_signatures == 0
    with pytest.raises(ConfigError, match=r"audit\.webhook\.secret"):
        dev_stack(tmp_path, [server_spec()], secrets={"keys": ["x" * 32]}, audit={"webhook": hook})
