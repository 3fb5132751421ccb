"""Acceptance, core: real Envoy + mcp-authz in front of the sample MCP server, the real identity
provider, the real `mcp` SDK client.

- The SDK client, given nothing but the MCP URL behind Envoy, finds its way to a token
  (401 → RFC 9728 metadata → authorization-server metadata → token) and lists and calls tools:
  machine to machine (client credentials) and as a user (DCR + authorization code + PKCE).
- Every unacceptable credential gets a 401 from Envoy and never reaches the MCP server; the
  authorizer's decision log names the check that refused it, so a refusal for the wrong reason
  (say, a crash turned into a deny) fails the test too.
- The MCP server never sees the client's token; it gets identity headers that the client cannot forge.
- The RFC 9728 document is served through Envoy without a token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from harness import (
    Authorizer,
    Envoy,
    Factory,
    IdP,
    InMemoryTokenStorage,
    LoginDriver,
    SampleServer,
    auth_code_provider,
    client_credentials_provider,
    mcp_client,
)
from stack import ACCEPT, META, Stack, challenge_params, post_call, start_stack

STAT_DISCOVERY_200 = "cluster.mcp_discovery.upstream_rq_200"
TOOLS = {"search", "read_file", "delete_repo", "admin_reset", "echo_headers"}


@pytest.fixture(scope="module")
def stack(
    e2e_log_dir: Path,
    idp_server: IdP,
    sample_server: Factory[SampleServer],
    authorizer: Factory[Authorizer],
    envoy: Factory[Envoy],
) -> Iterator[Stack]:
    started = start_stack(
        e2e_log_dir, name="core", idp=idp_server, sample_server=sample_server, authorizer=authorizer, envoy=envoy
    )
    yield started
    started.stop()


@pytest.fixture
def core(stack: Stack) -> Stack:
    stack.clear()
    return stack


# ---------------------------------------------------------------- helpers


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_json(value: dict[str, Any]) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def unverified_claims(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


@dataclass(frozen=True)
class Forger:
    """Makes tokens the identity provider never issued, aimed at this stack."""

    stack: Stack
    key: rsa.RSAPrivateKey  # a key nobody trusts

    def claims(self, **override: Any) -> dict[str, Any]:
        now = int(time.time())
        claims = {
            "iss": self.stack.idp.issuer,
            "aud": self.stack.resource,
            "sub": "mallory",
            "client_id": "mallory",
            "scope": "tools:read tools:write",
            "iat": now,
            "exp": now + 600,
            "jti": uuid.uuid4().hex,
        }
        claims.update(override)
        return claims

    def idp_rsa_jwk(self) -> dict[str, Any]:
        key: dict[str, Any] = next(k for k in self.stack.idp.jwks()["keys"] if k["kty"] == "RSA")
        return key

    def signed(self, header: dict[str, Any], claims: dict[str, Any], sign: Callable[[bytes], bytes]) -> str:
        signing_input = f"{b64url_json(header)}.{b64url_json(claims)}"
        return f"{signing_input}.{b64url(sign(signing_input.encode('ascii')))}"

    def own_key(self, *, kid: str, **claims: Any) -> str:
        """RS256 with our own key, under `kid`."""
        header = {"alg": "RS256", "typ": "at+jwt", "kid": kid}
        return jwt.encode(self.claims(**claims), self.key, algorithm="RS256", headers=header)

    def alg_none(self) -> str:
        header = {"alg": "none", "typ": "at+jwt", "kid": self.idp_rsa_jwk()["kid"]}
        return self.signed(header, self.claims(), lambda _: b"")

    def hs256_with_public_key(self) -> str:
        """The RS256/HS256 confusion attack: HMAC keyed with the issuer's public key (PEM)."""
        jwk = self.idp_rsa_jwk()
        public = jwt.algorithms.RSAAlgorithm.from_jwk(json.dumps(jwk))
        assert isinstance(public, rsa.RSAPublicKey)
        pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        header = {"alg": "HS256", "typ": "at+jwt", "kid": jwk["kid"]}
        return self.signed(header, self.claims(), lambda data: hmac.new(pem, data, hashlib.sha256).digest())

    def idp_token_bad_signature(self) -> str:
        token = self.stack.idp_token("m2m-reader", "tools:read")
        head, payload, signature = token.split(".")
        raw = bytearray(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
        raw[len(raw) // 2] ^= 0x01
        return f"{head}.{payload}.{b64url(bytes(raw))}"

    def idp_token_escalated(self) -> str:
        """A real token whose payload was edited (more scopes), the original signature kept."""
        head, payload, signature = self.stack.idp_token("m2m-reader", "tools:read").split(".")
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        claims["scope"] = "tools:read tools:write"
        return f"{head}.{b64url_json(claims)}.{signature}"


@pytest.fixture(scope="module")
def forger(stack: Stack) -> Forger:
    return Forger(stack, rsa.generate_private_key(public_exponent=65537, key_size=2048))


def assert_never_reached(stack: Stack) -> None:
    assert stack.sample.requests() == [], "the MCP server received a request it should never have seen"
    assert stack.sample.calls() == []


# ---------------------------------------------------------------- the SDK finds its way to a token


async def test_sdk_client_credentials_flow(core: Stack) -> None:
    before = len(core.decisions())
    discovery_before = int(core.envoy.stats("mcp_discovery.upstream_rq_200").get(STAT_DISCOVERY_200, "0"))
    storage = InMemoryTokenStorage()
    provider = client_credentials_provider(core.url, "m2m-reader", issuer=core.idp.issuer, storage=storage)
    async with mcp_client(core.url, auth=provider) as client:
        tools = await client.list_tools()
        result = await client.call_tool("search", {"query": "readme"})
    assert {t.name for t in tools.tools} == TOOLS
    assert not result.is_error
    assert json.loads(result.content[0].text) == ["docs/readme.md"]  # type: ignore[union-attr]

    # The flow began with the authorizer's 401 (no token yet) ...
    first = core.decisions()[before]
    assert (first["message"], first["status"], first["reason"]) == ("deny", 401, "token_missing")
    # ... the RFC 9728 document came from the discovery service through Envoy ...
    discovery_after = int(core.envoy.stats("mcp_discovery.upstream_rq_200").get(STAT_DISCOVERY_200, "0"))
    assert discovery_after > discovery_before
    # ... and the token is the identity provider's, for this resource (RFC 8707).
    assert storage.tokens is not None
    claims = unverified_claims(storage.tokens.access_token)
    assert (claims["iss"], claims["aud"], claims["client_id"]) == (core.idp.issuer, core.resource, "m2m-reader")
    assert claims["scope"] == "tools:read"

    assert core.sample.tool_calls() == ["search"]
    requests = core.sample.requests()
    assert requests, "nothing reached the MCP server"
    for request in requests:
        assert "authorization" not in request["headers"]
        assert request["headers"]["x-mcp-subject"] == "m2m-reader"
        assert request["headers"]["x-mcp-client-id"] == "m2m-reader"
        assert request["headers"]["x-mcp-scopes"] == "tools:read"


async def test_sdk_auth_code_pkce_flow_with_dynamic_registration(core: Stack) -> None:
    storage = InMemoryTokenStorage()
    driver = LoginDriver("alice")
    provider = auth_code_provider(core.url, driver, storage=storage)
    async with mcp_client(core.url, auth=provider) as client:
        tools = await client.list_tools()
        result = await client.call_tool("read_file", {"path": "src/main.py"})
    assert {t.name for t in tools.tools} == TOOLS
    assert not result.is_error

    # Registered itself (RFC 7591) as a public client, then one login with PKCE for this resource,
    # asking for the scopes the 401 challenge named.
    assert storage.client_info is not None and storage.client_info.client_id
    assert storage.client_info.token_endpoint_auth_method == "none"
    assert len(driver.authorization_urls) == 1
    params = driver.last_authorization_params()
    assert params["resource"] == core.resource
    assert params["code_challenge_method"] == "S256" and params["code_challenge"]
    # (the SDK adds offline_access for a refresh token when the authorization server offers it)
    assert set(params["scope"].split()) - {"offline_access"} == {"tools:read", "tools:write"}
    assert storage.tokens is not None
    claims = unverified_claims(storage.tokens.access_token)
    assert (claims["sub"], claims["aud"], claims["client_id"]) == (
        "alice",
        core.resource,
        storage.client_info.client_id,
    )

    assert core.sample.tool_calls() == ["read_file"]
    for request in core.sample.requests():
        assert "authorization" not in request["headers"]
        assert request["headers"]["x-mcp-subject"] == "alice"
        assert request["headers"]["x-mcp-client-id"] == storage.client_info.client_id


# ---------------------------------------------------------------- credentials refused with 401


@dataclass(frozen=True)
class Bad:
    authorization: Callable[[Stack, Forger], str | None]
    reason: str | None  # the authorizer's reason code; None: refused before it (Envoy)
    statuses: tuple[int, ...] = (401,)


def now() -> int:
    return int(time.time())


BAD_CREDENTIALS: dict[str, Bad] = {
    "expired": Bad(
        lambda s, f: "Bearer " + s.dev_token(extra={"iat": now() - 1200, "nbf": now() - 1200, "exp": now() - 600}),
        "token_expired",
    ),
    "not-yet-valid": Bad(
        lambda s, f: "Bearer " + s.dev_token(extra={"nbf": now() + 600, "exp": now() + 1200}),
        "token_not_yet_valid",
    ),
    "wrong-issuer": Bad(
        lambda s, f: "Bearer " + f.own_key(kid="k1", iss="http://127.0.0.1:9/not-trusted"), "token_issuer_unknown"
    ),
    "issuer-with-trailing-slash": Bad(
        lambda s, f: "Bearer " + f.own_key(kid="k1", iss=s.idp.issuer + "/"), "token_issuer_unknown"
    ),
    "other-mcp-server": Bad(
        lambda s, f: "Bearer " + s.idp_token("m2m-reader", "tools:read", resource="http://127.0.0.1:1/mcp"),
        "token_audience_mismatch",
    ),
    "bad-signature": Bad(lambda s, f: "Bearer " + f.idp_token_bad_signature(), "token_signature_invalid"),
    "edited-payload": Bad(lambda s, f: "Bearer " + f.idp_token_escalated(), "token_signature_invalid"),
    "idp-kid-foreign-key": Bad(
        lambda s, f: "Bearer " + f.own_key(kid=f.idp_rsa_jwk()["kid"]), "token_signature_invalid"
    ),
    "alg-none": Bad(lambda s, f: "Bearer " + f.alg_none(), "token_alg_none"),
    "hs256-with-public-key": Bad(lambda s, f: "Bearer " + f.hs256_with_public_key(), "token_alg_hmac"),
    "unknown-kid": Bad(lambda s, f: "Bearer " + f.own_key(kid="no-such-key"), "token_kid_unknown"),
    "not-a-jwt": Bad(lambda s, f: "Bearer not-a-jwt", "token_segments_invalid"),
    "basic-credentials": Bad(lambda s, f: "Basic bWFsbG9yeTpwYXNzd29yZA==", "token_malformed"),
    # Under Envoy's 60 KiB request-header limit: the authorizer refuses it unparsed.
    "50-kb-token": Bad(lambda s, f: "Bearer " + "a" * 50_000, "token_too_large"),
    # Over it: Envoy answers 431 itself, before any Check (this is what happens with Envoy 1.40's
    # defaults; a 401 from the authorizer would be as good).
    "100-kb-header": Bad(lambda s, f: "Bearer " + "a" * 100_000, None, (401, 431)),
}


async def test_no_token_is_a_challenge_without_error_code(core: Stack) -> None:
    before = len(core.decisions())
    response = post_call(core, "search", {"query": "x"})
    assert response.status_code == 401
    params = challenge_params(response.headers["www-authenticate"])
    # RFC 6750 §3.1: no error code when the request had no credentials at all.
    assert params == {
        "scope": "tools:read tools:write",
        "resource_metadata": f"{core.base_url}/.well-known/oauth-protected-resource/mcp",
    }
    assert core.last_denial(before)["reason"] == "token_missing"
    assert_never_reached(core)


@pytest.mark.parametrize("case", list(BAD_CREDENTIALS))
async def test_bad_credentials_are_refused_before_the_server(core: Stack, forger: Forger, case: str) -> None:
    bad = BAD_CREDENTIALS[case]
    authorization = bad.authorization(core, forger)
    assert authorization is not None
    before = len(core.decisions())
    response = post_call(core, "search", {"query": "x"}, headers=[("authorization", authorization)])
    assert response.status_code in bad.statuses, response.text
    if response.status_code == 401:
        params = challenge_params(response.headers["www-authenticate"])
        assert params["error"] == "invalid_token"
        assert params["resource_metadata"] == f"{core.base_url}/.well-known/oauth-protected-resource/mcp"
        assert response.json()["error"] == "invalid_token"
        assert bad.reason is not None, "expected Envoy to refuse this before the Check"
        assert core.last_denial(before)["reason"] == bad.reason
    else:
        assert len(core.decisions()) == before  # Envoy refused it; no Check happened
    assert_never_reached(core)


async def test_the_same_request_with_good_tokens_passes(core: Stack) -> None:
    """The control for the refusals above: same request, tokens of both trusted issuers."""
    for token in (core.idp_token("m2m-reader", "tools:read"), core.dev_token(subject="dev-user")):
        response = post_call(core, "search", {"query": "main"}, headers=[("authorization", f"Bearer {token}")])
        assert response.status_code == 200, response.text
    assert core.sample.tool_calls() == ["search", "search"]
    assert [r["headers"]["x-mcp-subject"] for r in core.sample.requests()] == ["m2m-reader", "dev-user"]


# ---------------------------------------------------------------- what the MCP server receives


async def test_identity_headers_from_the_client_are_overwritten(core: Stack) -> None:
    token = core.idp_token("m2m-writer", "tools:read tools:write")
    forged = [
        ("x-mcp-subject", "mallory"),
        ("X-MCP-Subject", "root"),  # a second line, another spelling
        ("x-mcp-client-id", "evil-client"),
        ("x-mcp-scopes", "tools:read tools:write admin"),
        ("x-mcp-issuer", "https://evil.example"),
        ("x_mcp_subject", "underscored"),  # dropped by Envoy: some frameworks map _ to -
        ("authorization", f"Bearer {token}"),
    ]
    response = post_call(core, "echo_headers", {}, headers=forged)
    assert response.status_code == 200, response.text
    (request,) = core.sample.requests()
    headers = request["headers"]
    assert headers["x-mcp-subject"] == "m2m-writer"
    assert headers["x-mcp-client-id"] == "m2m-writer"
    assert headers["x-mcp-scopes"] == "tools:read tools:write"
    assert headers["x-mcp-issuer"] == core.idp.issuer
    assert "authorization" not in headers
    assert "x_mcp_subject" not in headers
    assert core.sample.tool_calls() == ["echo_headers"]


async def test_identity_headers_without_a_value_are_removed(core: Stack) -> None:
    """A caller without scopes or client id: forged headers of those names do not pass either."""
    token = core.dev_token(subject="no-scopes", scopes=(), extra={"client_id": None})
    forged = [("x-mcp-scopes", "tools:write"), ("x-mcp-client-id", "evil-client"), ("authorization", f"Bearer {token}")]
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": META}}
    headers = [
        ("content-type", "application/json"),
        ("accept", ACCEPT),
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/list"),
        *forged,
    ]
    response = httpx.post(core.url, content=json.dumps(body), headers=headers, timeout=10.0)
    assert response.status_code == 200, response.text
    (request,) = core.sample.requests()
    assert request["headers"]["x-mcp-subject"] == "no-scopes"
    assert "x-mcp-scopes" not in request["headers"]
    assert "x-mcp-client-id" not in request["headers"]
    assert "authorization" not in request["headers"]


# ---------------------------------------------------------------- discovery through Envoy


async def test_protected_resource_metadata_through_envoy(core: Stack) -> None:
    unauthenticated = post_call(core, "search", {"query": "x"})
    metadata_url = challenge_params(unauthenticated.headers["www-authenticate"])["resource_metadata"]
    assert metadata_url == f"{core.base_url}/.well-known/oauth-protected-resource/mcp"
    before = len(core.decisions())
    response = httpx.get(metadata_url, timeout=10.0)  # no token: discovery is public
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    document = response.json()
    assert document["resource"] == core.resource
    assert document["authorization_servers"] == [core.idp.issuer, core.dev_issuer]
    assert document["scopes_supported"] == ["tools:read", "tools:write"]
    assert document["bearer_methods_supported"] == ["header"]
    assert document["resource_name"] == "Demo MCP server"
    # The authorization server the document names publishes its metadata (RFC 8414 / OIDC).
    as_metadata = httpx.get(f"{core.idp.issuer}/.well-known/openid-configuration", timeout=10.0).json()
    assert as_metadata["issuer"] == core.idp.issuer
    # Not checked by the authorizer, not forwarded to the MCP server.
    assert len(core.decisions()) == before
    assert_never_reached(core)


async def test_browser_clients_of_listed_origins_get_cors_from_envoy(core: Stack) -> None:
    """Envoy's CORS filter answers the preflight of a listed origin (a preflight carries no token, so it
    must not reach the Check), gives another origin nothing, and lets a browser read the challenge."""
    allowed = f"http://localhost:{core.port}"
    before = len(core.decisions())
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    ok = httpx.options(core.url, headers={"Origin": allowed, **preflight}, timeout=10.0)
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == allowed
    assert "mcp-protocol-version" in ok.headers["access-control-allow-headers"]
    other = httpx.options(core.url, headers={"Origin": "https://evil.example", **preflight}, timeout=10.0)
    assert "access-control-allow-origin" not in other.headers
    assert len(core.decisions()) == before  # neither preflight reached the authorizer
    assert_never_reached(core)

    challenged = httpx.post(
        core.url, headers={"Origin": allowed}, json={"jsonrpc": "2.0", "id": 1, "method": "ping"}, timeout=10.0
    )
    assert challenged.status_code == 401
    assert challenged.headers["access-control-allow-origin"] == allowed
    assert "www-authenticate" in challenged.headers["access-control-expose-headers"]
