"""The discovery application over HTTP: routes, probes, local JWKS, and the metadata mirror against a fake issuer."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from authz.config.load import parse_config
from authz.config.runtime import Config
from authz.identity.devkey import ensure_key, public_jwks
from discovery import build_app, reconfigure, start

PRM = "/.well-known/oauth-protected-resource"
OAUTH = "/.well-known/oauth-authorization-server"
OIDC = "/.well-known/openid-configuration"


def make_config(issuers: list[dict[str, Any]], servers: list[dict[str, Any]]) -> Config:
    return parse_config(json.dumps({"issuers": issuers, "servers": servers}))


def always_ready() -> Mapping[str, bool]:
    return {}


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 3.0) -> None:
    """Poll ``check`` until it is true; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    return ensure_key(tmp_path / "k.pem")


@pytest.fixture
def dev_issuer(key_file: Path) -> dict[str, Any]:
    return {"name": "dev", "issuer": "http://127.0.0.1:8080/dev", "local_key_file": str(key_file)}


async def serve(app: web.Application) -> TestClient[web.Request, web.Application]:
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    return client


# ---------------------------------------------------------------- RFC 9728 over HTTP


async def test_one_server_at_its_path_and_the_root(dev_issuer: dict[str, Any]) -> None:
    config = make_config(
        [dev_issuer],
        [{"name": "s", "resource": "http://h/mcp", "scopes_supported": ["a"], "resource_name": "S"}],
    )
    client = await serve(build_app(config, readiness=always_ready))
    try:
        expected = {
            "resource": "http://h/mcp",
            "authorization_servers": ["http://127.0.0.1:8080/dev"],
            "bearer_methods_supported": ["header"],
            "scopes_supported": ["a"],
            "resource_name": "S",
        }
        for path in (f"{PRM}/mcp", PRM):
            resp = await client.get(path)
            assert resp.status == 200
            assert resp.headers["Content-Type"] == "application/json"
            assert resp.headers["Cache-Control"] == "public, max-age=300"
            assert await resp.json() == expected

        head = await client.head(f"{PRM}/mcp")
        assert head.status == 200
        assert await head.read() == b""

        for path in (f"{PRM}/other", f"{PRM}/mcp/", "/", "/mcp", f"{OAUTH}/dev", f"{OIDC}"):
            resp = await client.get(path)
            assert resp.status == 404, path
            assert resp.headers["Content-Type"] == "application/json"
            assert (await resp.json())["error"] == "not_found"

        resp = await client.post(f"{PRM}/mcp", data=b"{}")
        assert resp.status == 405
        assert resp.headers["Allow"] == "GET, HEAD"
        assert (await resp.json())["error"] == "method_not_allowed"
        assert (await client.delete("/nope")).status == 404

        # CORS preflight of a browser MCP client (it sends MCP-Protocol-Version with the metadata GET)
        preflight = await client.options(
            f"{PRM}/mcp",
            headers={"Origin": "https://app.example", "Access-Control-Request-Headers": "mcp-protocol-version"},
        )
        assert preflight.status == 204
        assert preflight.headers["Access-Control-Allow-Origin"] == "*"
        assert "mcp-protocol-version" in preflight.headers["Access-Control-Allow-Headers"]
        assert "GET" in preflight.headers["Access-Control-Allow-Methods"]
        assert (await client.options("/readyz")).status == 405  # operator endpoints get no CORS
        assert (await client.options("/nope")).status == 404
    finally:
        await client.close()


async def test_two_servers(dev_issuer: dict[str, Any]) -> None:
    config = make_config(
        [dev_issuer],
        [
            {"name": "root", "resource": "http://h"},
            {"name": "a", "resource": "http://h/a"},
            {"name": "b1", "resource": "http://one.example/b"},
            {"name": "b2", "resource": "https://two.example/b"},
        ],
    )
    client = await serve(build_app(config, readiness=always_ready))
    try:

        async def resource(path: str, host: str = "h") -> Any:
            resp = await client.get(path, headers={"Host": host})
            return (await resp.json()).get("resource") if resp.status == 200 else resp.status

        assert await resource(PRM) == "http://h"
        assert await resource(f"{PRM}/a") == "http://h/a"
        assert await resource(f"{PRM}/b", "one.example") == "http://one.example/b"
        assert await resource(f"{PRM}/b", "two.example:443") == "https://two.example/b"
        assert await resource(f"{PRM}/b", "three.example") == 404
    finally:
        await client.close()


