"""CIMD fetcher: each SSRF and document rule refused, a good document accepted and cached."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from discovery.facade.cimd import CimdError, CimdFetcher, CimdPolicy, cache_seconds, check_url

TEST_POLICY = CimdPolicy(allow_http=True, allow_private=True, timeout=1.0, max_bytes=2048)


class _Docs:
    def __init__(self) -> None:
        self.hits = 0
        self.body: dict[str, Any] | bytes = {}
        self.delay = 0.0
        self.cache_control = "max-age=60"


@pytest.fixture
async def served() -> AsyncIterator[tuple[str, _Docs]]:
    docs = _Docs()

    async def handler(request: web.Request) -> web.StreamResponse:
        docs.hits += 1
        await asyncio.sleep(docs.delay)
        url = str(request.url)
        body = docs.body if isinstance(docs.body, bytes) else json.dumps({"client_id": url, **docs.body}).encode()
        return web.Response(body=body, content_type="application/json", headers={"Cache-Control": docs.cache_control})

    app = web.Application()
    app.router.add_get("/client.json", handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield f"http://127.0.0.1:{server.port}/client.json", docs
    finally:
        await server.close()


async def test_good_document_accepted_and_cached(served: tuple[str, _Docs]) -> None:
    url, docs = served
    docs.body = {"redirect_uris": ["http://127.0.0.1:9/cb"], "client_name": "Demo"}
    fetcher = CimdFetcher(TEST_POLICY)
    doc = await fetcher.client(url, "http://127.0.0.1:9/cb")
    assert doc["client_name"] == "Demo"
    await fetcher.client(url, "http://127.0.0.1:9/cb")
    assert docs.hits == 1


async def test_no_store_is_not_cached(served: tuple[str, _Docs]) -> None:
    url, docs = served
    docs.body, docs.cache_control = {"redirect_uris": ["http://127.0.0.1:9/cb"]}, "no-store"
    fetcher = CimdFetcher(TEST_POLICY)
    await fetcher.client(url)
    await fetcher.client(url)
    assert docs.hits == 2


async def test_private_address_refused_without_test_setting(served: tuple[str, _Docs]) -> None:
    url, docs = served
    docs.body = {"redirect_uris": ["http://127.0.0.1:9/cb"]}
    with pytest.raises(CimdError, match="private or loopback"):
        await CimdFetcher(CimdPolicy(allow_http=True)).client(url)
    with pytest.raises(CimdError, match="private or loopback"):
        await CimdFetcher(CimdPolicy(allow_http=True)).client(url.replace("127.0.0.1", "localhost"))
    assert docs.hits == 0


async def test_oversized_refused(served: tuple[str, _Docs]) -> None:
    url, docs = served
    docs.body = {"redirect_uris": ["http://127.0.0.1:9/cb"], "pad": "x" * 4096}
    with pytest.raises(CimdError, match="too large"):
        await CimdFetcher(TEST_POLICY).client(url)


async def test_slow_refused(served: tuple[str, _Docs]) -> None:
    url, docs = served
    docs.body, docs.delay = {"redirect_uris": ["http://127.0.0.1:9/cb"]}, 2.0
    with pytest.raises(CimdError, match="timed out"):
        await CimdFetcher(CimdPolicy(allow_http=True, allow_private=True, timeout=0.3)).client(url)


async def test_client_id_mismatch_refused(served: tuple[str, _Docs]) -> None:
    url, docs = served
    docs.body = json.dumps({"client_id": "https://evil.example/c.json", "redirect_uris": ["https://x/cb"]}).encode()
    with pytest.raises(CimdError, match="does not equal its URL"):
        await CimdFetcher(TEST_POLICY).client(url)


async def test_redirect_uri_not_in_document_refused(served: tuple[str, _Docs]) -> None:
    url, docs = served
    docs.body = {"redirect_uris": ["http://127.0.0.1:9/cb"]}
    with pytest.raises(CimdError, match="redirect_uri"):
        await CimdFetcher(TEST_POLICY).client(url, "http://127.0.0.1:9/other")


def test_https_only_and_url_shape() -> None:
    policy = CimdPolicy()
    for bad in ("http://example.com/c.json", "https://example.com/", "https://u:p@example.com/c", "https://10.0.0.1/c"):
        with pytest.raises(CimdError):
            check_url(bad, policy)
    check_url("https://client.example.com/c.json", policy)


def test_cache_control_clamped() -> None:
    policy = CimdPolicy(max_cache_seconds=100)
    assert cache_seconds("public, max-age=9999", policy) == 100
    assert cache_seconds("max-age=30", policy) == 30
    assert cache_seconds("no-cache", policy) == 0
    assert cache_seconds(None, policy) == 0
