"""Faults with real processes behind real Envoy: the issuer's JWKS endpoint down, slow, returning garbage,
rotating its keys; the authorizer SIGKILLed and restarted under load; an invalid config reload under load.

Every refusal is checked twice: the status the client got, and the reason the authorizer gave in its
audit event for that very request (matched by the unique `query` marker). Nothing may be let through:
the set of markers the sample MCP server ran must equal the set of requests answered 200 as expected.
The authorizer's issuer has `jwks_timeout: 0.5`, `jwks_min_refetch: 0` (every unknown kid refetches,
one fetch at a time) and Envoy's ext_authz timeout is 2 s.
"""

from __future__ import annotations

import copy
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from faultstack import FaultStack, Signer, jwks, start_fault_stack, start_load, write_config
from harness import Authorizer, Envoy, Factory, Redis, SampleServer

KEY_A = Signer("key-a")


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    sample_server: Factory[SampleServer],
    authorizer: Factory[Authorizer],
    envoy: Factory[Envoy],
) -> Iterator[FaultStack]:
    running = start_fault_stack(
        tmp_path_factory.mktemp("faults"),
        name="faults",
        signer=KEY_A,
        sample_server=sample_server,
        authorizer=authorizer,
        envoy=envoy,
    )
    yield running
    running.stop()


def expect(stack: FaultStack, token: str | None, status: int, reason: str, tool: str = "search") -> str:
    """One call through Envoy: the client gets `status`, the authorizer logged `reason` for it."""
    got, marker = stack.call(tool, token)
    assert got == status, f"{tool} with {reason!r} expected: got HTTP {got}"
    assert stack.reason(marker) == (status, reason)
    return marker


def allowed(stack: FaultStack, token: str) -> str:
    got, marker = stack.call("search", token)
    assert got == 200, f"a valid token was refused with {got}: {stack.audit().get(marker)}"
    return marker


def assert_nothing_let_through(stack: FaultStack, allowed_markers: set[str], refused_markers: set[str]) -> None:
    ran = stack.reached_upstream()
    assert allowed_markers <= ran, "an allowed call did not reach the MCP server"
    assert not ran & refused_markers, f"refused calls reached the MCP server: {ran & refused_markers}"
    assert stack.authorizer.proc.alive, "the authorizer died"


def reset_keys(stack: FaultStack, *signers: Signer) -> None:
    """The JWKS server serves `signers` normally again; the authorizer picks them up at the next unknown kid."""
    stack.jwks.set("ok", jwks=jwks(*signers))


# ---------------------------------------------------------------------------------------------- JWKS faults


def test_jwks_down(stack: FaultStack) -> None:
    key_b = Signer("key-b")
    reset_keys(stack, KEY_A)
    ok = {allowed(stack, stack.token(KEY_A))}
    stack.jwks_proc.stop()  # connection refused from now on
    refused = {
        expect(stack, stack.token(key_b), 503, "jwks_unavailable"),  # the new kid cannot be looked up: fail closed
        expect(stack, stack.token(key_b), 503, "jwks_unavailable"),
        expect(stack, None, 401, "token_missing"),
        expect(stack, stack.token(KEY_A), 403, "insufficient_scope", tool="delete_repo"),
    }
    ok.add(allowed(stack, stack.token(KEY_A)))  # the last good keys keep serving
    assert "jwks fetch failed" in stack.authorizer.proc.log_text()

    stack.restart_jwks()
    reset_keys(stack, KEY_A, key_b)
    ok.add(allowed(stack, stack.token(key_b)))  # back: the next unknown kid refetches
    assert_nothing_let_through(stack, ok, refused)


def test_jwks_slow(stack: FaultStack) -> None:
    key_c = Signer("key-c")
    reset_keys(stack, KEY_A)
    ok = {allowed(stack, stack.token(KEY_A))}
    stack.jwks.set("slow", jwks=jwks(KEY_A, key_c), delay=3.0)  # six times the authorizer's jwks_timeout
    before = stack.jwks.fetches()
    # refused by the authorizer itself (its audit event exists) well within Envoy's 2 s timeout
    refused = {expect(stack, stack.token(key_c), 503, "jwks_unavailable") for _ in range(3)}
    assert stack.jwks.fetches() - before == 3  # one bounded fetch per unknown kid, each given up
    ok.add(allowed(stack, stack.token(KEY_A)))
    stack.jwks.set("ok")
    ok.add(allowed(stack, stack.token(key_c)))
    assert_nothing_let_through(stack, ok, refused)