async def test_no_root_document_when_no_server_is_at_the_root(dev_issuer: dict[str, Any]) -> None:
    config = make_config(
        [dev_issuer], [{"name": "a", "resource": "http://h/a"}, {"name": "b", "resource": "http://h/b"}]
    )
    client = await serve(build_app(config, readiness=always_ready))
    try:
        assert (await client.get(PRM)).status == 404
        assert (await client.get(f"{PRM}/b")).status == 200
    finally:
        await client.close()


# ---------------------------------------------------------------- probes and local JWKS


async def test_healthz_and_readyz(dev_issuer: dict[str, Any]) -> None:
    config = make_config([dev_issuer], [{"name": "s", "resource": "http://h/mcp"}])
    checks = {"config": True, "jwks:dev": False}
    client = await serve(build_app(config, readiness=lambda: checks))
    try:
        resp = await client.get("/healthz")
        assert resp.status == 200 and await resp.json() == {"status": "ok"}
        assert resp.headers["Cache-Control"] == "no-store"

        resp = await client.get("/readyz")
        assert resp.status == 503
        assert await resp.json() == {"status": "not ready", "checks": {"config": True, "jwks:dev": False}}

        checks["jwks:dev"] = True
        resp = await client.get("/readyz")
        assert resp.status == 200
        assert await resp.json() == {"status": "ready", "checks": {"config": True, "jwks:dev": True}}
        assert (await client.head("/readyz")).status == 200
    finally:
        await client.close()


async def test_readyz_fails_closed_when_the_callback_raises(dev_issuer: dict[str, Any]) -> None:
    def broken() -> Mapping[str, bool]:
        raise RuntimeError("boom")

    config = make_config([dev_issuer], [{"name": "s", "resource": "http://h/mcp"}])
    client = await serve(build_app(config, readiness=broken))
    try:
        resp = await client.get("/readyz")
        assert resp.status == 503
        assert (await resp.json())["checks"] == {"readiness": False}
    finally:
        await client.close()


async def test_jwks_of_local_issuers(dev_issuer: dict[str, Any], key_file: Path) -> None:
    config = make_config([dev_issuer], [{"name": "s", "resource": "http://h/mcp"}])
    jwks = {"dev": public_jwks(key_file)}
    client = await serve(build_app(config, readiness=always_ready, jwks_documents=jwks))
    try:
        resp = await client.get("/jwks/dev.json")
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "application/json"
        body = await resp.json()
        assert body == jwks["dev"] and body["keys"][0]["kty"] == "EC"
        assert (await client.get("/jwks/other.json")).status == 404
        assert (await client.get("/jwks/dev")).status == 404
        assert (await client.post("/jwks/dev.json")).status == 405
        # no AS metadata and no readiness check for the local issuer
        for path in (f"{OAUTH}/dev", f"{OIDC}/dev", "/dev/.well-known/openid-configuration", OAUTH):
            assert (await client.get(path)).status == 404
        resp = await client.get("/readyz")
        assert resp.status == 200 and (await resp.json())["checks"] == {}
    finally:
        await client.close()


# ---------------------------------------------------------------- the AS-metadata mirror


class FakeIssuer:
    """A loopback authorization server serving whatever documents the test puts in ``documents``."""

    def __init__(self) -> None:
        self.documents: dict[str, dict[str, Any]] = {}
        self.requests: list[str] = []
        self.failing = False
        self.gate: asyncio.Event | None = None
        app = web.Application()
        app.router.add_get("/{path:.*}", self._handle)
        self.server = TestServer(app, host="127.0.0.1")

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests.append(request.path)
        if self.gate is not None:
            await self.gate.wait()
        if self.failing:
            return web.Response(status=500)
        document = self.documents.get(request.path)
        if document is None:
            return web.Response(status=404)
        return web.json_response(document)


@pytest.fixture
async def fake_issuer() -> AsyncIterator[FakeIssuer]:
    fake = FakeIssuer()
    await fake.server.start_server()
    try:
        yield fake
    finally:
        if fake.gate is not None:
            fake.gate.set()
        await fake.server.close()


def mirror_config(issuer: str) -> Config:
    return make_config([{"name": "corp", "issuer": issuer}], [{"name": "s", "resource": "http://h/mcp"}])


def metadata(issuer: str) -> dict[str, Any]:
    return {
        "issuer": issuer,
        "authorization_endpoint": f"{issuer}/authorize",
        "token_endpoint": f"{issuer}/token",
        "jwks_uri": f"{issuer}/jwks",
    }


