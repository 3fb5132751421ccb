"""Acceptance, replicas: two authorizer processes share one real Redis behind one real Envoy.

Envoy has two listeners in front of the same sample MCP server: the first asks replica 1 (its
ext_authz cluster), the second replica 2, so a test knows which replica decided. Both replicas run
the same config (the same MCP server and resource) apart from their own ports.

- A token revoked through replica 1's admin API (the `mcp-authz admin` CLI, a subprocess) is refused
  by replica 2 within one second; a subject revoked at replica 2 is refused by replica 1.
- A session opened by alice through replica 1 is refused to bob on replica 2 (and still served to alice there).
- Rate limit: the N+1th call in the window gets 429 with `Retry-After`, whichever replica answers it.
"""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import redis as redis_client
import yaml
from harness import VENV_BIN, Authorizer, Envoy, Factory, RawMcp, Redis, SampleServer, free_port
from stack import ACCEPT, DEFAULT_POLICY, call_body

from authz.config.load import parse_config
from authz.identity import devkey
from authz.render.envoy import render_envoy_yaml

ADMIN_TOKEN = "e2e-admin-token-0123456789"
RATE_LIMIT = 3  # search calls per subject per window
HANDSHAKE = "2025-11-25"


@dataclass(frozen=True)
class Replicas:
    urls: tuple[str, str]  # the MCP endpoint through Envoy, decided by replica 1 / replica 2
    admin: tuple[str, str]  # admin API host:port of replica 1 / replica 2
    authorizers: tuple[Authorizer, Authorizer]
    resource: str
    issuer: str
    key: Path
    redis: Redis

    def token(self, subject: str, scopes: tuple[str, ...] = ("tools:read",), **extra: Any) -> str:
        return devkey.mint(
            self.key, issuer=self.issuer, audience=self.resource, subject=subject, scopes=list(scopes), extra=extra
        )

    def denials(self, replica: int) -> list[dict[str, Any]]:
        """The replica's logged denials (JSON log records of `mcp_authz.decision`)."""
        found = []
        for line in self.authorizers[replica].proc.log_text().splitlines():
            if line.startswith("{"):
                record = json.loads(line)
                if record.get("logger") == "mcp_authz.decision" and record.get("message") == "deny":
                    found.append(record)
        return found

    def last_denial_reason(self, replica: int, timeout: float = 2.0) -> str | None:
        """The reason of the replica's latest denial (waits for the log line to be written)."""
        deadline = time.monotonic() + timeout
        while True:
            records = self.denials(replica)
            if records or time.monotonic() > deadline:
                return str(records[-1]["reason"]) if records else None
            time.sleep(0.02)


def _authz_config(
    name: str, resource: str, issuer: str, key: Path, upstream: str, redis_url: str, envoy_port: int
) -> dict[str, Any]:
    return {
        "listen": {"grpc": f"127.0.0.1:{free_port()}", "discovery": f"127.0.0.1:{free_port()}"},
        "log_level": "info",
        "issuers": [
            {"name": "dev", "issuer": issuer, "local_key_file": str(key), "algorithms": ["ES256"], "require_jti": True}
        ],
        "servers": [
            {
                "name": "demo",
                "resource": resource,
                "upstream": upstream,
                "scopes_supported": ["tools:read", "tools:write"],
                "policy": DEFAULT_POLICY,
                "sessions": {"bind": True, "ttl": 600},
                "rate_limits": [
                    {"name": "search", "per": "subject_tool", "tools": ["search"], "limit": RATE_LIMIT, "window": 60}
                ],
            }
        ],
        "store": {"url": redis_url, "key_prefix": f"e2e-{name}:", "timeout_ms": 500},
        "admin": {"listen": f"127.0.0.1:{free_port()}", "token": "${ADMIN_TOKEN}"},
        "envoy": {"listen": f"127.0.0.1:{envoy_port}", "admin_port": free_port(), "timeout_ms": 3000},
    }


