"""Three authorizer replicas behind one Envoy (round robin) sharing one Redis topology (issue 20 item 3): a
Sentinel set, then a six-node Cluster.

Every call carries a unique trace id, so the replica that decided it is found in the replicas' audit events.

- A token revoked through one replica's admin API is refused by all three within ``REVOCATION_BOUND`` (the
  measured delay is printed as ``PROPAGATION``).
- A session opened by alice is refused to bob on every replica, and still served to alice on every one.
- A rate limit is global: the N+1th call in the window is refused whichever replica answers it.
- An approval granted once (its callback at one replica) lets exactly one identical retry run, on any replica.
"""

from __future__ import annotations

import copy
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import yaml
from harness import Authorizer, Envoy, Factory, RawMcp, SampleServer, free_port
from redis_topologies import RedisClusterSet, SentinelSet, start_redis_cluster, start_sentinel_set
from stack import ACCEPT, DEFAULT_POLICY, call_body

from authz.admin.client import AdminClient
from authz.approval.gate import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from authz.config.load import parse_config
from authz.identity import devkey
from authz.observe.audit import STREAM
from authz.render.envoy import render_envoy_yaml

REPLICAS = 3
ADMIN_TOKEN = "replicas-admin-token-0123456789"
WEBHOOK_SECRET = "replicas-webhook-secret-0123456789"
CALLBACK_SECRET = "replicas-callback-secret-0123456789"
RATE_LIMIT = 6  # search calls per subject per minute, for the whole fleet
REVOCATION_BOUND = 1.0  # seconds: every replica refuses a revoked token this soon after the admin call returns
HANDSHAKE = "2025-11-25"


