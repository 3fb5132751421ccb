"""Load held: a second process sends sustained load through real Envoy for a bounded time, with many
distinct valid tokens (five times the token cache), tokens under unknown kids, garbage tokens, no token,
and calls the policy refuses.

Measured on the authorizer process after a warm-up and again after the load: resident memory (VmRSS),
open file descriptors (/proc/<pid>/fd), asyncio tasks and cache sizes (its SIGUSR1 `stats` line).
Every answer must be the normal one for its kind (no 503: each Check answered within Envoy's 2 s
timeout; only an unknown kid may get the authorizer's retryable 503 ``jwks_unavailable`` while refetching
is throttled), nothing refused may reach the MCP server, the caches stay at their caps, unknown kids cause
at most one JWKS refetch per `jwks_min_refetch`, and after the load the service answers normally.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest
from faultstack import FaultStack, Signer, open_fds, rss_kb, start_fault_stack, start_load
from harness import Authorizer, Envoy, Factory, SampleServer

KEY = Signer("load-key")
CACHE = 200  # token_cache_size
VALID_TOKENS = 5 * CACHE
MIN_REFETCH = 10
WARM_UP = 1.5
DURATION = 7.0
RSS_GROWTH_KB = 32 * 1024  # generous: the caches are far smaller; an unbounded one would pass it only briefly
# An unknown kid: 401 once a fetch has looked for it, else 503 jwks_unavailable (refetch throttled: retry).
EXPECTED = {"valid": {200}, "forbidden": {403}, "unknown-kid": {401, 503}, "garbage": {401}, "anonymous": {401}}


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    sample_server: Factory[SampleServer],
    authorizer: Factory[Authorizer],
    envoy: Factory[Envoy],
) -> Iterator[FaultStack]:
    running = start_fault_stack(
        tmp_path_factory.mktemp("load"),
        name="load",
        signer=KEY,
        sample_server=sample_server,
        authorizer=authorizer,
        envoy=envoy,
        issuer_fields={"jwks_min_refetch": MIN_REFETCH},
        token_cache_size=CACHE,
        audit={"enabled": False},
    )
    yield running
    running.stop()


def kinds(stack: FaultStack) -> list[dict[str, Any]]:
    valid = [stack.token(KEY, subject=f"user-{i}") for i in range(VALID_TOKENS)]
    strangers = [Signer(f"unknown-{i}") for i in range(3)]
    unknown = [stack.token(strangers[i % 3], subject=f"x-{i}") for i in range(300)]
    garbage = [secrets.token_urlsafe(40) + "." + secrets.token_urlsafe(200) + "." + "A" * i for i in range(100)]
    return [
        {"name": "valid", "tool": "search", "tokens": valid},
        {"name": "forbidden", "tool": "delete_repo", "tokens": valid[:50]},
        {"name": "unknown-kid", "tool": "search", "tokens": unknown},
        {"name": "garbage", "tool": "search", "tokens": garbage},
        {"name": "anonymous", "tool": "search", "tokens": []},
    ]


def check_answers(stack: FaultStack, results: list[dict[str, Any]]) -> None:
    wrong = [r for r in results if r["status"] not in EXPECTED[r["kind"]]]
    assert not wrong, f"{len(wrong)} abnormal answers, e.g. {wrong[:3]}"
    markers = {r["marker"] for r in results}
    assert stack.reached_upstream() & markers == {r["marker"] for r in results if r["kind"] == "valid"}


def test_load_held(stack: FaultStack) -> None:
    pid = stack.authorizer.proc.pid
    assert pid is not None
    load_kinds = kinds(stack)

    check_answers(stack, start_load(stack.log_dir, stack.url, load_kinds, duration=WARM_UP, concurrency=16).results())
    time.sleep(0.5)
    stats0, rss0, fds0, fetches0 = stack.stats(), rss_kb(pid), open_fds(pid), stack.jwks.fetches()
    assert stats0["token_cache"] <= CACHE

    results = start_load(stack.log_dir, stack.url, load_kinds, duration=DURATION, concurrency=16).results()
    check_answers(stack, results)
    time.sleep(0.5)
    stats1, rss1, fds1, fetches1 = stack.stats(), rss_kb(pid), open_fds(pid), stack.jwks.fetches()

    print(
        f"load held: {len(results)} requests in {DURATION:.0f} s; RSS {rss0} -> {rss1} kB, fds {fds0} -> {fds1}, "
        f"tasks {stats0['tasks']} -> {stats1['tasks']}, token cache {stats1['token_cache']}/{CACHE}, "
        f"JWKS fetches +{fetches1 - fetches0}"
    )
    valid = sum(1 for r in results if r["kind"] == "valid")
    assert valid > CACHE, f"only {valid} valid requests: the token cache was never overrun"
    assert (stats1["token_cache"], stats1["token_cache_size"]) == (CACHE, CACHE)
    assert stats1["jwks_keys"] == {"faulty": 1}  # unknown kids add nothing (a fetched set holds at most MAX_KEYS)
    assert fetches1 - fetches0 <= DURATION // MIN_REFETCH + 1, "unknown kids caused a refetch storm"
    assert stats1["tasks"] <= stats0["tasks"] + 2, f"asyncio tasks grew: {stats0['tasks']} -> {stats1['tasks']}"
    assert fds1 <= fds0 + 4, f"file descriptors grew: {fds0} -> {fds1}"
    assert rss1 - rss0 < RSS_GROWTH_KB, f"RSS grew by {rss1 - rss0} kB over {len(results)} requests"

    # after the burst: answered normally (a Check that missed Envoy's 2 s timeout would be a 503)
    token = stack.token(KEY)
    for _ in range(20):
        status, _marker = stack.call("search", token)
        assert status == 200
    status, _marker = stack.call("search", stack.token(Signer("after-burst")))  # unknown kid: refused as before
    assert status in EXPECTED["unknown-kid"]
    assert stack.authorizer.proc.alive
