"""Fail-overs under load (issue 20): real Envoy, ``mcp-authz serve`` on a Redis Sentinel set (a primary, two
replicas, three sentinels) and on a six-node Redis Cluster, both started on loopback.

A bounded load (loadgen.py, 4 connections) sends valid calls (200), calls with a revoked token (401) and
calls the policy refuses (403) while a fault hits the topology: the master is killed (Sentinel), the master
holding the revocation keys is killed (Cluster), a master is paused with SIGSTOP past the store deadline
and the sentinels' down-after time, then resumed. Every store feature fails closed, and ``search`` is rate
limited far above the load, so each valid call asks Redis. A token revoked just before the fault, with
``revocation_replicas: 1`` (``WAIT``), is the durable setting under test.

Counted and written to ``failover.jsonl`` in the e2e log directory (and printed): requests let through that
should have been refused (must be 0), 5xx during the gap, time from the fault until the answers are normal
again, revocations lost (must be 0). Every request gets the authorizer's own decision (an audit event),
never Envoy's timeout answer: the Checks are answered within the store deadline. Marked ``failover``: they
run in the suite, briefly (each fault is a few seconds of load).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from faultstack import FaultStack, Signer, start_fault_stack, start_load
from harness import Authorizer, Envoy, Factory, SampleServer, free_port
from redis_topologies import RedisClusterSet, SentinelSet, start_redis_cluster, start_sentinel_set

from authz.admin.client import AdminClient

pytestmark = pytest.mark.failover

KEY = Signer("failover-key")
ADMIN_TOKEN = "failover-admin-token-0123456789"
PREFIX = "fo:"
REVOCATION_KEY = "{fo:rev}:jti"  # the slot of every revocation key (and the epoch the store probes)
RATE_KEY = "fo:rl:demo\x00search\x00fault-user"  # the rate-limit count every valid call makes
NORMAL = {"valid": 200, "revoked": 401, "forbidden": 403}
RECOVERY_BOUND = 25.0  # seconds from the fault until every answer is normal again (measured figures: docs)


@dataclass
class Topology:
    name: str
    store: dict[str, Any]  # the store section
    sentinel: SentinelSet | None = None
    cluster: RedisClusterSet | None = None

    def stop(self) -> None:
        for part in (self.sentinel, self.cluster):
            if part is not None:
                part.stop()


@pytest.fixture(scope="module", params=["sentinel", "cluster"])
def topology(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    log_dir = tmp_path_factory.mktemp(f"failover-{request.param}")
    if request.param == "sentinel":
        sentinel = start_sentinel_set(log_dir)
        found = Topology("sentinel", {"url": sentinel.url}, sentinel=sentinel)
    else:
        cluster = start_redis_cluster(log_dir)
        found = Topology("cluster", {"cluster": {"nodes": cluster.seeds}}, cluster=cluster)
    yield found
    found.stop()


@pytest.fixture(scope="module")
def stack(
    topology: Topology,
    tmp_path_factory: pytest.TempPathFactory,
    sample_server: Factory[SampleServer],
    authorizer: Factory[Authorizer],
    envoy: Factory[Envoy],
) -> Iterator[FaultStack]:
    store = {
        **topology.store,
        "key_prefix": PREFIX,
        "timeout_ms": 250,  # the store deadline: far below Envoy's 2 s
        "revocation_replicas": 1,
        "revocation_wait_ms": 2000,
        "failure": {"revocation": "closed", "sessions": "closed", "rate_limits": "closed"},
    }
    limits = [{"name": "search", "per": "subject", "tools": ["search"], "limit": 1_000_000, "window": 60}]
    running = start_fault_stack(
        tmp_path_factory.mktemp(f"failover-stack-{topology.name}"),
        name=f"failover-{topology.name}",
        signer=KEY,
        sample_server=sample_server,
        authorizer=authorizer,
        envoy=envoy,
        server_fields={"rate_limits": limits},
        store=store,
        admin={"listen": f"127.0.0.1:{free_port()}", "token": ADMIN_TOKEN},
    )
    yield running
    running.stop()


def revoke(stack: FaultStack, token: str) -> None:
    """Revoke ``token`` by its jti through the authorizer's admin API (it waits for a Redis replica)."""
    claims = _claims(token)
    with AdminClient(stack.spec["admin"]["listen"], token=ADMIN_TOKEN) as admin:
        admin.revoke_token(claims["jti"], float(claims["exp"]))


def _claims(token: str) -> dict[str, Any]:
    import jwt

    return dict(jwt.decode(token, options={"verify_signature": False}))