@pytest.mark.parametrize(
    ("mode", "body"),
    [
        ("garbage", "<html>maintenance</html>"),
        ("garbage", '{"keys": "none"}'),
        ("garbage", '{"keys": []}'),
        ("garbage", '{"keys": [{"kty": "EC", "kid": "x", "crv": "P-256", "x": "!!", "y": "!!"}]}'),
        ("garbage", "[" * 100_000),
        ("error", ""),
    ],
    ids=["html", "keys-not-a-list", "no-keys", "unloadable-key", "deep-nesting", "http-500"],
)
def test_jwks_garbage(stack: FaultStack, mode: str, body: str) -> None:
    key_d = Signer(f"key-d-{uuid.uuid4().hex[:8]}")  # a kid the authorizer has never seen
    reset_keys(stack, KEY_A)
    ok = {allowed(stack, stack.token(KEY_A))}
    stack.jwks.set(mode, garbage=body)
    refused = {expect(stack, stack.token(key_d), 503, "jwks_unavailable")}
    ok.add(allowed(stack, stack.token(KEY_A)))  # garbage replaced nothing
    reset_keys(stack, KEY_A, key_d)
    ok.add(allowed(stack, stack.token(key_d)))
    assert_nothing_let_through(stack, ok, refused)


def test_jwks_rotation(stack: FaultStack) -> None:
    key_b, key_c = Signer("rot-b"), Signer("rot-c")
    reset_keys(stack, KEY_A)
    old = stack.token(KEY_A)  # one token, presented again and again (cached after its first Check)
    ok = {allowed(stack, old)}

    # the issuer publishes a new key beside the old one and signs with it: accepted within one refetch
    reset_keys(stack, KEY_A, key_b)
    before = stack.jwks.fetches()
    ok.add(allowed(stack, stack.token(key_b)))
    assert stack.jwks.fetches() - before == 1
    ok.add(allowed(stack, old))  # its key is still published

    # the old key is withdrawn; the next refresh (set off by another new kid) drops it
    reset_keys(stack, key_b, key_c)
    ok.add(allowed(stack, stack.token(key_c)))
    refused = {
        expect(stack, old, 401, "token_kid_unknown"),
        expect(stack, stack.token(KEY_A), 401, "token_kid_unknown"),
    }
    ok.add(allowed(stack, stack.token(key_b)))
    assert_nothing_let_through(stack, ok, refused)
    reset_keys(stack, KEY_A)


# ---------------------------------------------------------------------------------------------- under load

NORMAL = {"valid": 200, "forbidden": 403, "anonymous": 401}
LOAD_LIMIT = 30.0  # seconds: the loads below are ended by the test (SIGTERM) once the fault is over


def load_kinds(token: str) -> list[dict[str, Any]]:
    """What the load sends, in turn: an allowed call, a call the policy refuses, a call without a token."""
    return [
        {"name": "valid", "tool": "search", "tokens": [token]},
        {"name": "forbidden", "tool": "delete_repo", "tokens": [token]},
        {"name": "anonymous", "tool": "search", "tokens": []},
    ]


def assert_load_let_nothing_through(stack: FaultStack, results: list[dict[str, Any]]) -> None:
    """The MCP server ran exactly the load's calls answered 200, and each of those was an allowed kind."""
    markers = {r["marker"] for r in results}
    ran = stack.reached_upstream() & markers
    answered = {r["marker"] for r in results if r["status"] == 200}
    assert ran == answered, f"ran but not answered 200: {len(ran - answered)}; answered but not run: {answered - ran}"
    assert all(r["kind"] == "valid" for r in results if r["status"] == 200), "a refused kind was answered 200"


def test_authorizer_killed_and_restarted_under_load(stack: FaultStack, authorizer: Factory[Authorizer]) -> None:
    reset_keys(stack, KEY_A)
    token = stack.token(KEY_A)
    allowed(stack, token)
    envoy_pid = stack.envoy.proc.pid
    load = start_load(stack.log_dir, stack.url, load_kinds(token), duration=LOAD_LIMIT)
    time.sleep(1.0)
    stack.kill_authorizer()
    dead = time.time()
    time.sleep(1.0)
    restarting = time.time()
    stack.restart_authorizer(authorizer)  # same config, same ports; returns once ready
    ready = time.time()
    time.sleep(1.0)
    results = load.stop()

    assert all(r["error"] is None for r in results), "Envoy stopped answering"
    odd = [r for r in results if r["status"] not in (NORMAL[r["kind"]], 503)]
    assert not odd, f"answers other than the normal one or 503: {odd[:5]}"
    gap = [r for r in results if dead <= r["t0"] and r["t1"] <= restarting]
    assert len(gap) >= 10, "the load did not cover the gap"
    assert all(r["status"] == 503 for r in gap), "a request was answered while no authorizer ran"
    audited = stack.audit()
    assert not any(r["marker"] in audited for r in gap)  # Envoy's own status_on_error answer, not a decision
    after = sorted((r for r in results if r["t0"] > ready), key=lambda r: r["t0"])
    assert len(after) >= 10 and all(r["status"] == NORMAL[r["kind"]] for r in after[-10:]), "service did not resume"
    assert_load_let_nothing_through(stack, results)
    assert stack.envoy.proc.alive and stack.envoy.proc.pid == envoy_pid  # no Envoy restart
    assert allowed(stack, stack.token(KEY_A))


