"""Shared helpers for unit and security tests: signing keys, a token factory, config builders,
a loopback JWKS server and HttpRequest builders.

Plain functions and classes are imported by test modules (``from support import ...`` under
tests/unit, ``from tests.unit.support import ...`` elsewhere); ``conftest.py`` re-exports the fixtures.
(Not in conftest.py itself: tests/e2e has a conftest.py too, and only one module can be ``conftest``.)
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from authz.approval.gate import ApprovalGate
from authz.check import Checker
from authz.config.load import parse_config
from authz.config.runtime import Config
from authz.identity import devkey
from authz.identity.jwks import KeySet
from authz.identity.rfc9068 import Verifier
from authz.identity.sources import IdentitySources
from authz.model import HttpRequest
from authz.stages import Approval, Credentials, Stages
from authz.state.guards import Guards
from authz.store.base import Store
from authz.store.memory import MemoryStore
from authz.upstream.credentials import UpstreamCredentials

ISSUER = "https://issuer.test"
OTHER_ISSUER = "https://other-issuer.test"
RESOURCE = "https://mcp.test/mcp"
OTHER_RESOURCE = "https://other.test/mcp"
METADATA_URL = "https://mcp.test/.well-known/oauth-protected-resource/mcp"
STATELESS = "2026-07-28"
REMOVE = object()  # a claims/header override that deletes the key


# ---------------------------------------------------------------- encoding


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def segment(value: Any) -> str:
    """A JWS segment: dicts as compact JSON, str as its UTF-8 text (raw JSON), bytes as they are."""
    if isinstance(value, bytes):
        return b64url(value)
    if isinstance(value, str):
        return b64url(value.encode("utf-8"))
    return b64url(json.dumps(value, separators=(",", ":")).encode("utf-8"))


# ---------------------------------------------------------------- keys and tokens


@functools.cache
def _rsa(seed: str) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass(frozen=True)
class SigningKey:
    """A private key with the kid and algorithm it signs with; its public half goes into a JWKS."""

    kid: str
    alg: str
    private: Any

    def public_jwk(self, *, with_alg: bool = True, **extra: Any) -> dict[str, Any]:
        algorithm = jwt.get_algorithm_by_name(self.alg)
        jwk: dict[str, Any] = json.loads(algorithm.to_jwk(self.private.public_key()))
        jwk.update(kid=self.kid, use="sig")
        if with_alg:
            jwk["alg"] = self.alg
        jwk.update(extra)
        return jwk

    def token(
        self,
        claims: Mapping[str, Any] | None = None,
        *,
        header: Mapping[str, Any] | None = None,
        alg: str | None = None,
    ) -> str:
        """A token signed by this key. ``header`` entries override (``REMOVE`` deletes) the defaults."""
        alg = alg or self.alg
        head: dict[str, Any] = {"alg": alg, "typ": "at+jwt", "kid": self.kid}
        _apply(head, header or {})
        return sign(head, make_claims() if claims is None else claims, self.private, alg)


def _apply(target: dict[str, Any], overrides: Mapping[str, Any]) -> None:
    for k, v in overrides.items():
        if v is REMOVE:
            target.pop(k, None)
        else:
            target[k] = v


def sign(
    header: Mapping[str, Any] | str | bytes, payload: Mapping[str, Any] | str | bytes, private: Any, alg: str
) -> str:
    """A hand-built compact JWS: header and payload as given (str/bytes = raw JSON text), signed with ``alg``."""
    signing_input = f"{segment(header)}.{segment(payload)}"
    signature = jwt.get_algorithm_by_name(alg).sign(signing_input.encode("ascii"), private)
    return f"{signing_input}.{b64url(signature)}"


def unsigned(
    header: Mapping[str, Any] | str | bytes, payload: Mapping[str, Any] | str | bytes, signature: bytes = b""
) -> str:
    return f"{segment(header)}.{segment(payload)}.{b64url(signature)}"


def make_claims(**overrides: Any) -> dict[str, Any]:
    """Valid RFC 9068 claims for RESOURCE at ISSUER; keyword overrides (``REMOVE`` deletes)."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "aud": RESOURCE,
        "sub": "alice",
        "client_id": "client-1",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": f"jti-{time.monotonic_ns()}",
        "scope": "tools:read tools:write",
    }
    _apply(claims, overrides)
    return claims