def _two_listener_envoy(rendered: str, second_port: int, second_grpc: str) -> str:
    """The rendered Envoy, plus a second listener whose ext_authz asks the cluster of the second replica."""
    doc = yaml.safe_load(rendered)
    resources = doc["static_resources"]
    listener = copy.deepcopy(resources["listeners"][0])
    listener["name"] = "mcp_replica2"
    listener["address"]["socket_address"]["port_value"] = second_port
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["stat_prefix"] = "mcp_replica2"
    ext_authz = next(f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.ext_authz")
    ext_authz["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"] = "mcp_authz_2"
    resources["listeners"].append(listener)
    cluster = copy.deepcopy(next(c for c in resources["clusters"] if c["name"] == "mcp_authz"))
    cluster["name"] = cluster["load_assignment"]["cluster_name"] = "mcp_authz_2"
    host, _, port = second_grpc.rpartition(":")
    address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    address["socket_address"] = {"address": host, "port_value": int(port)}
    resources["clusters"].append(cluster)
    return yaml.safe_dump(doc, sort_keys=False)


@pytest.fixture(scope="module")
def replicas(
    e2e_log_dir: Path,
    redis: Factory[Redis],
    sample_server: Factory[SampleServer],
    authorizer: Factory[Authorizer],
    envoy: Factory[Envoy],
) -> Iterator[Replicas]:
    store = redis()
    sample = sample_server()
    ports = (free_port(), free_port())
    resource = f"http://127.0.0.1:{ports[0]}/mcp"
    issuer = f"http://127.0.0.1:{ports[0]}/dev"
    key = devkey.ensure_key(e2e_log_dir / "replicas-dev-key.pem")
    specs = [_authz_config("replicas", resource, issuer, key, sample.upstream, store.url, ports[0]) for _ in (1, 2)]
    paths = []
    for n, spec in enumerate(specs, 1):
        path = e2e_log_dir / f"replica{n}-authz.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
        paths.append(path)
    env = {"ADMIN_TOKEN": ADMIN_TOKEN}
    started = [authorizer(paths[0], env=env), authorizer(paths[1], env=env)]
    without_admin = {k: v for k, v in specs[0].items() if k != "admin"}  # rendering needs no admin token
    rendered = render_envoy_yaml(parse_config(yaml.safe_dump(without_admin), str(paths[0])))
    proxy = envoy(_two_listener_envoy(rendered, ports[1], specs[1]["listen"]["grpc"]))
    yield Replicas(
        urls=(resource, f"http://127.0.0.1:{ports[1]}/mcp"),
        admin=(specs[0]["admin"]["listen"], specs[1]["admin"]["listen"]),
        authorizers=(started[0], started[1]),
        resource=resource,
        issuer=issuer,
        key=key,
        redis=store,
    )
    for proc in (proxy.proc, *(a.proc for a in started), sample.proc):
        proc.stop()


def call(url: str, token: str, tool: str = "read_file") -> httpx.Response:
    """A 2026-07-28 tools/call (read_file is not rate limited; search is)."""
    headers = {
        "content-type": "application/json",
        "accept": ACCEPT,
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": "tools/call",
        "mcp-name": tool,
        "authorization": f"Bearer {token}",
    }
    return httpx.post(url, content=json.dumps(call_body(tool, {"query": "x"})), headers=headers, timeout=10.0)


def admin_cli(address: str, *argv: str, token: str | None = ADMIN_TOKEN) -> subprocess.CompletedProcess[str]:
    """`mcp-authz admin --address ADDRESS ...` as a separate process, the admin token in its environment."""
    cli = VENV_BIN / "mcp-authz"
    launcher = [str(cli)] if cli.exists() else [sys.executable, "-m", "authz"]
    env = {k: v for k, v in os.environ.items() if k != "MCP_AUTHZ_ADMIN_TOKEN"}
    if token is not None:
        env["MCP_AUTHZ_ADMIN_TOKEN"] = token
    return subprocess.run(
        [*launcher, "admin", "--address", address, *argv], capture_output=True, text=True, env=env, timeout=30
    )


def refused_within(url: str, token: str, seconds: float) -> httpx.Response:
    """Poll until the call is refused (401) or `seconds` pass; the last response."""
    deadline = time.monotonic() + seconds
    while True:
        response = call(url, token)
        if response.status_code == 401 or time.monotonic() > deadline:
            return response
        time.sleep(0.02)


# ---------------------------------------------------------------- revocation


def test_token_revoked_at_replica_1_is_refused_by_replica_2_within_a_second(replicas: Replicas) -> None:
    token = replicas.token("dave")
    claims = jwt.decode(token, options={"verify_signature": False})
    assert [call(url, token).status_code for url in replicas.urls] == [200, 200]

    done = admin_cli(replicas.admin[0], "revoke-token", claims["jti"], "--exp", str(claims["exp"]))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["revoked"] == claims["jti"]

    response = refused_within(replicas.urls[1], token, 1.0)
    assert response.status_code == 401, response.text
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert call(replicas.urls[0], token).status_code == 401
    for replica in (0, 1):
        assert replicas.last_denial_reason(replica) == "token_revoked"
    # another token of the same subject is not affected
    assert call(replicas.urls[1], replicas.token("dave")).status_code == 200


def test_subject_revoked_at_replica_2_is_refused_by_replica_1(replicas: Replicas) -> None:
    token = replicas.token("erin")  # iat: this second, so before the cut-off (now, at the admin API)
    assert call(replicas.urls[0], token).status_code == 200
    done = admin_cli(replicas.admin[1], "revoke-subject", "erin")
    assert done.returncode == 0, done.stderr
    cutoff = json.loads(done.stdout)["before"]
    response = refused_within(replicas.urls[0], token, 1.0)
    assert response.status_code == 401, response.text
    assert replicas.last_denial_reason(0) == "token_revoked"
    later = replicas.token("erin", iat=math.ceil(cutoff))  # issued at the cut-off: not before it
    assert [call(url, later).status_code for url in replicas.urls] == [200, 200]


def test_admin_cli_with_a_wrong_token_or_no_server_fails_clearly(replicas: Replicas) -> None:
    for token in ("not-the-admin-token", None):
        done = admin_cli(replicas.admin[0], "revoke-subject", "alice", token=token)
        assert (done.returncode, done.stdout) == (2, ""), done.stderr
        assert "refused the credentials" in done.stderr
    gone = admin_cli(f"127.0.0.1:{free_port()}", "sessions")
    assert gone.returncode == 2 and "cannot reach the admin API" in gone.stderr


# ---------------------------------------------------------------- session binding


async def test_session_opened_by_alice_at_replica_1_is_refused_to_bob_at_replica_2(replicas: Replicas) -> None:
    alice, bob = replicas.token("alice"), replicas.token("bob")
    async with RawMcp(replicas.urls[0], protocol_version=HANDSHAKE, token=alice) as mine:
        opened = await mine.initialize()
        assert opened.status == 200 and mine.session_id
        session_headers = {"mcp-session-id": mine.session_id, "mcp-protocol-version": HANDSHAKE}

        async with RawMcp(replicas.urls[1], protocol_version=HANDSHAKE, token=bob) as theirs:
            stolen = await theirs.post(
                {"jsonrpc": "2.0", "id": 7, "method": "tools/list"},
                headers={"content-type": "application/json", **session_headers},
            )
        assert stolen.status == 404, stolen.text
        assert replicas.last_denial_reason(1) == "session_hijack"

        async with RawMcp(replicas.urls[1], protocol_version=HANDSHAKE, token=alice) as again:
            listed = await again.post(
                {"jsonrpc": "2.0", "id": 8, "method": "tools/list"},
                headers={"content-type": "application/json", **session_headers},
            )
        assert listed.status == 200, listed.text
        assert "tools" in listed.message["result"]

        done = admin_cli(replicas.admin[1], "sessions", "--subject", "alice")
        assert done.returncode == 0, done.stderr
        assert mine.session_id in [s["session_id"] for s in json.loads(done.stdout)]


# ---------------------------------------------------------------- rate limit


def test_call_over_the_limit_gets_429_with_retry_after_on_either_replica(replicas: Replicas) -> None:
    token = replicas.token("frank")
    allowed = [call(replicas.urls[n % 2], token, "search").status_code for n in range(RATE_LIMIT)]
    assert allowed == [200] * RATE_LIMIT
    for replica, url in enumerate(replicas.urls):
        over = call(url, token, "search")
        assert over.status_code == 429, over.text
        assert 1 <= int(over.headers["retry-after"]) <= 60
        assert replicas.last_denial_reason(replica) == "rate_limited"
    # another tool, and another subject, are counted apart
    assert call(replicas.urls[1], token, "read_file").status_code == 200
    assert call(replicas.urls[1], replicas.token("grace"), "search").status_code == 200


# ---------------------------------------------------------------- Redis forgets (issue 21 item 1; last: restarts Redis)


def test_revoked_tokens_stay_refused_on_both_replicas_after_redis_restarts_without_persistence(
    replicas: Replicas, redis: Factory[Redis]
) -> None:
    tokens = [replicas.token("henry"), replicas.token("ivy")]
    for token in tokens:
        claims = jwt.decode(token, options={"verify_signature": False})
        done = admin_cli(replicas.admin[0], "revoke-token", claims["jti"], "--exp", str(claims["exp"]))
        assert done.returncode == 0, done.stderr
    subject_token = replicas.token("judy")
    assert admin_cli(replicas.admin[1], "revoke-subject", "judy").returncode == 0
    revoked = [*tokens, subject_token]
    assert all(refused_within(url, t, 1.0).status_code == 401 for url in replicas.urls for t in revoked)

    replicas.redis.proc.stop()  # no persistence: everything Redis held is gone
    logs = [a.proc for a in replicas.authorizers]
    for proc in logs:
        proc.wait_log("store unreachable")
    reachable = [proc.log_text().count("store reachable") for proc in logs]
    fresh = redis(port=replicas.redis.port)
    deadline = time.monotonic() + 30
    while any(proc.log_text().count("store reachable") <= seen for proc, seen in zip(logs, reachable, strict=True)):
        assert time.monotonic() < deadline, "a replica did not reconnect"
        time.sleep(0.05)

    for url in replicas.urls:  # the old code let every one of them through here
        assert [call(url, t).status_code for t in revoked] == [401, 401, 401]
    for replica in replicas.authorizers:
        assert "store_data_loss" in replica.proc.log_text()  # logged (and counted) on both
    client = redis_client.Redis(port=fresh.port)
    try:  # and written back into the empty Redis for replicas started later
        assert client.zcard("{e2e-replicas:rev}:jti") >= 2
    finally:
        client.close()
    again = call(replicas.urls[1], replicas.token("henry"))  # a new token of henry works
    assert again.status_code == 200, (again.status_code, again.text, replicas.last_denial_reason(1))
