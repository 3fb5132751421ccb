"""Acceptance, trusted proxy identity (issue 4), with real parts: the sample MCP server behind a gateway Envoy
whose listener speaks mTLS (client certificates validated by a CA the test makes) and asks the real
authorizer over gRPC ext_authz; a second Envoy plays the authenticating proxy, connecting to the gateway
with its own client certificate (SPIFFE URI SAN). Only that proxy's `X-Authenticated-User` is believed.
"""

from __future__ import annotations

import http.server
import json
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import rsa
from harness import VENV_BIN, Authorizer, Envoy, Factory, SampleServer, free_port
from proxy_envoy import Pki, auth_proxy_yaml, gateway_yaml, make_pki
from stack import ACCEPT, call_body

from authz.config.load import parse_config
from authz.identity import devkey
from authz.render.envoy import render_envoy_yaml

PROXY_ID = "spiffe://cluster.local/ns/auth/sa/oauth2-proxy"
OTHER_ID = "spiffe://cluster.local/ns/default/sa/intruder"
PROXY_SOURCE = "127.0.0.2"  # the auth proxy's Envoy connects from here; the test itself from 127.0.0.1
POLICY: dict[str, Any] = {
    "default": "deny",
    "rules": [
        {"name": "protocol", "methods": ["initialize", "notifications/*", "ping", "server/discover", "*/list"]},
        {"name": "read", "tools": ["search", "echo_headers"]},
        {"name": "admins-only", "tools": ["admin_*"], "when": '"admins" in jwt.groups'},
    ],
}
ALICE = {"x-authenticated-user": "alice", "x-authenticated-groups": "dev", "x-tenant-id": "tenant-7"}


