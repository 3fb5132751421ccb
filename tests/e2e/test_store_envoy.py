"""Shared state end to end: real Envoy, ``mcp-authz serve`` and the sample MCP server.

The embedded memory store (no ``store`` section): revocation through the admin API, session binding
(another subject's use of a session is refused as an unknown session, DELETE by the owner ends it),
and the N+1th call of a rate limit refused with 429 and Retry-After.

A real redis-server: a revocation written by another store instance (as another replica would) is
enforced; with Redis stopped or paused, Checks get the configured answer (fail open for revocation and
sessions, fail closed for rate limits), the authorizer stays up and /readyz says the store is down;
once Redis is back on the same port, everything works again.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from harness import Authorizer, Envoy, Factory, RawMcp, RawResponse, Redis, SampleServer, free_port, start_redis

from authz.admin.client import AdminClient
from authz.config.load import parse_config
from authz.identity.devkey import ensure_key, mint
from authz.render.envoy import render_envoy_yaml
from authz.store.redis import RedisStore

HANDSHAKE = "2025-11-25"
ADMIN_TOKEN = "store-e2e-admin-token-0123456789"
WAIT = 15.0  # seconds to wait for something asynchronous before failing (never a speed assertion)


@dataclass(frozen=True)
class Stack:
    authorizer: Authorizer
    key: Path
    base: str
    admin: str | None = None

    @property
    def url(self) -> str:
        return f"{self.base}/mcp"

    def token(self, subject: str, **claims: Any) -> str:
        return mint(self.key, issuer=f"{self.base}/dev", audience=self.url, subject=subject, extra=claims)

    async def search(self, subject_or_token: str, **claims: Any) -> RawResponse:
        return await self.call("search", subject_or_token, **claims)

    async def call(self, tool: str, subject_or_token: str, **claims: Any) -> RawResponse:
        """One stateless (2026-07-28) tools/call as ``subject`` (a fresh token) or with the given token."""
        token = subject_or_token if subject_or_token.count(".") == 2 else self.token(subject_or_token, **claims)
        async with RawMcp(self.url, token=token) as mcp:
            return await mcp.call_tool(tool, {"query": "x"} if tool == "search" else {"path": "README.md"})

    async def ready(self) -> tuple[int, dict[str, Any]]:
        async with httpx.AsyncClient() as client:
            response = await client.get(f"{self.authorizer.discovery_url}/readyz")
        return response.status_code, response.json()["checks"]


def _start(
    tmp: Path,
    sample: SampleServer,
    envoy: Factory[Envoy],
    authorizer: Factory[Authorizer],
    *,
    store: dict[str, Any] | None = None,
    admin: bool = False,
) -> Stack:
    key = ensure_key(tmp / "signing-key.pem")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    admin_listen = f"127.0.0.1:{free_port()}" if admin else ""
    spec: dict[str, Any] = {
        "listen": {"grpc": f"127.0.0.1:{free_port()}", "discovery": f"127.0.0.1:{free_port()}"},
        "issuers": [{"name": "dev", "issuer": f"{base}/dev", "local_key_file": str(key)}],
        "servers": [
            {
                "name": "sample",
                "resource": f"{base}/mcp",
                "upstream": sample.upstream,
                "rate_limits": [
                    {"name": "searches", "per": "subject_tool", "tools": ["search"], "limit": 3, "window": 3600}
                ],
            }
        ],
        "envoy": {"listen": f"127.0.0.1:{port}", "admin_port": free_port()},
    }
    if store is not None:
        spec["store"] = store
    if admin:
        spec["admin"] = {"listen": admin_listen, "token": ADMIN_TOKEN}
    text = yaml.safe_dump(spec, sort_keys=False)
    running = authorizer(text)
    envoy(render_envoy_yaml(parse_config(text, "e2e-store.yaml")))
    return Stack(running, key, base, admin_listen or None)


async def eventually(condition: Callable[[], Any], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if await condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


# ---------------------------------------------------------------- the embedded memory store


@pytest.fixture(scope="module")
def memory_stack(
    tmp_path_factory: pytest.TempPathFactory,
    sample_server: Factory[SampleServer],
    envoy: Factory[Envoy],
    authorizer: Factory[Authorizer],
) -> Stack:
    sample = sample_server()
    return _start(tmp_path_factory.mktemp("store-memory"), sample, envoy, authorizer, admin=True)


async def test_memory_revocation_by_jti_and_subject(memory_stack: Stack) -> None:
    stack = memory_stack
    assert stack.admin is not None
    token = stack.token("rev-alice", jti="e2e-jti-1")
    assert (await stack.call("read_file", token)).status == 200
    with AdminClient(stack.admin, token=ADMIN_TOKEN) as admin:
        admin.revoke_token("e2e-jti-1", time.time() + 3600)
    refused = await stack.call("read_file", token)
    assert refused.status == 401 and 'error="invalid_token"' in refused.headers["www-authenticate"]
    assert (await stack.call("read_file", "rev-alice")).status == 200  # another token of the subject

    old = stack.token("rev-bob", iat=int(time.time()) - 5)
    assert (await stack.call("read_file", old)).status == 200
    with AdminClient(stack.admin, token=ADMIN_TOKEN) as admin:
        admin.revoke_subject("rev-bob", time.time() - 1)
    assert (await stack.call("read_file", old)).status == 401
    assert (await stack.call("read_file", "rev-bob", iat=int(time.time()) + 1)).status == 200


async def test_memory_session_bound_to_its_subject(memory_stack: Stack) -> None:
    stack = memory_stack
    alice = RawMcp(stack.url, protocol_version=HANDSHAKE, token=stack.token("sess-alice"))
    bob = RawMcp(stack.url, protocol_version=HANDSHAKE, token=stack.token("sess-bob"))
    try:
        assert (await alice.initialize()).status == 200
        assert alice.session_id
        assert (await alice.request("tools/list")).status == 200
        bob.session_id = alice.session_id  # bob presents alice's session id
        hijack = await bob.request("tools/list")
        assert hijack.status == 404, hijack.text
        assert hijack.messages[0]["error"]["message"] == "Session not found"
        assert (await alice.request("tools/list")).status == 200  # alice is not disturbed
        log = stack.authorizer.proc
        log.wait_until("session_hijack log line", lambda: "session_hijack" in log.log_text(), 10.0)
        [warning] = [line for line in log.log_text().splitlines() if "mcp_authz.state" in line]
        assert "session_hijack" in warning and "sess-bob" in warning and alice.session_id not in warning
        ended = await alice._http.delete(
            alice.url, headers={"mcp-protocol-version": HANDSHAKE, "mcp-session-id": alice.session_id}
        )
        assert ended.status_code in (200, 202, 204), ended.text
        alice.session_id = None
    finally:
        bob.session_id = None
        await alice.aclose()
        await bob.aclose()


async def test_memory_rate_limit_429_with_retry_after(memory_stack: Stack) -> None:
    stack = memory_stack
    statuses = [(await stack.search("rl-alice")).status for _ in range(3)]
    assert statuses == [200, 200, 200]
    over = await stack.search("rl-alice")
    assert over.status == 429
    assert int(over.headers["retry-after"]) == 1200  # 3600 s / 3 calls
    assert (await stack.call("read_file", "rl-alice")).status == 200  # only search is limited
    assert (await stack.search("rl-bob")).status == 200  # per subject


# ---------------------------------------------------------------- Redis: shared copy, outage, recovery


@dataclass
class RedisStack:
    stack: Stack
    redis: Redis
    log_dir: Path


@pytest.fixture(scope="module")
def redis_stack(
    tmp_path_factory: pytest.TempPathFactory,
    sample_server: Factory[SampleServer],
    envoy: Factory[Envoy],
    authorizer: Factory[Authorizer],
) -> Iterator[RedisStack]:
    tmp = tmp_path_factory.mktemp("store-redis")
    redis = start_redis(tmp)
    store = {
        "url": redis.url,
        "key_prefix": "e2e:",
        "timeout_ms": 250,  # generous on a loaded CI box; two calls per Check stay under Envoy's 1 s
        "failure": {"revocation": "open", "sessions": "open", "rate_limits": "closed"},
    }
    sample = sample_server()
    holder = RedisStack(_start(tmp, sample, envoy, authorizer, store=store), redis, tmp)
    yield holder
    if holder.redis.proc.pid is not None:
        os.kill(holder.redis.proc.pid, signal.SIGCONT)
    holder.redis.proc.stop()


async def test_redis_revocation_from_another_replica(redis_stack: RedisStack) -> None:
    stack = redis_stack.stack
    token = stack.token("r-alice", jti="redis-jti-1")
    assert (await stack.call("read_file", token)).status == 200
    other = RedisStore(redis_stack.redis.url, key_prefix="e2e:", timeout=1.0)  # as another replica
    await other.start()
    try:
        await other.revoke_token("redis-jti-1", time.time() + 3600)
    finally:
        await other.close()

    async def refused() -> bool:
        return (await stack.call("read_file", token)).status == 401

    await eventually(refused, "revocation from the other replica enforced")
    assert (await stack.call("read_file", "r-alice")).status == 200


async def test_redis_outage_fails_per_feature_and_recovers(redis_stack: RedisStack) -> None:
    stack, redis = redis_stack.stack, redis_stack.redis
    assert (await stack.search("o-alice")).status == 200
    assert (await stack.ready())[1]["store"] is True

    redis.proc.stop()
    down = await stack.search("o-alice")
    assert down.status == 503, down.text  # rate_limits: closed
    assert (await stack.call("read_file", "o-alice")).status == 200  # revocation, sessions: open

    async def not_ready() -> bool:
        status, checks = await stack.ready()
        return status == 503 and checks["store"] is False

    await eventually(not_ready, "/readyz reports the store down")
    assert stack.authorizer.proc.alive
    assert "store unreachable" in stack.authorizer.proc.log_text()

    redis_stack.redis = redis = start_redis(redis_stack.log_dir / "again", port=redis.port)

    async def searchable() -> bool:
        return (await stack.search("o-alice")).status == 200

    await eventually(searchable, "rate-limited calls work again once Redis is back")
    await eventually(lambda: _ready(stack), "/readyz reports the store up")
    assert "store reachable" in stack.authorizer.proc.log_text()


async def test_redis_paused_answers_within_envoy_timeout(redis_stack: RedisStack) -> None:
    stack, redis = redis_stack.stack, redis_stack.redis
    assert redis.proc.pid is not None
    os.kill(redis.proc.pid, signal.SIGSTOP)
    try:
        # Not Envoy's own timeout answer (403 status_on_error): the authorizer answered within its deadline.
        paused = await stack.search("p-alice")
        assert paused.status == 503, paused.text
        assert (await stack.call("read_file", "p-alice")).status == 200
    finally:
        os.kill(redis.proc.pid, signal.SIGCONT)

    async def searchable() -> bool:
        return (await stack.search("p-alice")).status == 200

    await eventually(searchable, "works again after SIGCONT")
    assert stack.authorizer.proc.alive


async def _ready(stack: Stack) -> bool:
    status, checks = await stack.ready()
    return status == 200 and checks["store"] is True