async def ready(client: TestClient[web.Request, web.Application]) -> bool:
    return (await client.get("/readyz")).status == 200


ALL_FORMS = (OAUTH, OIDC, f"{OAUTH}/tenant", f"{OIDC}/tenant", "/tenant/.well-known/openid-configuration")


async def test_mirror_uses_rfc8414_first_and_serves_every_form(fake_issuer: FakeIssuer) -> None:
    issuer = f"{fake_issuer.base}/tenant"
    document = metadata(issuer)
    fake_issuer.documents[f"{OAUTH}/tenant"] = document
    fake_issuer.documents[f"{OIDC}/tenant"] = {**document, "from": "oidc"}
    client = await serve(build_app(mirror_config(issuer), readiness=always_ready))
    try:
        await eventually(lambda: ready(client))
        resp = await client.get("/readyz")
        assert (await resp.json())["checks"] == {"as_metadata:corp": True}
        for path in ALL_FORMS:  # the only mirrored issuer: root forms too
            resp = await client.get(path)
            assert resp.status == 200, path
            assert resp.headers["Content-Type"] == "application/json"
            assert "max-age=" in resp.headers["Cache-Control"]
            assert await resp.json() == document
        assert set(fake_issuer.requests) == {f"{OAUTH}/tenant"}
    finally:
        await client.close()


async def test_mirror_falls_back_to_oidc(fake_issuer: FakeIssuer) -> None:
    issuer = f"{fake_issuer.base}/tenant"
    document = metadata(issuer)
    fake_issuer.documents["/tenant/.well-known/openid-configuration"] = document
    client = await serve(build_app(mirror_config(issuer), readiness=always_ready))
    try:
        await eventually(lambda: ready(client))
        assert await (await client.get(f"{OAUTH}/tenant")).json() == document
        assert fake_issuer.requests[:3] == [
            f"{OAUTH}/tenant",
            f"{OIDC}/tenant",
            "/tenant/.well-known/openid-configuration",
        ]
    finally:
        await client.close()


async def test_mirror_refuses_a_document_for_another_issuer(fake_issuer: FakeIssuer) -> None:
    issuer = f"{fake_issuer.base}/tenant"
    for path in (f"{OAUTH}/tenant", f"{OIDC}/tenant", "/tenant/.well-known/openid-configuration"):
        fake_issuer.documents[path] = metadata(f"{fake_issuer.base}/evil")
    app = build_app(mirror_config(issuer), readiness=always_ready, retry_interval=0.01)
    client = await serve(app)
    try:

        async def tried_twice() -> bool:
            return len(fake_issuer.requests) >= 6

        await eventually(tried_twice)
        for path in ALL_FORMS:
            resp = await client.get(path)
            assert resp.status == 503, path
            assert (await resp.json())["error"] == "temporarily_unavailable"
        resp = await client.get("/readyz")
        assert resp.status == 503
        assert (await resp.json())["checks"] == {"as_metadata:corp": False}
    finally:
        await client.close()


async def test_mirror_keeps_the_last_good_document_and_picks_up_changes(fake_issuer: FakeIssuer) -> None:
    issuer = f"{fake_issuer.base}/tenant"
    document = metadata(issuer)
    fake_issuer.documents[f"{OAUTH}/tenant"] = document
    app = build_app(mirror_config(issuer), readiness=always_ready, refresh_interval=0.02, retry_interval=0.01)
    client = await serve(app)
    try:
        await eventually(lambda: ready(client))
        fake_issuer.failing = True
        seen = len(fake_issuer.requests)

        async def failed_rounds() -> bool:
            return len(fake_issuer.requests) >= seen + 6

        await eventually(failed_rounds)
        resp = await client.get(f"{OAUTH}/tenant")
        assert resp.status == 200 and await resp.json() == document
        assert await ready(client)

        changed = {**document, "scopes_supported": ["openid"]}
        fake_issuer.documents[f"{OAUTH}/tenant"] = changed
        fake_issuer.failing = False

        async def refreshed() -> bool:
            return bool(await (await client.get(OAUTH)).json() == changed)

        await eventually(refreshed)
    finally:
        await client.close()