@dataclass(frozen=True)
class MtlsStack:
    pki: Pki
    sample: SampleServer
    authorizer: Authorizer
    gateway: Envoy
    proxy: Envoy
    optional_port: int

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.proxy.listener_ports[0]}/mcp"

    def gateway_url(self, *, optional: bool = False) -> str:
        port = self.optional_port if optional else self.gateway.listener_ports[0]
        return f"https://127.0.0.1:{port}/mcp"

    def tls(self, client: str | None) -> ssl.SSLContext:
        """Trusts the test CA; presents `client`'s certificate when given."""
        context = ssl.create_default_context(cafile=str(self.pki.ca))
        if client is not None:
            files = self.pki.clients[client]
            context.load_cert_chain(str(files.cert), str(files.key))
        return context

    def audit(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """The authorizer's audit events, once there are at least `count` (it writes them as it decides)."""
        deadline = time.monotonic() + timeout
        while True:
            events = []
            for line in self.authorizer.proc.log_text().splitlines():
                if line.startswith("{") and '"mcp-authz-audit"' in line:
                    events.append(json.loads(line))
            if len(events) >= count or time.monotonic() > deadline:
                return events
            time.sleep(0.05)

    def stop(self) -> None:
        for component in (self.proxy, self.gateway, self.authorizer, self.sample):
            component.proc.stop()


def start_mtls_stack(
    log_dir: Path,
    name: str,
    proxy_settings: dict[str, Any],
    *,
    sample_server: Factory[SampleServer],
    authorizer: Factory[Authorizer],
    envoy: Factory[Envoy],
    http_authorizer: bool = False,
) -> MtlsStack:
    """`http_authorizer`: Envoy's HTTP ext_authz (`envoy.authorizer: http`) instead of gRPC."""
    pki = make_pki(log_dir / f"{name}-pki", [PROXY_ID, OTHER_ID])
    sample = sample_server()
    port, optional_port = free_port(), free_port()
    dev_key = devkey.ensure_key(log_dir / f"{name}-dev-key.pem")
    listen = {"grpc": f"127.0.0.1:{free_port()}", "discovery": f"127.0.0.1:{free_port()}"}
    if http_authorizer:
        listen["http"] = f"127.0.0.1:{free_port()}"
    spec = {
        "listen": listen,
        "issuers": [{"name": "dev", "issuer": f"https://127.0.0.1:{port}/dev", "local_key_file": str(dev_key)}],
        "servers": [
            {
                "name": "demo",
                "resource": f"https://127.0.0.1:{port}/mcp",
                "upstream": sample.upstream,
                "identity": ["proxy", "jwt"],
                "mode": "strict",
                "proxy": {
                    "user_header": "X-Authenticated-User",
                    "groups_header": "X-Authenticated-Groups",
                    "passthrough_headers": ["X-Tenant-Id"],
                    **proxy_settings,
                },
                "policy": POLICY,
            }
        ],
        "envoy": {
            "listen": f"127.0.0.1:{port}",
            "admin_port": free_port(),
            "timeout_ms": 2000,
            "authorizer": "http" if http_authorizer else "grpc",
        },
    }
    text = yaml.safe_dump(spec, sort_keys=False)
    config_path = log_dir / f"{name}-authz.yaml"
    config_path.write_text(text, encoding="utf-8")
    config = parse_config(text, str(config_path))
    authz = authorizer(config_path)
    gateway = envoy(gateway_yaml(config, pki, optional_port=optional_port))
    proxy = envoy(auth_proxy_yaml(free_port(), port, pki.clients[PROXY_ID], pki, source=PROXY_SOURCE))
    return MtlsStack(pki, sample, authz, gateway, proxy, optional_port)


@pytest.fixture(scope="module")
def principal_stack(
    e2e_log_dir: Path,
    sample_server: Factory[SampleServer],
    authorizer: Factory[Authorizer],
    envoy: Factory[Envoy],
) -> Iterator[MtlsStack]:
    """Trust by mTLS principal only."""
    started = start_mtls_stack(
        e2e_log_dir,
        "proxy-principal",
        {"trusted_principals": [PROXY_ID]},
        sample_server=sample_server,
        authorizer=authorizer,
        envoy=envoy,
    )
    yield started
    started.stop()


@pytest.fixture
def mtls(principal_stack: MtlsStack) -> MtlsStack:
    principal_stack.sample.clear_logs()
    return principal_stack


def call(url: str, tool: str, headers: dict[str, str], *, tls: ssl.SSLContext | None = None) -> httpx.Response:
    """A 2026-07-28 tools/call with the SDK's routing headers, plus `headers`."""
    sent = {
        "content-type": "application/json",
        "accept": ACCEPT,
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": "tools/call",
        "mcp-name": tool,
        **headers,
    }
    body = json.dumps(call_body(tool, {}))
    return httpx.post(url, content=body, headers=sent, verify=tls if tls is not None else True, timeout=10.0)


def seen_headers(sample: SampleServer) -> list[dict[str, str]]:
    return [r["headers"] for r in sample.requests()]


# ---------------------------------------------------------------- through the trusted proxy


def test_proxy_user_is_allowed_and_the_server_sees_alice(mtls: MtlsStack) -> None:
    before = len(mtls.audit(0))
    response = call(mtls.proxy_url, "echo_headers", {**ALICE, "x-mcp-subject": "mallory"})
    assert response.status_code == 200, response.text
    [headers] = seen_headers(mtls.sample)
    assert headers["x-mcp-subject"] == "alice"  # set by the authorizer, the client's copy overwritten
    assert headers["x-tenant-id"] == "tenant-7"  # passthrough: kept for a proxy-identified caller
    assert "x-authenticated-user" not in headers and "x-authenticated-groups" not in headers
    assert "authorization" not in headers
    event = mtls.audit(before + 1)[before]
    # The gateway's Check carried the proxy's certificate principal (its URI SAN) and source address.
    assert (event["decision"], event["identity_mode"], event["subject"]) == ("allow", "proxy", "alice")
    assert (event["source_principal"], event["source_address"]) == (PROXY_ID, PROXY_SOURCE)


# ---------------------------------------------------------------- the same headers straight to the gateway


def test_no_client_certificate_is_refused_at_the_handshake(mtls: MtlsStack) -> None:
    with pytest.raises(httpx.TransportError):
        call(mtls.gateway_url(), "echo_headers", ALICE, tls=mtls.tls(None))
    assert mtls.sample.requests() == []


def test_no_client_certificate_where_it_is_optional_is_401(mtls: MtlsStack) -> None:
    before = len(mtls.audit(0))
    response = call(mtls.gateway_url(optional=True), "echo_headers", ALICE, tls=mtls.tls(None))
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"].startswith('Bearer error="invalid_token"')
    assert mtls.sample.requests() == []
    event = mtls.audit(before + 1)[before]
    assert (event["reason"], event["source_principal"]) == ("proxy_untrusted", None)


def test_another_certificate_is_401_and_never_reaches_the_server(mtls: MtlsStack) -> None:
    before = len(mtls.audit(0))
    for url in (mtls.gateway_url(), mtls.gateway_url(optional=True)):
        response = call(url, "echo_headers", ALICE, tls=mtls.tls(OTHER_ID))
        assert response.status_code == 401, response.text
    assert mtls.sample.requests() == []
    events = mtls.audit(before + 2)[before:]
    assert [(e["reason"], e["source_principal"]) for e in events] == [("proxy_untrusted", OTHER_ID)] * 2


def test_the_proxy_certificate_itself_is_allowed_straight_to_the_gateway(mtls: MtlsStack) -> None:
    """The proof is the certificate, not the path: the proxy's own certificate is trusted anywhere."""
    response = call(mtls.gateway_url(), "search", ALICE, tls=mtls.tls(PROXY_ID))
    assert response.status_code == 200, response.text
    assert [h["x-mcp-subject"] for h in seen_headers(mtls.sample)] == ["alice"]


# ---------------------------------------------------------------- one policy for both identities


def test_group_rule_allows_admins_and_refuses_others(mtls: MtlsStack) -> None:
    admin = call(mtls.proxy_url, "admin_reset", {"x-authenticated-user": "root", "x-authenticated-groups": "admins"})
    assert admin.status_code == 200, admin.text
    assert mtls.sample.tool_calls() == ["admin_reset"]
    other = call(mtls.proxy_url, "admin_reset", ALICE)
    assert other.status_code == 403, other.text
    assert mtls.sample.tool_calls() == ["admin_reset"]  # the second call never reached the server


# ---------------------------------------------------------------- Envoy's HTTP ext_authz


def test_http_authorizer_sees_the_proxy_headers_and_the_peer(
    e2e_log_dir: Path,
    sample_server: Factory[SampleServer],
    authorizer: Factory[Authorizer],
    envoy: Factory[Envoy],
) -> None:
    """With `envoy.authorizer: http` the rendered filter sends the proxy's headers (allowed_headers) and
    the peer's URI SAN (x-mcp-authz-peer-uri-san); upstream gets the identity, not the proxy's headers."""
    stack = start_mtls_stack(
        e2e_log_dir,
        "proxy-http",
        {"trusted_principals": [PROXY_ID]},
        sample_server=sample_server,
        authorizer=authorizer,
        envoy=envoy,
        http_authorizer=True,
    )
    try:
        allowed = call(stack.proxy_url, "echo_headers", {**ALICE, "x-mcp-subject": "mallory"})
        assert allowed.status_code == 200, allowed.text
        [headers] = seen_headers(stack.sample)
        assert (headers["x-mcp-subject"], headers["x-tenant-id"]) == ("alice", "tenant-7")
        assert "x-authenticated-user" not in headers and "x-authenticated-groups" not in headers
        admin = call(
            stack.proxy_url, "admin_reset", {"x-authenticated-user": "root", "x-authenticated-groups": "admins"}
        )
        assert admin.status_code == 200, admin.text
        assert call(stack.proxy_url, "admin_reset", ALICE).status_code == 403
        stack.sample.clear_logs()
        for url, client in ((stack.gateway_url(), OTHER_ID), (stack.gateway_url(optional=True), None)):
            refused = call(url, "echo_headers", ALICE, tls=stack.tls(client))
            assert refused.status_code == 401, (client, refused.text)
        assert stack.sample.requests() == []
    finally:
        stack.stop()


# ---------------------------------------------------------------- trust by source address only


def test_cidr_only_trust_refuses_a_source_outside(
    e2e_log_dir: Path,
    sample_server: Factory[SampleServer],
    authorizer: Factory[Authorizer],
    envoy: Factory[Envoy],
) -> None:
    stack = start_mtls_stack(
        e2e_log_dir,
        "proxy-cidr",
        {"trusted_cidrs": [f"{PROXY_SOURCE}/32"]},
        sample_server=sample_server,
        authorizer=authorizer,
        envoy=envoy,
    )
    try:
        allowed = call(stack.proxy_url, "echo_headers", ALICE)
        assert allowed.status_code == 200, allowed.text
        assert [h["x-mcp-subject"] for h in seen_headers(stack.sample)] == ["alice"]
        stack.sample.clear_logs()
        # From 127.0.0.1, even with the proxy's own (valid) certificate: outside the CIDRs.
        refused = call(stack.gateway_url(), "echo_headers", ALICE, tls=stack.tls(PROXY_ID))
        assert refused.status_code == 401, refused.text
        assert stack.sample.requests() == []
    finally:
        stack.stop()


# ---------------------------------------------------------------- Cloudflare Access


class _Certs(http.server.BaseHTTPRequestHandler):
    """The team's `/cdn-cgi/access/certs` on loopback (the JWKS document in the server's `body`)."""

    def do_GET(self) -> None:
        body: bytes = getattr(self.server, "body", b"")
        ok = self.path == "/cdn-cgi/access/certs"
        self.send_response(200 if ok else 404)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body) if ok else 0))
        self.end_headers()
        if ok:
            self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_cloudflare_assertion_through_envoy_and_the_real_authorizer(
    e2e_log_dir: Path,
    sample_server: Factory[SampleServer],
    authorizer: Factory[Authorizer],
    envoy: Factory[Envoy],
) -> None:
    """preset cloudflare, no principal or CIDR: the assertion alone is the trust rule. The authorizer
    process fetches the team's keys (loopback `jwks_uri`), then believes only assertions they verify."""
    team, aud = "https://myteam.cloudflareaccess.com", "aud-tag-of-the-access-app"
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    certs = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Certs)
    certs.body = json.dumps({"keys": [{**jwk, "kid": "k1", "alg": "RS256", "use": "sig"}]}).encode()  # type: ignore[attr-defined]
    threading.Thread(target=certs.serve_forever, daemon=True).start()
    sample = sample_server()
    port = free_port()
    spec = {
        "listen": {"grpc": f"127.0.0.1:{free_port()}", "discovery": f"127.0.0.1:{free_port()}"},
        "issuers": [],
        "servers": [
            {
                "name": "demo",
                "resource": f"http://127.0.0.1:{port}/mcp",
                "upstream": sample.upstream,
                "identity": ["proxy"],
                "proxy": {
                    "preset": "cloudflare",
                    "cloudflare": {
                        "team_domain": team,
                        "audience": aud,
                        "jwks_uri": f"http://127.0.0.1:{certs.server_address[1]}/cdn-cgi/access/certs",
                    },
                },
                "policy": POLICY,
            }
        ],
        "envoy": {"listen": f"127.0.0.1:{port}", "admin_port": free_port(), "timeout_ms": 2000},
    }
    text = yaml.safe_dump(spec, sort_keys=False)
    config_path = e2e_log_dir / "proxy-cloudflare-authz.yaml"
    config_path.write_text(text, encoding="utf-8")
    started: list[Any] = []
    try:
        started.append(authz := authorizer(config_path))
        started.append(envoy(render_envoy_yaml(parse_config(text, str(config_path)))))
        url = f"http://127.0.0.1:{port}/mcp"
        now = int(time.time())
        claims = {"aud": [aud], "email": "alice@example.org", "iss": team, "iat": now, "nbf": now, "exp": now + 600}
        good = jwt.encode(claims, key, algorithm="RS256", headers={"kid": "k1"})
        response = call(url, "echo_headers", {"cf-access-jwt-assertion": good})
        assert response.status_code == 200, response.text
        [headers] = seen_headers(sample)
        assert headers["x-mcp-subject"] == "alice@example.org"
        assert "cf-access-jwt-assertion" not in headers  # the proxy's credential never goes upstream
        sample.clear_logs()
        other_app = jwt.encode({**claims, "aud": ["another-app"]}, key, algorithm="RS256", headers={"kid": "k1"})
        forged_header = {"cf-access-authenticated-user-email": "alice@example.org"}
        for sent in (
            {"cf-access-jwt-assertion": other_app},
            forged_header,
            {"cf-access-jwt-assertion": good, "cf-access-authenticated-user-email": "mallory@example.org"},
        ):
            refused = call(url, "echo_headers", sent)
            assert refused.status_code == 401, (sent, refused.text)
        assert sample.requests() == []
        assert '"proxy_assertion_audience"' in authz.proc.log_text()
    finally:
        for component in reversed(started):
            component.proc.stop()
        sample.proc.stop()
        certs.shutdown()
        certs.server_close()


# ---------------------------------------------------------------- config check


def test_config_check_refuses_proxy_mode_without_a_trust_rule(tmp_path: Path) -> None:
    spec = {
        "issuers": [{"name": "idp", "issuer": "https://idp.example", "jwks_uri": "https://idp.example/jwks"}],
        "servers": [
            {
                "name": "demo",
                "resource": "https://mcp.example/mcp",
                "identity": ["proxy"],
                "proxy": {"preset": "oauth2-proxy"},
            }
        ],
    }
    path = tmp_path / "proxy-no-trust.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    cli = VENV_BIN / "mcp-authz"
    run = subprocess.run([str(cli), "config", "check", str(path)], capture_output=True, text=True, timeout=60)
    assert run.returncode != 0
    output = run.stdout + run.stderr
    assert "servers.0" in output and "no trust rule" in output
    assert "trusted_principals" in output and "anyone could send the identity headers" in output
    spec["servers"][0]["proxy"]["trusted_principals"] = [PROXY_ID]  # type: ignore[index]
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    ok = subprocess.run([str(cli), "config", "check", str(path)], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stdout + ok.stderr