@dataclass
class Figures:
    topology: str
    fault: str
    requests: int
    let_through: int
    in_gap: int
    errors_5xx_in_gap: int
    recovered_after: float  # seconds from the fault until the last abnormal answer
    revocations_lost: int
    undecided: int  # answers without the authorizer's decision (Envoy timed out or failed)

    def record(self, log_dir: Path) -> None:
        line = json.dumps(self.__dict__)
        print(f"FAILOVER {line}")
        with open(log_dir / "failover.jsonl", "a", encoding="utf-8") as out:
            out.write(line + "\n")


def under_load(
    stack: FaultStack, topology: Topology, fault: str, break_it: Callable[[], None], e2e_log_dir: Path
) -> Figures:
    """Run the load, revoke a token just before ``break_it`` (which returns once the topology recovered)."""
    valid = stack.token(KEY)
    revoked = stack.token(KEY)
    forbidden = stack.token(KEY)  # tools:read only: delete_repo is refused
    revoke(stack, revoked)
    assert stack.call("search", valid)[0] == 200 and stack.call("search", revoked)[0] == 401
    kinds = [
        {"name": "valid", "tool": "search", "tokens": [valid]},
        {"name": "revoked", "tool": "search", "tokens": [revoked]},
        {"name": "forbidden", "tool": "delete_repo", "tokens": [forbidden]},
    ]
    load = start_load(stack.log_dir, stack.url, kinds, duration=60.0, concurrency=4)
    late = stack.token(KEY)
    try:
        time.sleep(1.0)
        revoke(stack, late)  # acknowledged by a replica (WAIT) just before the master goes
        start = time.time()
        break_it()
        healed = time.time()
        time.sleep(2.0)
    finally:
        results = load.stop()
    lost = int(stack.call("search", late)[0] == 200) + int(stack.call("search", revoked)[0] == 200)
    audited = stack.audit()
    abnormal = [r for r in results if r["status"] != NORMAL[r["kind"]] and r["t0"] >= start]
    gap = [r for r in results if start <= r["t0"] <= healed]
    figures = Figures(
        topology=topology.name,
        fault=fault,
        requests=len(results),
        let_through=sum(1 for r in results if r["status"] == 200 and r["kind"] != "valid"),
        in_gap=len(gap),
        errors_5xx_in_gap=sum(1 for r in gap if r["status"] >= 500),
        recovered_after=round(max((r["t1"] for r in abnormal), default=start) - start, 2),
        revocations_lost=lost,
        undecided=sum(1 for r in results if r["marker"] not in audited),
    )
    figures.record(e2e_log_dir)
    assert all(r["error"] is None for r in results), "Envoy stopped answering"
    assert all(r["status"] in (NORMAL[r["kind"]], 503) for r in results), "an answer other than the normal one or 503"
    assert figures.let_through == 0 and figures.revocations_lost == 0, figures
    ran = stack.reached_upstream() & {r["marker"] for r in results}
    assert ran == {r["marker"] for r in results if r["status"] == 200}, "the MCP server ran what was refused"
    assert figures.undecided == 0, "a Check was not answered within Envoy's timeout"
    assert figures.recovered_after < RECOVERY_BOUND, figures
    tail = sorted(results, key=lambda r: r["t0"])[-12:]
    assert all(r["status"] == NORMAL[r["kind"]] for r in tail), "service did not resume"
    assert stack.authorizer.proc.alive
    return figures


def test_pausing_a_master_past_the_deadline(stack: FaultStack, topology: Topology, e2e_log_dir: Path) -> None:
    """SIGSTOP for 3 s: past the store deadline (250 ms) and the down-after time (1 s), so it fails over."""
    if topology.sentinel is not None:
        sentinel = topology.sentinel
        port = sentinel.master_port()

        def pause() -> None:
            _paused(sentinel.nodes[port].proc.pid, 3.0)
            sentinel.wait_master()  # the old one resumed, or a replica promoted meanwhile
    else:  # the master every valid Check asks (its rate-limit count)
        assert topology.cluster is not None
        cluster = topology.cluster
        port = cluster.master_of(RATE_KEY)

        def pause() -> None:
            _paused(cluster.nodes[port].proc.pid, 3.0)
            cluster.wait_slot_master(RATE_KEY)

    under_load(stack, topology, "sigstop-master-3s", pause, e2e_log_dir)


def test_killing_the_master(stack: FaultStack, topology: Topology, e2e_log_dir: Path) -> None:
    if topology.sentinel is not None:
        sentinel = topology.sentinel

        def kill() -> None:
            sentinel.wait_failover(sentinel.kill_master())
    else:
        assert topology.cluster is not None
        cluster = topology.cluster

        def kill() -> None:
            port = cluster.master_of(REVOCATION_KEY)
            cluster.kill(port)
            cluster.wait_failover(REVOCATION_KEY, port)

    under_load(stack, topology, "kill-master", kill, e2e_log_dir)


def _paused(pid: int | None, seconds: float) -> None:
    """SIGSTOP ``pid`` for ``seconds``, then SIGCONT."""
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        os.kill(pid, signal.SIGCONT)