@dataclass(frozen=True)
class Keys:
    rsa: SigningKey  # RS256, kid "rsa-1"
    rsa_twin: SigningKey  # another RSA key under the same kid "rsa-1"
    rsa_new: SigningKey  # RS256, kid "rsa-2" (rotation target)
    ec256: SigningKey  # ES256, kid "ec-256"
    ec384: SigningKey  # ES384, kid "ec-384"
    ed25519: SigningKey  # EdDSA, kid "ed-1"
    ps256: SigningKey  # PS256 with an RSA key, kid "ps-1"


@functools.cache
def keys() -> Keys:
    """Session-wide keys (RSA generation is the slow part)."""
    return Keys(
        rsa=SigningKey("rsa-1", "RS256", _rsa("a")),
        rsa_twin=SigningKey("rsa-1", "RS256", _rsa("b")),
        rsa_new=SigningKey("rsa-2", "RS256", _rsa("c")),
        ec256=SigningKey("ec-256", "ES256", ec.generate_private_key(ec.SECP256R1())),
        ec384=SigningKey("ec-384", "ES384", ec.generate_private_key(ec.SECP384R1())),
        ed25519=SigningKey("ed-1", "EdDSA", ed25519.Ed25519PrivateKey.generate()),
        ps256=SigningKey("ps-1", "PS256", _rsa("a")),
    )


def jwks(*signing_keys: SigningKey, with_alg: bool = True) -> dict[str, Any]:
    return {"keys": [k.public_jwk(with_alg=with_alg) for k in signing_keys]}


# ---------------------------------------------------------------- configuration


def issuer_spec(name: str = "main", issuer: str = ISSUER, **fields: Any) -> dict[str, Any]:
    return {"name": name, "issuer": issuer, **fields}


def server_spec(name: str = "mcp", resource: str = RESOURCE, **fields: Any) -> dict[str, Any]:
    return {"name": name, "resource": resource, **fields}


def make_config(
    issuers: list[dict[str, Any]] | None = None, servers: list[dict[str, Any]] | None = None, **top: Any
) -> Config:
    """A compiled Config through the real YAML/JSON entry point (parse_config)."""
    doc = {
        "issuers": issuers if issuers is not None else [issuer_spec(jwks_uri="http://127.0.0.1:9/jwks")],
        "servers": servers if servers is not None else [server_spec()],
        **top,
    }
    return parse_config(json.dumps(doc), "<test>")


def policy(*rules: dict[str, Any], default: str = "deny") -> dict[str, Any]:
    return {"default": default, "rules": list(rules)}


# ---------------------------------------------------------------- HTTP requests to the MCP endpoint


def http_request(
    body: bytes | str | Mapping[str, Any] | list[Any] | None = None,
    *,
    method: str = "POST",
    headers: Mapping[str, str] | None = None,
    header_values: Mapping[str, tuple[str, ...]] | None = None,
    token: str | None = None,
    revision: str | None = None,
    context: Mapping[str, str] | None = None,
    content_type: str | None = "application/json",
) -> HttpRequest:
    """An HttpRequest as server.py would build it; dict/list bodies are JSON-encoded."""
    if isinstance(body, dict | list):
        raw: bytes | None = json.dumps(body).encode()
    elif isinstance(body, str):
        raw = body.encode()
    else:
        raw = body
    h: dict[str, str] = {}
    if raw is not None and content_type is not None:
        h["content-type"] = content_type
    if token is not None:
        h["authorization"] = f"Bearer {token}"
    if revision is not None:
        h["mcp-protocol-version"] = revision
    h.update({k.lower(): v for k, v in (headers or {}).items()})
    values = {k.lower(): tuple(v) for k, v in (header_values or {}).items()}
    for k, v in values.items():
        h[k] = ",".join(v)
    return HttpRequest(
        method=method,
        path="/mcp",
        headers=h,
        body=raw,
        context=dict(context or {}),
        header_values=values,
    )


def rpc(method: str, params: Mapping[str, Any] | None = None, id: int | str | None = 1) -> dict[str, Any]:
    msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if id is not None:
        msg["id"] = id
    if params is not None:
        msg["params"] = dict(params)
    return msg


def tool_call(name: str, id: int | str | None = 1, **arguments: Any) -> dict[str, Any]:
    return rpc("tools/call", {"name": name, "arguments": arguments}, id)


