"""Acceptance, upstream credentials: real Envoy, `mcp-authz serve`, the sample MCP server and the real
identity provider (npm oidc-provider, with the RFC 8693 grant registered in tests/idp/server.js).

- Token exchange: the MCP server receives a token whose `aud` is the downstream API and whose
  `sub` is the caller's; a second call within that token's life makes no new exchange (counted in
  the identity provider's log); with the identity provider down a new caller is denied (503).
- Integration secret: an `X-Api-Key` encrypted by Node's own `crypto` (`v2:` AES-256-GCM) is
  decrypted and injected (a client's copy replaced); the same config with a wrong key is refused at
  start-up, naming the secret; nothing the authorizer wrote (logs, audit events, OTLP traces)
  holds a secret, the caller's token or the exchanged token.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import yaml
from harness import VENV_BIN, Authorizer, Envoy, Factory, IdP, RawMcp, SampleServer, free_port
from stack import call_body

from authz.config.load import parse_config
from authz.observe.audit import STREAM
from authz.render.envoy import render_envoy_yaml

DOWNSTREAM = "http://127.0.0.1:9/downstream-api"
API_KEY = "sk-e2e-" + secrets.token_hex(8)
EXCHANGE_CLIENT = ("mcp-authz", "mcp-authz-secret")  # tests/idp/server.js
KEY_ENV = "MCP_AUTHZ_E2E_SECRET_KEY"

NODE_ENCRYPT = """
const { createCipheriv, randomBytes } = require('node:crypto');
const [key, value] = process.argv.slice(1);
const iv = randomBytes(12);
const cipher = createCipheriv('aes-256-gcm', Buffer.from(key), iv);
const ct = Buffer.concat([cipher.update(value, 'utf8'), cipher.final()]);
process.stdout.write(`v2:${iv.toString('hex')}:${cipher.getAuthTag().toString('hex')}:${ct.toString('hex')}`);
"""


def node_encrypt(key: str, value: str) -> str:
    node = shutil.which("node")
    assert node is not None, "node is required"
    done = subprocess.run([node, "-e", NODE_ENCRYPT, key, value], check=True, capture_output=True, text=True)
    return done.stdout


class OtlpReceiver:
    """A loopback OTLP/HTTP receiver that keeps every request body it gets."""

    def __init__(self) -> None:
        bodies: list[bytes] = []
        self.bodies = bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                bodies.append(self.rfile.read(int(self.headers.get("content-length", "0"))))
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


@dataclass
class Upstream:
    idp: IdP
    sample: SampleServer
    authorizer: Authorizer
    envoy: Envoy
    spec: dict[str, Any]
    key: str
    otlp: OtlpReceiver
    seen_tokens: list[str]

    @property
    def url(self) -> str:
        return self.envoy.url("/mcp")

    def caller_token(self, client_id: str) -> str:
        token = self.idp.access_token(client_id, self.url, scope="tools:read")
        self.seen_tokens.append(token)
        return token

    def exchanges(self) -> list[dict[str, Any]]:
        lines = self.idp.proc.log_text().splitlines()
        return [json.loads(line.removeprefix("TOKEN EXCHANGE ")) for line in lines if line.startswith("TOKEN EXCHANGE")]

    def upstream_headers(self) -> list[dict[str, str]]:
        return [r["headers"] for r in self.sample.requests() if r["method"] == "POST"]

    def audit_events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.authorizer.proc.log_text().splitlines() if STREAM in line]


@pytest.fixture(scope="module")
def up(
    tmp_path_factory: pytest.TempPathFactory,
    idp_factory: Factory[IdP],
    sample_server: Factory[SampleServer],
    envoy: Factory[Envoy],
    authorizer: Factory[Authorizer],
) -> Iterator[Upstream]:
    tmp = tmp_path_factory.mktemp("upstream")
    idp = idp_factory()  # its own: this module stops it
    sample = sample_server(json_response=True)
    key = secrets.token_hex(16)  # 32 characters
    otlp = OtlpReceiver()
    port = free_port()
    spec: dict[str, Any] = {
        "listen": {"grpc": f"127.0.0.1:{free_port()}", "discovery": f"127.0.0.1:{free_port()}"},
        "log_level": "debug",  # allows are logged too: more lines that must hold no secret
        "issuers": [{"name": "idp", "issuer": idp.issuer, "algorithms": ["RS256", "ES256"], "token_type": "at+jwt"}],
        "servers": [
            {
                "name": "demo",
                "resource": f"http://127.0.0.1:{port}/mcp",
                "upstream": sample.upstream,
                "scopes_supported": ["tools:read"],
                "policy": {
                    "default": "deny",
                    "rules": [{"name": "echo", "tools": ["echo_headers", "search"], "scopes": ["tools:read"]}],
                },
                "credentials": {"header": "X-Api-Key", "value_secret": node_encrypt(key, API_KEY)},
                "token_exchange": {
                    "issuer": "idp",  # the token endpoint from the identity provider's metadata
                    "resource": DOWNSTREAM,
                    "scopes": ["downstream:read"],
                    "client_id": EXCHANGE_CLIENT[0],
                    "client_secret": node_encrypt(key, EXCHANGE_CLIENT[1]),
                },
            }
        ],
        "secrets": {"keys": [f"${{{KEY_ENV}}}"]},
        "telemetry": {"otlp_endpoint": otlp.url, "traces": True},
        "envoy": {"listen": f"127.0.0.1:{port}", "admin_port": free_port(), "timeout_ms": 3000},
    }
    text = yaml.safe_dump(spec, sort_keys=False)
    config_path = tmp / "upstream.yaml"
    config_path.write_text(text)
    os.environ[KEY_ENV] = key  # for parse_config (render) in this process
    try:
        config = parse_config(text, str(config_path))
    finally:
        del os.environ[KEY_ENV]
    running = authorizer(config_path, env={KEY_ENV: key})
    proxy = envoy(render_envoy_yaml(config))
    yield Upstream(idp, sample, running, proxy, spec, key, otlp, [])
    otlp.close()


async def call(up: Upstream, token: str, tool: str = "echo_headers", **headers: str) -> Any:
    async with RawMcp(up.url, token=token, headers=headers) as mcp:
        return await mcp.call_tool(tool, {})


async def test_the_mcp_server_gets_an_exchanged_token_and_the_integration_secret(up: Upstream) -> None:
    token = up.caller_token("m2m-reader")
    response = await call(up, token, **{"x-api-key": "client-forged"})
    assert response.status == 200, response.text
    assert "error" not in response.message, response.message
    headers = up.upstream_headers()[-1]
    assert headers["x-api-key"] == API_KEY  # decrypted from Node's v2 value; the client's copy replaced
    scheme, _, exchanged = headers["authorization"].partition(" ")
    assert scheme == "Bearer" and exchanged != token
    up.seen_tokens.append(exchanged)
    keys = jwt.PyJWKSet.from_dict(up.idp.jwks())
    kid = jwt.get_unverified_header(exchanged)["kid"]
    claims = jwt.decode(
        exchanged,
        next(k for k in keys.keys if k.key_id == kid).key,
        algorithms=["RS256", "ES256"],
        audience=DOWNSTREAM,
        issuer=up.idp.issuer,
    )
    assert claims["sub"] == "m2m-reader" == jwt.decode(token, options={"verify_signature": False})["sub"]
    assert claims["aud"] == DOWNSTREAM and claims["act"] == {"sub": EXCHANGE_CLIENT[0]}
    assert claims["scope"] == "downstream:read"
    assert [(e["sub"], e["aud"]) for e in up.exchanges()] == [("m2m-reader", DOWNSTREAM)]


async def test_every_client_copy_of_the_injected_headers_is_replaced(up: Upstream) -> None:
    token = up.caller_token("m2m-reader")
    headers = [
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/call"),
        ("mcp-name", "echo_headers"),
        ("authorization", f"Bearer {token}"),
        ("x-api-key", "forged-1"),
        ("x-api-key", "forged-2"),
    ]
    async with httpx.AsyncClient(timeout=10.0) as http:
        response = await http.post(up.url, content=json.dumps(call_body("echo_headers", {})), headers=headers)
    assert response.status_code == 200, response.text
    received = up.upstream_headers()[-1]
    assert received["x-api-key"] == API_KEY
    assert received["authorization"].startswith("Bearer ") and token not in received["authorization"]


async def test_a_second_call_in_the_tokens_life_makes_no_new_exchange(up: Upstream) -> None:
    before = len(up.exchanges())
    first = up.upstream_headers()[-1]["authorization"] if up.upstream_headers() else None
    token = up.caller_token("m2m-reader")  # a new caller token, same subject
    for _ in range(3):
        response = await call(up, token)
        assert response.status == 200 and "error" not in response.message, response.text
    assert len(up.exchanges()) == before
    last = up.upstream_headers()[-1]["authorization"]
    assert first is None or last == first


async def test_the_identity_provider_down_denies(up: Upstream) -> None:
    token = up.caller_token("m2m-writer")  # another subject: nothing cached for it
    calls = len(up.sample.tool_calls())
    up.idp.proc.stop()
    response = await call(up, token)
    assert response.status == 503, response.text
    assert response.message["id"] == 1 and response.message["error"]["message"] == "Unavailable"
    assert len(up.sample.tool_calls()) == calls  # the tool never ran
    up.authorizer.proc.wait_until(
        "audit event token_exchange_failed",
        lambda: any(e.get("reason") == "token_exchange_failed" for e in up.audit_events()),
        10.0,
    )
    (event,) = [e for e in up.audit_events() if e.get("reason") == "token_exchange_failed"]
    assert event["decision"] == "deny" and event["subject"] == "m2m-writer"


def test_a_wrong_key_is_refused_at_start_up(up: Upstream, tmp_path: Path) -> None:
    config = up.authorizer.config_path
    cli = [str(VENV_BIN / "mcp-authz")] if (VENV_BIN / "mcp-authz").exists() else [sys.executable, "-m", "authz"]
    env = {**os.environ, KEY_ENV: secrets.token_hex(16)}
    check = subprocess.run([*cli, "config", "check", str(config)], env=env, capture_output=True, text=True, timeout=60)
    assert check.returncode == 2
    assert "servers.0.credentials.value_secret" in check.stderr
    assert "servers.0.token_exchange.client_secret" in check.stderr
    bad = dict(up.spec, listen={"grpc": f"127.0.0.1:{free_port()}", "discovery": f"127.0.0.1:{free_port()}"})
    path = tmp_path / "wrong-key.yaml"
    path.write_text(yaml.safe_dump(bad))
    serve = subprocess.run([*cli, "serve", "-c", str(path)], env=env, capture_output=True, text=True, timeout=60)
    assert serve.returncode == 2
    assert "servers.0.credentials.value_secret" in serve.stderr
    assert API_KEY not in serve.stderr + serve.stdout and env[KEY_ENV] not in serve.stderr


def test_no_secret_in_logs_audit_or_traces(up: Upstream) -> None:
    up.authorizer.proc.stop()  # flushes the OTLP span exporter
    output = up.authorizer.proc.log_text()
    assert up.audit_events(), "the audit events are in the captured output"
    assert "configuration in force" in output  # the startup config line (secrets masked)
    assert up.otlp.bodies, "the authorizer exported traces"
    forbidden = [API_KEY, EXCHANGE_CLIENT[1], up.key, *up.seen_tokens]
    assert len(up.seen_tokens) >= 3
    for secret in forbidden:
        assert secret not in output
        assert all(secret.encode() not in body for body in up.otlp.bodies)


async def test_over_http_ext_authz_the_secret_replaces_the_callers_authorization(
    tmp_path: Path,
    sample_server: Factory[SampleServer],
    envoy: Factory[Envoy],
    authorizer: Factory[Authorizer],
) -> None:
    """Envoy's HTTP ext_authz passes only `allowed_upstream_headers`: the rendered list has the injected one."""
    from authz.identity.devkey import ensure_key, mint

    key, sample, port = ensure_key(tmp_path / "dev.pem"), sample_server(json_response=True), free_port()
    base = f"http://127.0.0.1:{port}"
    spec = {
        "listen": {
            "grpc": f"127.0.0.1:{free_port()}",
            "http": f"127.0.0.1:{free_port()}",
            "discovery": f"127.0.0.1:{free_port()}",
        },
        "issuers": [{"name": "dev", "issuer": f"{base}/dev", "local_key_file": str(key)}],
        "servers": [
            {
                "name": "demo",
                "resource": f"{base}/mcp",
                "upstream": sample.upstream,
                "credentials": {"header": "Authorization", "prefix": "Bearer ", "value_secret": API_KEY},
            }
        ],
        "envoy": {"listen": f"127.0.0.1:{port}", "authorizer": "http", "admin_port": free_port(), "timeout_ms": 3000},
    }
    text = yaml.safe_dump(spec, sort_keys=False)
    authorizer(text)
    proxy = envoy(render_envoy_yaml(parse_config(text, "http-credentials.yaml")))
    token = mint(key, issuer=f"{base}/dev", audience=f"{base}/mcp", subject="alice", scopes=[])
    async with RawMcp(proxy.url("/mcp"), token=token) as mcp:
        response = await mcp.call_tool("echo_headers", {})
    assert response.status == 200 and "error" not in response.message, response.text
    headers = [r["headers"] for r in sample.requests() if r["method"] == "POST"][-1]
    assert headers["authorization"] == f"Bearer {API_KEY}"  # the caller's token replaced, not removed
    assert headers["x-mcp-subject"] == "alice"