class PendingWebhook:
    """An approval webhook that queues every request (202): the decision comes later, by callback."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", "0")))
                body = b'{"status": "queued"}'
                self.send_response(202)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/approvals"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


@dataclass
class Fleet:
    topology: str
    url: str  # the MCP endpoint through Envoy
    authorizers: list[Authorizer]
    admin: list[str]
    sample: SampleServer
    key: Path
    issuer: str

    def token(self, subject: str, scopes: tuple[str, ...] = ("tools:read",)) -> str:
        return devkey.mint(self.key, issuer=self.issuer, audience=self.url, subject=subject, scopes=list(scopes))

    def call(
        self, token: str, tool: str = "read_file", arguments: dict[str, Any] | None = None
    ) -> tuple[int, str, Any]:
        """A 2026-07-28 tools/call through Envoy: (status, trace id, JSON body or None)."""
        marker = uuid.uuid4().hex
        headers = {
            "content-type": "application/json",
            "accept": ACCEPT,
            "mcp-protocol-version": "2026-07-28",
            "mcp-method": "tools/call",
            "mcp-name": tool,
            "authorization": f"Bearer {token}",
            "traceparent": f"00-{marker}-{marker[:16]}-01",
        }
        body = json.dumps(call_body(tool, arguments or {"query": "x", "path": "README.md"}))
        response = httpx.post(self.url, content=body, headers=headers, timeout=10.0)
        try:
            parsed = response.json()
        except ValueError:
            parsed = None
        return response.status_code, marker, parsed

    def decided_by(self, markers: list[str], timeout: float = 5.0) -> dict[str, tuple[int, str]]:
        """For each trace id: (index of the replica whose audit event has it, its reason)."""
        deadline = time.monotonic() + timeout
        while True:
            found: dict[str, tuple[int, str]] = {}
            for n, replica in enumerate(self.authorizers):
                for line in replica.proc.log_text().splitlines():
                    if STREAM in line and line.startswith("{"):
                        event = json.loads(line)
                        if event.get("trace_id") in markers and "reason" in event:
                            found[event["trace_id"]] = (n, str(event["reason"]))
            if len(found) == len(set(markers)) or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    def deletions(self) -> list[str]:
        return [c["arguments"]["repo"] for c in self.sample.calls() if c.get("tool") == "delete_repo"]


def _fleet_envoy(rendered: str, grpc: list[str]) -> str:
    """The rendered Envoy with every replica as an endpoint of the authorizer cluster (round robin)."""
    doc = yaml.safe_load(rendered)
    cluster = next(c for c in doc["static_resources"]["clusters"] if c["name"] == "mcp_authz")
    template = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    endpoints = []
    for address in grpc:
        host, _, port = address.rpartition(":")
        endpoint = copy.deepcopy(template)
        endpoint["endpoint"]["address"]["socket_address"] = {"address": host, "port_value": int(port)}
        endpoints.append(endpoint)
    cluster["load_assignment"]["endpoints"][0]["lb_endpoints"] = endpoints
    cluster["lb_policy"] = "ROUND_ROBIN"
    return yaml.safe_dump(doc, sort_keys=False)


@pytest.fixture(scope="module", params=["sentinel", "cluster"])
def fleet(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    sample_server: Factory[SampleServer],
    authorizer: Factory[Authorizer],
    envoy: Factory[Envoy],
) -> Iterator[Fleet]:
    log_dir = tmp_path_factory.mktemp(f"replicas-{request.param}")
    topology: SentinelSet | RedisClusterSet
    if request.param == "sentinel":
        topology = start_sentinel_set(log_dir)
        store: dict[str, Any] = {"url": topology.url}
    else:
        topology = start_redis_cluster(log_dir)
        store = {"cluster": {"nodes": topology.seeds}}
    webhook = PendingWebhook()
    sample = sample_server(json_response=True)
    port = free_port()
    resource, issuer = f"http://127.0.0.1:{port}/mcp", f"http://127.0.0.1:{port}/dev"
    key = devkey.ensure_key(log_dir / "dev-key.pem")
    policy = copy.deepcopy(DEFAULT_POLICY)
    for rule in policy["rules"]:
        if rule["name"] == "write-tools":
            rule["approval"] = True
    specs: list[dict[str, Any]] = []
    for _ in range(REPLICAS):
        specs.append(
            {
                "listen": {"grpc": f"127.0.0.1:{free_port()}", "discovery": f"127.0.0.1:{free_port()}"},
                "issuers": [{"name": "dev", "issuer": issuer, "local_key_file": str(key), "require_jti": True}],
                "servers": [
                    {
                        "name": "demo",
                        "resource": resource,
                        "upstream": sample.upstream,
                        "policy": policy,
                        "sessions": {"bind": True, "ttl": 600},
                        "rate_limits": [{"name": "searches", "tools": ["search"], "limit": RATE_LIMIT, "window": 60}],
                    }
                ],
                "store": {**store, "key_prefix": f"fleet-{request.param}:", "timeout_ms": 500},
                "approvals": {
                    "webhook_url": webhook.url,
                    "webhook_secret": WEBHOOK_SECRET,
                    "callback_secret": CALLBACK_SECRET,
                    "wait_ms": 500,
                    "keep_seconds": 300,
                },
                "admin": {"listen": f"127.0.0.1:{free_port()}", "token": ADMIN_TOKEN},
                "envoy": {"listen": f"127.0.0.1:{port}", "admin_port": free_port(), "timeout_ms": 3000},
            }
        )
    started = [authorizer(yaml.safe_dump(spec, sort_keys=False)) for spec in specs]
    rendered = render_envoy_yaml(parse_config(yaml.safe_dump(specs[0], sort_keys=False), "fleet.yaml"))
    proxy = envoy(_fleet_envoy(rendered, [s["listen"]["grpc"] for s in specs]))
    yield Fleet(request.param, resource, started, [s["admin"]["listen"] for s in specs], sample, key, issuer)
    for proc in (proxy.proc, *(a.proc for a in started), sample.proc):
        proc.stop()
    webhook.close()
    topology.stop()


def test_a_revocation_at_one_replica_is_refused_by_all_within_the_bound(fleet: Fleet) -> None:
    token = fleet.token("dave")
    claims = jwt.decode(token, options={"verify_signature": False})
    before = [fleet.call(token) for _ in range(REPLICAS)]
    assert [status for status, _, _ in before] == [200] * REPLICAS
    assert {n for n, _ in fleet.decided_by([m for _, m, _ in before]).values()} == set(range(REPLICAS))

    with AdminClient(fleet.admin[0], token=ADMIN_TOKEN) as admin:
        admin.revoke_token(claims["jti"], float(claims["exp"]))
    revoked_at = time.monotonic()
    answers: list[tuple[float, int, str]] = []
    while time.monotonic() - revoked_at < REVOCATION_BOUND + 1.0:
        status, marker, _ = fleet.call(token)
        answers.append((time.monotonic() - revoked_at, status, marker))
    allowed_after = [t for t, status, _ in answers if status == 200]
    by = fleet.decided_by([m for _, _, m in answers])
    first = {by[m][0]: t for t, status, m in reversed(answers) if status == 401 and m in by}
    print(
        f"PROPAGATION {fleet.topology}: allowed after the revoke returned: {len(allowed_after)} "
        f"(last at {max(allowed_after, default=0.0) * 1000:.0f} ms); first refusal per replica (ms): "
        + ", ".join(f"{n}: {first[n] * 1000:.0f}" for n in sorted(first))
    )
    assert all(t < REVOCATION_BOUND for t in allowed_after), allowed_after
    late = [m for t, status, m in answers if t >= REVOCATION_BOUND]
    decided = fleet.decided_by(late)
    assert {n for n, _ in decided.values()} == set(range(REPLICAS))  # every replica refused it
    assert {reason for _, reason in decided.values()} == {"token_revoked"}


async def test_a_session_bound_at_one_replica_is_refused_to_another_subject_on_every_replica(fleet: Fleet) -> None:
    alice, bob = fleet.token("alice"), fleet.token("bob")
    async with RawMcp(fleet.url, protocol_version=HANDSHAKE, token=alice) as mine:
        assert (await mine.initialize()).status == 200 and mine.session_id
        session = {
            "content-type": "application/json",
            "mcp-session-id": mine.session_id,
            "mcp-protocol-version": HANDSHAKE,
        }
        stolen: list[tuple[int, str]] = []
        served: list[tuple[int, str]] = []
        for n in range(REPLICAS * 2):
            marker = uuid.uuid4().hex
            trace = {"traceparent": f"00-{marker}-{marker[:16]}-01"}
            async with RawMcp(fleet.url, protocol_version=HANDSHAKE, token=bob if n % 2 == 0 else alice) as other:
                answer = await other.post(
                    {"jsonrpc": "2.0", "id": n, "method": "tools/list"}, headers={**session, **trace}
                )
            (stolen if n % 2 == 0 else served).append((answer.status, marker))
    assert [status for status, _ in stolen] == [404] * REPLICAS and [status for status, _ in served] == [200] * REPLICAS
    decided = fleet.decided_by([m for _, m in stolen + served])
    assert {decided[m][0] for _, m in stolen} | {decided[m][0] for _, m in served} == set(range(REPLICAS))
    assert {decided[m][1] for _, m in stolen} == {"session_hijack"}


def test_a_rate_limit_is_global(fleet: Fleet) -> None:
    token = fleet.token("frank")
    calls = [fleet.call(token, "search") for _ in range(RATE_LIMIT + REPLICAS)]
    assert [status for status, _, _ in calls] == [200] * RATE_LIMIT + [429] * REPLICAS
    decided = fleet.decided_by([m for _, m, _ in calls])
    over = [decided[m] for _, m, _ in calls[RATE_LIMIT:]]
    assert {n for n, _ in over} == set(range(REPLICAS)) and {reason for _, reason in over} == {"rate_limited"}


def test_an_approval_is_used_once_on_any_replica(fleet: Fleet) -> None:
    token = fleet.token("grace", scopes=("tools:write",))
    repo = f"fleet-{fleet.topology}"
    status, _, body = fleet.call(token, "delete_repo", {"repo": repo})
    assert status == 403 and body["error"]["data"]["approval"] == "pending", body
    approval_id = body["error"]["data"]["approval_id"]
    callback = json.dumps({"approval_id": approval_id, "decision": "approve"}).encode()
    ts = str(int(time.time()))
    decided = httpx.post(
        f"{fleet.authorizers[1].discovery_url}/approvals/{approval_id}",
        content=callback,
        headers={
            "content-type": "application/json",
            TIMESTAMP_HEADER: ts,
            SIGNATURE_HEADER: sign(CALLBACK_SECRET, ts, callback),
        },
        timeout=10.0,
    )
    assert decided.status_code == 200, decided.text
    retries = [fleet.call(token, "delete_repo", {"repo": repo}) for _ in range(REPLICAS)]
    assert sorted(status for status, _, _ in retries) == [200] + [403] * (REPLICAS - 1)
    assert fleet.deletions().count(repo) == 1  # exactly once, whichever replica let it through
    assert {n for n, _ in fleet.decided_by([m for _, m, _ in retries]).values()} == set(range(REPLICAS))
