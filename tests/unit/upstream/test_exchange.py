"""RFC 8693 token exchange (authz/upstream/exchange.py) against a loopback token endpoint: the form
sent, injection on allow, caching (in process and through the store, encrypted), single flight,
and fail-closed denials that never show the issuer's error text."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from support import (
    build_verifier,
    dev_stack,
    http_request,
    issuer_spec,
    make_checker,
    make_config,
    serve_app,
    server_spec,
    tool_call,
)

from authz.check import Checker
from authz.config.runtime import Config, Exchange
from authz.config.secrets import encrypt
from authz.errors import Forbidden, Unavailable
from authz.model import Caller
from authz.store.memory import MemoryStore
from authz.upstream.credentials import UpstreamCredentials
from authz.upstream.exchange import ACCESS_TOKEN_TYPE, GRANT_TYPE, TokenExchanger

KEY = "0123456789abcdef0123456789abcdef"
DOWNSTREAM = "https://api.test/"


@dataclass
class TokenEndpoint:
    url: str = ""
    forms: list[dict[str, str]] = field(default_factory=list)
    auth: list[str] = field(default_factory=list)
    status: int = 200
    expires_in: int = 300
    delay: float = 0.0
    metadata_requests: int = 0

    @property
    def issuer(self) -> str:
        return self.url.removesuffix("/token")

    async def metadata(self, request: web.Request) -> web.Response:
        self.metadata_requests += 1
        return web.json_response({"issuer": self.issuer, "token_endpoint": self.url})

    async def handle(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.forms.append(form)
        self.auth.append(request.headers.get("Authorization", ""))
        await asyncio.sleep(self.delay)
        if self.status != 200:
            body = {"error": "invalid_grant", "error_description": "SECRET-IDP-TEXT subject token rejected"}
            return web.json_response(body, status=self.status)
        n = len(self.forms)
        return web.json_response(
            {
                "access_token": f"downstream-{form['subject_token'][:6]}-{n}",
                "issued_token_type": ACCESS_TOKEN_TYPE,
                "token_type": "Bearer",
                "expires_in": self.expires_in,
            }
        )


@pytest.fixture
async def endpoint() -> AsyncIterator[TokenEndpoint]:
    state = TokenEndpoint()
    app = web.Application()
    app.router.add_post("/token", state.handle)
    app.router.add_get("/.well-known/oauth-authorization-server", state.metadata)
    async with serve_app(app) as base:
        state.url = f"{base}/token"
        yield state


def exchange_spec(url: str, **fields: Any) -> dict[str, Any]:
    return {
        "token_endpoint": url,
        "resource": DOWNSTREAM,
        "scopes": ["api:read"],
        "client_id": "mcp authz",
        "client_secret": "s3cret:/x",
        **fields,
    }


def exchange_of(config: Config) -> Exchange:
    exchange = config.servers["mcp"].exchange
    assert exchange is not None
    return exchange


def caller(subject: str = "alice", token: str | None = "caller-token-1") -> Caller:
    return Caller(subject=subject, claims={}, scopes=frozenset(), issuer="https://issuer.test", token=token)


async def test_the_exchange_request_follows_rfc8693(
    endpoint: TokenEndpoint, http_session: aiohttp.ClientSession
) -> None:
    config = make_config(servers=[server_spec(token_exchange=exchange_spec(endpoint.url, audience="api"))])
    exchanger = TokenExchanger(lambda: http_session, MemoryStore())
    token = await exchanger.token(exchange_of(config), caller())
    assert token == "downstream-caller-1"
    (form,) = endpoint.forms
    assert form == {
        "grant_type": GRANT_TYPE,
        "subject_token": "caller-token-1",
        "subject_token_type": ACCESS_TOKEN_TYPE,
        "requested_token_type": ACCESS_TOKEN_TYPE,
        "audience": "api",
        "resource": DOWNSTREAM,
        "scope": "api:read",
    }
    # RFC 6749 §2.3.1: form-encoded, then HTTP Basic.
    assert endpoint.auth == ["Basic " + base64.b64encode(b"mcp%20authz:s3cret%3A%2Fx").decode()]


async def test_cached_until_shortly_before_expiry(endpoint: TokenEndpoint, http_session: aiohttp.ClientSession) -> None:
    config = make_config(servers=[server_spec(token_exchange=exchange_spec(endpoint.url))])
    counted: list[tuple[bool, bool]] = []
    exchanger = TokenExchanger(
        lambda: http_session, MemoryStore(), counter=lambda ok, cached: counted.append((ok, cached))
    )
    first = await exchanger.token(exchange_of(config), caller())
    again = await exchanger.token(exchange_of(config), caller(token="another-token-of-alice"))
    other = await exchanger.token(exchange_of(config), caller("bob", "bobs-token"))
    assert first == again != other
    assert len(endpoint.forms) == 2 and exchanger.exchanges == 2
    assert counted == [(True, False), (True, True), (True, False)]


async def test_a_token_expiring_within_refresh_before_is_not_reused(
    endpoint: TokenEndpoint, http_session: aiohttp.ClientSession
) -> None:
    endpoint.expires_in = 20
    config = make_config(servers=[server_spec(token_exchange=exchange_spec(endpoint.url, refresh_before=30))])
    exchanger = TokenExchanger(lambda: http_session, MemoryStore())
    await exchanger.token(exchange_of(config), caller())
    await exchanger.token(exchange_of(config), caller())
    assert len(endpoint.forms) == 2


async def test_concurrent_checks_share_one_exchange(
    endpoint: TokenEndpoint, http_session: aiohttp.ClientSession
) -> None:
    endpoint.delay = 0.2
    config = make_config(servers=[server_spec(token_exchange=exchange_spec(endpoint.url))])
    exchanger = TokenExchanger(lambda: http_session, MemoryStore())
    tokens = await asyncio.gather(*(exchanger.token(exchange_of(config), caller()) for _ in range(10)))
    assert len(set(tokens)) == 1 and len(endpoint.forms) == 1


async def test_replicas_share_the_store_encrypted(endpoint: TokenEndpoint, http_session: aiohttp.ClientSession) -> None:
    config = make_config(servers=[server_spec(token_exchange=exchange_spec(endpoint.url))], secrets={"keys": [KEY]})
    store = MemoryStore()
    one = TokenExchanger(lambda: http_session, store, config.secret_keys)
    two = TokenExchanger(lambda: http_session, store, config.secret_keys)
    token = await one.token(exchange_of(config), caller())
    assert await two.token(exchange_of(config), caller()) == token
    assert len(endpoint.forms) == 1
    raw = list(store._values.live_values(0.0))
    assert len(raw) == 1 and raw[0].startswith(b"v2:") and token.encode() not in raw[0]
    # Another key cannot read the entry: it exchanges again instead of failing.
    stranger = TokenExchanger(lambda: http_session, store, (b"x" * 32,))
    assert await stranger.token(exchange_of(config), caller()) != token


async def test_a_refusal_denies_without_the_issuers_text(
    endpoint: TokenEndpoint, http_session: aiohttp.ClientSession
) -> None:
    endpoint.status = 400
    config = make_config(servers=[server_spec(token_exchange=exchange_spec(endpoint.url))])
    exchanger = TokenExchanger(lambda: http_session, MemoryStore())
    with pytest.raises(Forbidden) as caught:
        await exchanger.token(exchange_of(config), caller())
    assert caught.value.reason == "token_exchange_failed"
    assert "invalid_grant" in caught.value.detail and "SECRET-IDP-TEXT" not in caught.value.detail
    endpoint.status = 502
    with pytest.raises(Unavailable):
        await exchanger.token(exchange_of(config), caller())


async def test_an_unreachable_issuer_is_503(http_session: aiohttp.ClientSession) -> None:
    config = make_config(servers=[server_spec(token_exchange=exchange_spec("http://127.0.0.1:9/token"))])
    exchanger = TokenExchanger(lambda: http_session, MemoryStore())
    with pytest.raises(Unavailable) as caught:
        await exchanger.token(exchange_of(config), caller())
    assert caught.value.status == 503 and caught.value.reason == "token_exchange_failed"


async def test_a_caller_without_a_token_cannot_be_exchanged(http_session: aiohttp.ClientSession) -> None:
    config = make_config(servers=[server_spec(token_exchange=exchange_spec("http://127.0.0.1:9/token"))])
    exchanger = TokenExchanger(lambda: http_session, MemoryStore())
    with pytest.raises(Forbidden, match="token_exchange_failed"):
        await exchanger.token(exchange_of(config), caller(token=None))


def test_config_needs_a_downstream_target() -> None:
    with pytest.raises(ValueError, match="audience and/or resource"):
        make_config(servers=[server_spec(token_exchange=exchange_spec("https://idp.test/token", resource=None))])


def test_an_encrypted_client_secret_is_decrypted() -> None:
    spec = exchange_spec("https://idp.test/token", client_secret=encrypt("very-secret", KEY.encode()))
    config = make_config(servers=[server_spec(token_exchange=spec)], secrets={"keys": [KEY]})
    assert exchange_of(config).client_secret.reveal() == "very-secret"


async def checker(tmp_path: Path, url: str, session: aiohttp.ClientSession) -> tuple[Checker, Any]:
    stack = dev_stack(tmp_path, [server_spec(token_exchange=exchange_spec(url))])
    verifier, _ = build_verifier(stack.config)
    exchanger = TokenExchanger(lambda: session, MemoryStore())
    return make_checker(stack.config, verifier, upstream=UpstreamCredentials(exchanger)), stack


async def test_the_check_injects_the_exchanged_token(
    tmp_path: Path, endpoint: TokenEndpoint, http_session: aiohttp.ClientSession
) -> None:
    check, stack = await checker(tmp_path, endpoint.url, http_session)
    token = stack.token()
    decision = await check.check(http_request(tool_call("search"), token=token))
    assert decision.allowed, decision
    assert dict(decision.set_headers)["authorization"] == f"Bearer downstream-{token[:6]}-1"
    assert "authorization" not in decision.remove_headers
    assert endpoint.forms[0]["subject_token"] == token


async def test_the_check_denies_when_the_exchange_fails(
    tmp_path: Path, endpoint: TokenEndpoint, http_session: aiohttp.ClientSession
) -> None:
    endpoint.status = 400
    check, stack = await checker(tmp_path, endpoint.url, http_session)
    decision = await check.check(http_request(tool_call("search", id=7), token=stack.token()))
    assert not decision.allowed and decision.status == 403 and decision.reason == "token_exchange_failed"
    body = json.loads(decision.body)
    assert body["id"] == 7 and "SECRET-IDP-TEXT" not in decision.body.decode()
    assert "invalid_grant" not in decision.body.decode()


async def test_without_wiring_an_exchange_server_fails_closed(tmp_path: Path) -> None:
    stack = dev_stack(tmp_path, [server_spec(token_exchange=exchange_spec("https://idp.test/token"))])
    decision = await stack.checker.check(http_request(tool_call("search"), token=stack.token()))
    assert not decision.allowed and decision.status == 503 and decision.reason == "token_exchange_failed"


async def test_the_token_endpoint_from_the_issuers_metadata(
    endpoint: TokenEndpoint, http_session: aiohttp.ClientSession
) -> None:
    spec = exchange_spec("", issuer="main")
    del spec["token_endpoint"]
    config = make_config(
        [issuer_spec(issuer=endpoint.issuer, jwks_uri="http://127.0.0.1:9/jwks")],
        [server_spec(token_exchange=spec)],
    )
    exchanger = TokenExchanger(lambda: http_session, MemoryStore())
    await exchanger.token(exchange_of(config), caller())
    await exchanger.token(exchange_of(config), caller("bob", "bobs-token"))
    assert len(endpoint.forms) == 2 and endpoint.metadata_requests == 1


async def test_unreachable_issuer_metadata_fails_closed(http_session: aiohttp.ClientSession) -> None:
    spec = exchange_spec("", issuer="main")
    del spec["token_endpoint"]
    config = make_config(
        [issuer_spec(issuer="http://127.0.0.1:9", jwks_uri="http://127.0.0.1:9/jwks")],
        [server_spec(token_exchange=spec)],
    )
    with pytest.raises(Unavailable, match="token_exchange_failed"):
        await TokenExchanger(lambda: http_session, MemoryStore()).token(exchange_of(config), caller())


@pytest.mark.parametrize(
    ("fields", "problem"),
    [({"issuer": "main"}, "token_endpoint or issuer"), ({"token_endpoint": None, "issuer": "nope"}, "not in issuers")],
)
def test_the_token_endpoint_or_a_known_issuer(fields: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        make_config(servers=[server_spec(token_exchange=exchange_spec("https://idp.test/token", **fields))])
