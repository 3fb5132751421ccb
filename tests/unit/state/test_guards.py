"""The store-backed Check stages on the memory store: revocation, session binding, rate limits, outages."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support import (
    ISSUER,
    RESOURCE,
    STATELESS,
    build_verifier,
    enveloped,
    issuer_spec,
    make_checker,
    make_config,
    server_spec,
    tool_call,
)

from authz.check import Checker
from authz.identity import devkey
from authz.model import Decision, HttpRequest
from authz.state.guards import DEFAULT_MAX_SESSIONS_PER_SUBJECT
from authz.state.revocation import subject_revocation_until
from authz.store.base import StoreError
from authz.store.memory import MemoryStore

REVISION = "2025-11-25"


class BrokenStore(MemoryStore):
    """A store whose backend is down: every call fails and it reports unhealthy."""

    @property
    def healthy(self) -> bool:
        return False

    async def bind_session(
        self, server: str, session_id: str, subject: str, ttl: float, *, max_per_subject: int | None = None
    ) -> str:
        raise StoreError("sessions: down")

    async def hit(self, key: str, limit: int, window: float) -> float:
        raise StoreError("rate_limits: down")


@dataclass
class Stack:
    checker: Checker
    store: MemoryStore
    key_file: Path

    def token(self, subject: str = "alice", **claims: Any) -> str:
        return devkey.mint(self.key_file, issuer=ISSUER, audience=RESOURCE, subject=subject, extra=claims)

    async def call(
        self,
        token: str | None,
        tool: str = "echo",
        *,
        session: str | None = None,
        method: str = "POST",
        revision: str = REVISION,
        headers: dict[str, str] | None = None,
        source: str = "10.0.0.1",
    ) -> Decision:
        h = dict(headers or {})
        if session is not None:
            h["mcp-session-id"] = session
        body = tool_call(tool) if method == "POST" else None
        if body is not None and revision == STATELESS:
            body = enveloped(body)
        req = HttpRequest(
            method=method,
            path="/mcp",
            headers={
                **({"content-type": "application/json"} if body else {}),
                **({"authorization": f"Bearer {token}"} if token else {}),
                "mcp-protocol-version": revision,
                **h,
            },
            body=json.dumps(body).encode() if body else None,
            source_address=source,
        )
        return await self.checker.check(req)


def make_stack(
    tmp_path: Path, store: MemoryStore | None = None, *, top: dict[str, Any] | None = None, **server: Any
) -> Stack:
    key_file = devkey.ensure_key(tmp_path / "dev.pem")
    config = make_config([issuer_spec(local_key_file=str(key_file))], [server_spec(**server)], **(top or {}))
    verifier, _ = build_verifier(config)
    store = store if store is not None else MemoryStore()
    return Stack(make_checker(config, verifier, store=store), store, key_file)


def retry_after(decision: Decision) -> str | None:
    return dict(decision.deny_headers).get("retry-after")


# ---------------------------------------------------------------- revocation


async def test_revoked_jti_is_401_token_revoked(tmp_path: Path) -> None:
    stack = make_stack(tmp_path)
    token = stack.token(jti="j-1")
    assert (await stack.call(token)).allowed
    await stack.store.revoke_token("j-1", time.time() + 3600)
    decision = await stack.call(token)
    assert (decision.allowed, decision.status, decision.reason) == (False, 401, "token_revoked")
    assert 'error="invalid_token"' in dict(decision.deny_headers)["www-authenticate"]
    assert (await stack.call(stack.token(jti="j-2"))).allowed  # another token of alice still works


async def test_revoked_subject_refuses_older_tokens_only(tmp_path: Path) -> None:
    stack = make_stack(tmp_path)
    now = int(time.time())
    old, new = stack.token(iat=now - 10), stack.token(iat=now + 1)
    await stack.store.revoke_subject("alice", now)
    assert (await stack.call(old)).reason == "token_revoked"
    assert (await stack.call(new)).allowed
    assert (await stack.call(stack.token("bob", iat=now - 10))).allowed


async def test_require_exp_refuses_tokens_without_exp(tmp_path: Path) -> None:
    key_file = devkey.ensure_key(tmp_path / "dev.pem")
    spec = issuer_spec(local_key_file=str(key_file), required_claims=["iss", "aud", "sub"], require_exp=True)
    config = make_config([spec], [server_spec()])
    assert "exp" in config.issuers["main"].required_claims
    loose = make_config([issuer_spec(local_key_file=str(key_file), required_claims=["iss", "aud", "sub"])])
    assert "exp" not in loose.issuers["main"].required_claims
    verifier, _ = build_verifier(config)
    checker = make_checker(config, verifier, store=MemoryStore())
    stack = Stack(checker, MemoryStore(), key_file)
    decision = await stack.call(stack.token(exp=None))
    assert (decision.status, decision.reason) == (401, "token_claim_missing")
    assert (await stack.call(stack.token())).allowed


# ---------------------------------------------------------------- session binding


async def test_session_bound_to_first_subject_and_hijack_refused_404(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stack = make_stack(tmp_path)
    alice, bob = stack.token("alice"), stack.token("bob")
    assert (await stack.call(alice, session="sid-1")).allowed
    assert (await stack.call(alice, session="sid-1")).allowed
    with caplog.at_level("WARNING", logger="mcp_authz.state"):
        decision = await stack.call(bob, session="sid-1")
    assert (decision.allowed, decision.status, decision.reason) == (False, 404, "session_hijack")
    assert json.loads(decision.body)["error"]["message"] == "Session not found"
    [record] = [r for r in caplog.records if r.getMessage() == "session_hijack"]
    assert (record.subject, record.owner) == ("bob", "alice")  # type: ignore[attr-defined]
    assert "sid-1" not in json.dumps(record.__dict__, default=str)  # the id itself is never logged
    assert (await stack.call(bob, session="sid-2")).allowed  # bob's own session


async def test_hijack_status_403_when_configured(tmp_path: Path) -> None:
    stack = make_stack(tmp_path, sessions={"hijack_status": 403})
    assert (await stack.call(stack.token("alice"), session="s")).allowed
    decision = await stack.call(stack.token("bob"), session="s")
    assert (decision.status, decision.reason) == (403, "session_hijack")


async def test_delete_by_owner_ends_binding_other_delete_refused(tmp_path: Path) -> None:
    stack = make_stack(tmp_path)
    alice, bob = stack.token("alice"), stack.token("bob")
    assert (await stack.call(alice, session="sid")).allowed
    assert (await stack.call(bob, session="sid", method="DELETE")).reason == "session_hijack"
    assert len(await stack.store.sessions("mcp")) == 1
    assert (await stack.call(alice, session="sid", method="DELETE")).allowed
    assert await stack.store.sessions("mcp") == []
    assert (await stack.call(bob, session="sid")).allowed  # ended: a new binding (the server refuses the old id)


async def test_no_binding_when_disabled_anonymous_or_stateless(tmp_path: Path) -> None:
    off = make_stack(tmp_path, sessions={"bind": False})
    assert (await off.call(off.token("alice"), session="s")).allowed
    assert (await off.call(off.token("bob"), session="s")).allowed
    anon = make_stack(tmp_path, mode="optional")
    assert (await anon.call(None, session="s")).allowed
    assert await anon.store.sessions() == []
    stateless = make_stack(tmp_path)
    headers = {"mcp-method": "tools/call", "mcp-name": "echo"}
    assert (await stateless.call(stateless.token(), session="s", revision=STATELESS, headers=headers)).allowed
    assert await stateless.store.sessions() == []


# ---------------------------------------------------------------- rate limits


async def test_n_plus_first_call_gets_429_with_retry_after(tmp_path: Path) -> None:
    stack = make_stack(tmp_path, rate_limits=[{"name": "per-user", "limit": 3, "window": 60}])
    alice = stack.token("alice")
    assert all([(await stack.call(alice)).allowed for _ in range(3)])
    decision = await stack.call(alice)
    assert (decision.allowed, decision.status, decision.reason) == (False, 429, "rate_limited")
    assert retry_after(decision) == "20"  # 60 s / 3 calls: one comes back every 20 s
    assert json.loads(decision.body)["error"]["message"] == "Too many requests"
    assert (await stack.call(stack.token("bob"))).allowed  # per subject


async def test_anonymous_callers_count_per_source_address(tmp_path: Path) -> None:
    stack = make_stack(tmp_path, mode="optional", rate_limits=[{"name": "all", "limit": 2, "window": 60}])
    assert (await stack.call(None, source="10.0.0.7")).allowed and (await stack.call(None, source="10.0.0.7")).allowed
    assert (await stack.call(None, source="10.0.0.7")).status == 429
    assert (await stack.call(None, source="10.0.0.8")).allowed  # another anonymous caller keeps its allowance
    assert (await stack.call(stack.token("alice"), source="10.0.0.7")).allowed  # an identified one too


async def test_per_subject_tool_limit_counts_each_tool(tmp_path: Path) -> None:
    limits = [{"name": "writes", "per": "subject_tool", "tools": ["write_*"], "limit": 1, "window": 10}]
    stack = make_stack(tmp_path, rate_limits=limits)
    alice = stack.token("alice")
    assert (await stack.call(alice, "write_a")).allowed
    assert (await stack.call(alice, "write_b")).allowed
    assert (await stack.call(alice, "read")).allowed and (await stack.call(alice, "read")).allowed
    decision = await stack.call(alice, "write_a")
    assert (decision.status, retry_after(decision)) == (429, "10")


def test_rate_limit_names_unique() -> None:
    from authz.config.errors import ConfigError

    limit = {"name": "x", "limit": 1, "window": 1}
    with pytest.raises(ConfigError, match="rate_limits"):
        make_config(servers=[server_spec(rate_limits=[limit, limit])])


# ---------------------------------------------------------------- outages: fail closed (default) or open


async def test_store_down_fails_closed_by_default(tmp_path: Path) -> None:
    stack = make_stack(tmp_path, BrokenStore(), rate_limits=[{"name": "r", "limit": 5, "window": 60}])
    decision = await stack.call(stack.token())
    assert (decision.allowed, decision.status, decision.reason) == (False, 503, "store_unavailable")
    assert "revocation" in decision.detail


async def test_store_down_fails_open_per_feature(tmp_path: Path) -> None:
    limits = [{"name": "r", "limit": 5, "window": 60}]
    failure = {"revocation": "open", "sessions": "open", "rate_limits": "open"}
    stack = make_stack(tmp_path, BrokenStore(), top={"store": {"failure": failure}}, rate_limits=limits)
    assert (await stack.call(stack.token(), session="s")).allowed
    partly = {"revocation": "open", "sessions": "open"}
    stack = make_stack(tmp_path, BrokenStore(), top={"store": {"failure": partly}}, rate_limits=limits)
    decision = await stack.call(stack.token(), session="s")
    assert (decision.status, decision.reason) == (503, "store_unavailable") and "rate_limits" in decision.detail
    only_rev = make_stack(tmp_path, BrokenStore(), top={"store": {"failure": {"revocation": "open"}}})
    decision = await only_rev.call(only_rev.token(), session="s")
    assert (decision.status, decision.reason) == (503, "store_unavailable") and "sessions" in decision.detail


async def test_fail_open_revocation_still_applies_the_local_copy(tmp_path: Path) -> None:
    stack = make_stack(
        tmp_path, BrokenStore(), top={"store": {"failure": {"revocation": "open"}}}, sessions={"bind": False}
    )
    await stack.store.revoke_token("known", time.time() + 60)
    assert (await stack.call(stack.token(jti="known"))).reason == "token_revoked"
    assert (await stack.call(stack.token(jti="other"))).allowed


def test_store_url_is_validated_without_echoing_it() -> None:
    from authz.config.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        make_config(store={"url": "http://user:hunter2@host/0"})
    assert "hunter2" not in str(info.value) and "store.url" in str(info.value)


def test_store_url_password_is_masked_in_the_startup_summary() -> None:
    from authz.observe.logs import masked

    config = make_config(store={"url": "rediss://:hunter2@redis.internal:6380/2"})
    summary = json.dumps(masked(config.settings))
    assert "hunter2" not in summary and "rediss://:***@redis.internal:6380/2" in summary


# ---------------------------------------------------------------- wiring: the Authorizer's store across reloads


async def test_authorizer_keeps_the_store_across_reloads_unless_its_section_changes(tmp_path: Path) -> None:
    import yaml

    from authz.app import Authorizer
    from authz.config.load import load_config

    key_file = devkey.ensure_key(tmp_path / "dev.pem")
    path = tmp_path / "config.yaml"
    doc: dict[str, Any] = {
        "issuers": [issuer_spec(local_key_file=str(key_file))],
        "servers": [server_spec()],
        "listen": {"discovery": ""},
    }
    path.write_text(yaml.safe_dump(doc))
    authorizer = Authorizer(load_config(path), str(path))
    store = authorizer.store
    assert authorizer.readiness()["store"] is True
    await store.revoke_token("j-kept", time.time() + 60)
    token = devkey.mint(key_file, issuer=ISSUER, audience=RESOURCE, subject="alice", extra={"jti": "j-kept"})
    req = HttpRequest(
        "POST",
        "/mcp",
        {"authorization": f"Bearer {token}", "content-type": "application/json"},
        json.dumps(tool_call("echo")).encode(),
    )

    doc["servers"] = [server_spec(rate_limits=[{"name": "r", "limit": 5, "window": 60}])]
    path.write_text(yaml.safe_dump(doc))
    assert await authorizer.reload()
    assert authorizer.store is store  # unchanged store section: same store, revocations kept
    assert (await authorizer.checker.check(req)).reason == "token_revoked"

    doc["store"] = {"key_prefix": "other:"}
    path.write_text(yaml.safe_dump(doc))
    assert await authorizer.reload()
    assert authorizer.store is not store and authorizer.checker.stages.sessions.store is authorizer.store
    assert (await authorizer.checker.check(req)).allowed  # a new (empty) memory store


# ---------------------------------------------------------------- a session flood (issue 21 item 2)


async def test_a_session_flood_hits_the_rate_limit_before_any_session_is_stored(tmp_path: Path) -> None:
    stack = make_stack(tmp_path, rate_limits=[{"name": "per-user", "limit": 5, "window": 60}])
    mallory = stack.token("mallory")
    decisions = [await stack.call(mallory, session=f"flood-{i}") for i in range(20)]
    assert [d.allowed for d in decisions] == [True] * 5 + [False] * 15
    assert {d.reason for d in decisions[5:]} == {"rate_limited"}
    assert len(await stack.store.sessions(subject="mallory")) == 5  # refused calls bound nothing


async def test_sessions_per_subject_are_bounded_and_a_bystander_is_unaffected(tmp_path: Path) -> None:
    stack = make_stack(tmp_path)
    alice, mallory = stack.token("alice"), stack.token("mallory")
    assert (await stack.call(alice, session="alice-1")).allowed
    for i in range(DEFAULT_MAX_SESSIONS_PER_SUBJECT):
        assert (await stack.call(mallory, session=f"flood-{i}")).allowed
    over = await stack.call(mallory, session="flood-over")
    assert (over.allowed, over.status, over.reason) == (False, 429, "too_many_sessions")
    assert 3500 <= int(retry_after(over) or 0) <= 3600  # when mallory's first session expires (ttl 3600)
    assert (await stack.call(mallory, session="flood-0")).allowed  # its sessions still work
    assert (await stack.call(alice, session="alice-1")).allowed and (await stack.call(alice, session="alice-2")).allowed
    assert len(await stack.store.sessions(subject="mallory")) == DEFAULT_MAX_SESSIONS_PER_SUBJECT


def test_a_subject_revocation_is_kept_for_the_longest_token_lifetime() -> None:
    jwks = {"jwks_uri": "http://127.0.0.1:9/jwks"}
    longer = issuer_spec(name="b", issuer="https://b.example", max_lifetime=7200, **jwks)
    config = make_config([issuer_spec(name="a", max_lifetime=600, **jwks), longer])
    skew = max(i.clock_skew for i in config.issuers.values())
    assert subject_revocation_until(config.issuers.values(), 1000.0) == 1000.0 + 7200 + skew