def test_invalid_reload_under_load_keeps_the_old_config(stack: FaultStack) -> None:
    reset_keys(stack, KEY_A)
    token = stack.token(KEY_A)
    allowed(stack, token)
    pid = stack.authorizer.proc.pid
    assert pid is not None
    log = stack.authorizer.proc.log_text
    stricter = copy.deepcopy(stack.spec)
    rules = stricter["servers"][0]["policy"]["rules"]
    next(r for r in rules if r["name"] == "read-tools")["scopes"] = ["tools:write"]  # search now needs tools:write
    schema_invalid = copy.deepcopy(stack.spec)
    schema_invalid["servers"][0]["policy"]["default"] = "maybe"

    def refused_more_than(n: int) -> Callable[[], bool]:
        return lambda: log().count("config reload refused") > n

    load = start_load(stack.log_dir, stack.url, load_kinds(token), duration=LOAD_LIMIT)
    try:
        for bad in ("servers: [this is: not valid", schema_invalid):
            time.sleep(0.5)
            refusals = log().count("config reload refused")
            write_config(stack.config_path, bad)
            os.kill(pid, signal.SIGHUP)
            stack.authorizer.proc.wait_until("the reload refused", refused_more_than(refusals), 10)
        time.sleep(0.5)
        changed = time.time()
        reloads = log().count("config reloaded")
        write_config(stack.config_path, stricter)
        os.kill(pid, signal.SIGHUP)
        stack.authorizer.proc.wait_until("the reload", lambda: log().count("config reloaded") > reloads, 10)
        applied = time.time()
        time.sleep(0.7)
        results = load.stop()
    finally:
        write_config(stack.config_path, stack.spec)
        os.kill(pid, signal.SIGHUP)

    assert stack.authorizer.proc.alive
    before = [r for r in results if r["t1"] < changed]
    after = [r for r in results if r["t0"] > applied]
    assert len(before) >= 30 and len(after) >= 10
    assert all(r["status"] == NORMAL[r["kind"]] for r in before), "the old config stopped serving"
    assert all(r["status"] == (403 if r["kind"] == "valid" else NORMAL[r["kind"]]) for r in after)
    assert {r["status"] for r in results if r["kind"] == "valid"} <= {200, 403}
    assert_load_let_nothing_through(stack, results)
    audited = stack.audit()
    assert {audited[r["marker"]]["reason"] for r in after if r["kind"] == "valid"} == {"insufficient_scope"}


def test_redis_down_and_back_under_load(
    tmp_path_factory: pytest.TempPathFactory,
    sample_server: Factory[SampleServer],
    authorizer: Factory[Authorizer],
    envoy: Factory[Envoy],
    redis: Factory[Redis],
) -> None:
    """Every store feature fails closed; `search` is rate limited (far above the load), so each allowed
    call asks Redis, and revocation is refused while the store is unhealthy."""
    log_dir = tmp_path_factory.mktemp("faults-redis")
    server = redis()
    store = {
        "url": server.url,
        "key_prefix": "faults:",
        "timeout_ms": 1000,  # far above a round trip even on a busy machine, below Envoy's 2 s
        "failure": {"revocation": "closed", "sessions": "closed", "rate_limits": "closed"},
    }
    limits = [{"name": "search", "per": "subject", "tools": ["search"], "limit": 1_000_000, "window": 60}]
    stack = start_fault_stack(
        log_dir,
        name="faults-redis",
        signer=KEY_A,
        sample_server=sample_server,
        authorizer=authorizer,
        envoy=envoy,
        server_fields={"rate_limits": limits},
        store=store,
    )
    log = stack.authorizer.proc.log_text
    try:
        token = stack.token(KEY_A)
        allowed(stack, token)
        load = start_load(stack.log_dir, stack.url, load_kinds(token), duration=LOAD_LIMIT)
        time.sleep(0.8)
        down = time.time()
        server.proc.stop()
        stack.authorizer.proc.wait_until("store unreachable", lambda: "store unreachable" in log())
        unhealthy = time.time()
        time.sleep(0.8)
        back = time.time()
        reachable = log().count("store reachable")
        server = redis(port=server.port)
        stack.authorizer.proc.wait_until("store reachable again", lambda: log().count("store reachable") > reachable)
        time.sleep(0.7)
        results = load.stop()
        after_load = [allowed(stack, stack.token(KEY_A)) for _ in range(3)]
    finally:
        stack.stop()

    assert all(r["error"] is None for r in results)
    odd = [r for r in results if r["status"] not in (NORMAL[r["kind"]], 503)]
    assert not odd, f"answers other than the normal one or 503: {odd[:5]}"
    assert all(r["status"] == NORMAL[r["kind"]] for r in results if r["t1"] < down)
    outage = [r for r in results if unhealthy <= r["t0"] and r["t1"] <= back and r["kind"] != "anonymous"]
    assert len(outage) >= 10 and all(r["status"] == 503 for r in outage), "a call needing the store was answered"
    audited = stack.audit()
    assert {audited[r["marker"]]["reason"] for r in outage} == {"store_unavailable"}
    assert all(r["status"] == 401 for r in results if r["kind"] == "anonymous")  # refused before the store
    assert_load_let_nothing_through(stack, results)
    assert len(after_load) == 3  # allowed again once Redis is back on its port