def enveloped(message: dict[str, Any]) -> dict[str, Any]:
    """A 2026-07-28 request: ``params._meta`` completed with the required protocol version and client
    capabilities (values already there are kept)."""
    params = message.setdefault("params", {})
    meta = params.setdefault("_meta", {})
    meta.setdefault("io.modelcontextprotocol/protocolVersion", STATELESS)
    meta.setdefault("io.modelcontextprotocol/clientCapabilities", {})
    return message


def stateless_headers(method: str, name: str | None = None) -> dict[str, str]:
    h = {"mcp-protocol-version": STATELESS, "mcp-method": method}
    if name is not None:
        h["mcp-name"] = name
    return h


# ---------------------------------------------------------------- a loopback JWKS server


@dataclass
class JwksServer:
    """aiohttp on 127.0.0.1: serves ``docs[path]`` (dict → JSON, bytes as they are), logs every request."""

    docs: dict[str, Any] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    delay: float = 0.0
    base: str = ""

    def url(self, path: str) -> str:
        return f"{self.base}{path}"

    def fetches(self, path: str) -> int:
        return self.requests.count(path)

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests.append(request.path)
        if self.delay:
            await asyncio.sleep(self.delay)
        doc = self.docs.get(request.path)
        if doc is None:
            return web.Response(status=404)
        if isinstance(doc, bytes):
            return web.Response(body=doc, content_type="application/json")
        return web.json_response(doc)


@contextlib.asynccontextmanager
async def serve_app(app: web.Application) -> AsyncIterator[str]:
    """Serve an aiohttp app on a free loopback port for the duration of the block; yields its base URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def serve_jwks() -> AsyncIterator[JwksServer]:
    """Start a JwksServer on a free loopback port for the duration of the block."""
    server = JwksServer()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", server._handle)
    async with serve_app(app) as base:
        server.base = base
        yield server


@pytest.fixture
async def jwks_server() -> AsyncIterator[JwksServer]:
    async with serve_jwks() as server:
        yield server


@pytest.fixture
async def http_session() -> AsyncIterator[aiohttp.ClientSession]:
    session = aiohttp.ClientSession()
    try:
        yield session
    finally:
        await session.close()


def build_verifier(config: Config, session: aiohttp.ClientSession | None = None) -> tuple[Verifier, dict[str, KeySet]]:
    """A Verifier over fresh KeySets; ``session`` is required unless every issuer has a local key."""

    def factory() -> aiohttp.ClientSession:
        if session is None:
            raise AssertionError("no HTTP expected in this test")
        return session

    keysets = {name: KeySet(issuer, factory) for name, issuer in config.key_issuers.items()}
    return Verifier(config.issuers, keysets), keysets


# ---------------------------------------------------------------- a Checker with the development key


def _no_http() -> aiohttp.ClientSession:
    raise AssertionError("no HTTP client session was handed to this Checker")


def make_checker(
    config: Config,
    verifier: Verifier,
    *,
    store: Store | None = None,
    approvals: Approval | None = None,
    upstream: Credentials | None = None,
) -> Checker:
    """A Checker with the test defaults: guards over ``store`` (a fresh MemoryStore), an approval gate
    with no approvals configured, upstream credentials without token exchange."""
    guards = Guards(
        store if store is not None else MemoryStore(), config.store.failure, config.store.max_sessions_per_subject
    )
    stages = Stages(
        identity=IdentitySources(verifier),
        revocation=guards,
        rate_limit=guards,
        sessions=guards,
        approval=approvals if approvals is not None else ApprovalGate(None, None, _no_http),
        credentials=upstream if upstream is not None else UpstreamCredentials(),
    )
    return Checker(config, stages)


@dataclass(frozen=True)
class DevStack:
    checker: Checker
    config: Config
    key_file: Path

    def token(self, *, audience: str = RESOURCE, scopes: list[str] | None = None, **kw: Any) -> str:
        return devkey.mint(self.key_file, issuer=ISSUER, audience=audience, subject="alice", scopes=scopes, **kw)


def dev_stack(tmp_path: Path, servers: list[dict[str, Any]] | None = None, **top: Any) -> DevStack:
    """A Checker whose issuer signs with a development key in ``tmp_path`` (no network)."""
    key_file = devkey.ensure_key(tmp_path / "dev.pem")
    config = make_config([issuer_spec(local_key_file=str(key_file), token_type="at+jwt")], servers, **top)
    verifier, _ = build_verifier(config)
    return DevStack(make_checker(config, verifier), config, key_file)