async def test_503_until_the_first_fetch(fake_issuer: FakeIssuer) -> None:
    issuer = f"{fake_issuer.base}/tenant"
    fake_issuer.documents[f"{OAUTH}/tenant"] = metadata(issuer)
    fake_issuer.gate = asyncio.Event()
    client = await serve(build_app(mirror_config(issuer), readiness=always_ready, retry_interval=1))
    try:

        async def asked() -> bool:
            return bool(fake_issuer.requests)

        await eventually(asked)
        resp = await client.get(f"{OAUTH}/tenant")
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "1"
        assert resp.headers["Cache-Control"] == "no-store"
        assert (await client.get("/readyz")).status == 503

        fake_issuer.gate.set()
        await eventually(lambda: ready(client))
        assert (await client.get(f"{OAUTH}/tenant")).status == 200
    finally:
        await client.close()


async def test_start_serves_and_cleanup_stops_the_mirror(fake_issuer: FakeIssuer) -> None:
    issuer = f"{fake_issuer.base}/tenant"
    fake_issuer.documents[f"{OAUTH}/tenant"] = metadata(issuer)
    async with aiohttp.ClientSession() as http:
        app = build_app(mirror_config(issuer), readiness=always_ready, http=http, refresh_interval=0.02)
        runner = await start(app, "127.0.0.1", 0)
        try:
            host, port = runner.addresses[0][:2]
            base = f"http://{host}:{port}"

            async def served() -> bool:
                async with http.get(f"{base}/.well-known/oauth-authorization-server") as resp:
                    return resp.status == 200

            await eventually(served)
            async with http.get(f"{base}/healthz") as resp:
                assert resp.status == 200
        finally:
            await runner.cleanup()
        assert not http.closed  # a session handed in is left to its owner
        assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("as-metadata:")]
        count = len(fake_issuer.requests)
        await asyncio.sleep(0.05)
        assert len(fake_issuer.requests) == count  # no more fetches after cleanup


async def test_cleanup_closes_the_session_it_opened(fake_issuer: FakeIssuer, monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[aiohttp.ClientSession] = []

    class Recording(aiohttp.ClientSession):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            opened.append(self)

    monkeypatch.setattr(aiohttp, "ClientSession", Recording)
    issuer = f"{fake_issuer.base}/tenant"
    fake_issuer.documents[f"{OAUTH}/tenant"] = metadata(issuer)
    runner = await start(build_app(mirror_config(issuer), readiness=always_ready), "127.0.0.1", 0)
    try:

        async def asked() -> bool:
            return bool(fake_issuer.requests)

        await eventually(asked)
        assert len(opened) == 1 and not opened[0].closed
    finally:
        await runner.cleanup()
    assert opened[0].closed


async def test_reconfigure_swaps_the_routes_and_keeps_an_unchanged_issuers_document(
    fake_issuer: FakeIssuer, dev_issuer: dict[str, Any]
) -> None:
    """A reload serves the new config on the same server; the mirrored document of an issuer whose settings
    did not change is kept (not fetched again), a removed issuer's refresh task stops."""
    issuer = f"{fake_issuer.base}/tenant"
    fake_issuer.documents[f"{OAUTH}/tenant"] = metadata(issuer)
    corp = {"name": "corp", "issuer": issuer}
    before = make_config([corp], [{"name": "s", "resource": "http://h/mcp"}])
    app = build_app(before, readiness=always_ready, refresh_interval=60)
    client = await serve(app)
    try:
        await eventually(lambda: ready(client))
        assert (await client.get(f"{PRM}/mcp")).status == 200
        assert (await client.get(f"{PRM}/other")).status == 404
        fetches = len(fake_issuer.requests)

        after = make_config([corp, dev_issuer], [{"name": "o", "resource": "http://h/other", "issuers": ["dev"]}])
        reconfigure(app, after, jwks_documents={"dev": {"keys": []}})
        assert (await client.get(f"{PRM}/other")).status == 200
        assert (await client.get(f"{PRM}/mcp")).status == 404
        assert (await client.get("/jwks/dev.json")).status == 200
        assert (await client.get(OAUTH)).status == 200  # corp's document kept: no fetch needed
        assert len(fake_issuer.requests) == fetches

        reconfigure(app, make_config([dev_issuer], [{"name": "o", "resource": "http://h/other"}]))
        assert (await client.get(f"{OAUTH}/tenant")).status == 404
        await asyncio.sleep(0)
        assert not [t for t in asyncio.all_tasks() if t.get_name() == "as-metadata:corp" and not t.done()]
    finally:
        await client.close()
