"""authz.front.http_service: Envoy's HTTP ext_authz protocol against raw sockets, and its rendered filter."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
import yaml
from support import RESOURCE, STATELESS, dev_stack, enveloped, policy, server_spec, tool_call

from authz import contract
from authz.check import Checker
from authz.config.load import parse_config
from authz.config.secrets import Secret
from authz.front import http_service
from authz.front.http_service import encode_decision, start_http
from authz.identity.devkey import ensure_key
from authz.model import Decision, HttpRequest
from authz.render import envoy as render

ENVOY = shutil.which("envoy") or str(Path(sys.executable).parent / "envoy")
# Skipped only off CI: in CI (CI=true, as .ci/run runs) a missing envoy fails the tests instead of hiding them.
needs_envoy = pytest.mark.skipif(
    not Path(ENVOY).is_file() and not os.environ.get("CI"), reason="envoy binary not installed (scripts/setup.sh)"
)

ALLOW = Decision(
    allowed=True,
    status=200,
    reason="allowed",
    set_headers=(("x-mcp-subject", "alice"), ("x-mcp-scopes", "a b")),
    remove_headers=("authorization", "x-mcp-issuer"),
)
DENY_401 = Decision(
    allowed=False,
    status=401,
    reason="token_missing",
    deny_headers=(("content-type", "application/json"), ("www-authenticate", 'Bearer resource_metadata="m"')),
    body=b'{"error":"unauthorized"}',
)


# ---------------------------------------------------------------- a stub Checker and a raw client


def stub_config(secret: Any = None) -> Any:
    """What the front reads of a config: the body bound and the shared secret."""
    return SimpleNamespace(
        envoy=SimpleNamespace(max_request_bytes=256), listen=SimpleNamespace(http_shared_secret=secret)
    )


@dataclass
class Stub:
    """Stands in for Checker: answers by path (``/deny`` → 401, ``/slow/<ms>`` waits), records requests."""

    seen: list[HttpRequest] = field(default_factory=list)
    decide: Callable[[HttpRequest], Decision] | None = None
    config: Any = field(default_factory=lambda: stub_config())

    async def check(self, req: HttpRequest) -> Decision:
        self.seen.append(req)
        if req.path.startswith("/slow/"):
            await asyncio.sleep(int(req.path.rsplit("/", 1)[1]) / 1000)
        if req.path == "/boom":
            raise RuntimeError("boom")
        if self.decide is not None:
            return self.decide(req)
        if req.path.startswith("/deny"):
            return DENY_401
        return Decision(allowed=True, status=200, reason="allowed", set_headers=(("x-path", req.path),))


@dataclass
class Front:
    port: int
    stub: Stub
    observed: list[tuple[HttpRequest, Decision]]

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)

    async def exchange(self, raw: bytes, responses: int = 1) -> list[Response]:
        reader, writer = await self.connect()
        writer.write(raw)
        try:
            return [await read_response(reader) for _ in range(responses)]
        finally:
            writer.close()


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)


async def read_response(reader: asyncio.StreamReader) -> Response:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = [(k.strip().lower(), v.strip()) for k, v in (line.split(":", 1) for line in lines[1:] if line)]
    length = int(dict(headers).get("content-length", "0"))
    body = await asyncio.wait_for(reader.readexactly(length), 5) if length else b""
    return Response(status, headers, body)


async def closed(reader: asyncio.StreamReader) -> bool:
    """True once the server closed the connection (EOF) without sending anything more."""
    return await asyncio.wait_for(reader.read(), 5) == b""


def request(
    path: str = "/mcp", method: str = "POST", body: bytes = b"", headers: dict[str, str] | None = None
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "host: mcp.test", f"content-length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@pytest.fixture
async def front() -> AsyncIterator[Front]:
    stub = Stub()
    observed: list[tuple[HttpRequest, Decision]] = []
    server = await start_http("127.0.0.1:0", lambda: cast(Checker, stub), lambda r, d, _: observed.append((r, d)))
    port = server.sockets[0].getsockname()[1]
    yield Front(port, stub, observed)
    server.close()
    await server.wait_closed()


# ---------------------------------------------------------------- allow, deny


async def test_allow_sets_identity_headers_and_removes_the_token(front: Front) -> None:
    front.stub.decide = lambda req: ALLOW
    [response] = await front.exchange(request(headers={"authorization": "Bearer t"}))
    assert response.status == 200
    assert response.body == b""
    assert response.header("x-mcp-subject") == "alice"
    assert response.header("x-mcp-scopes") == "a b"
    assert response.header("x-envoy-auth-headers-to-remove") == "authorization, x-mcp-issuer"


async def test_request_as_the_checker_sees_it(front: Front) -> None:
    body = json.dumps(tool_call("search")).encode()
    raw = request(
        "/mcp?x=1",
        body=body,
        headers={
            "Authorization": "Bearer t",
            "Mcp-Method": "tools/call",
            "x-mcp-authz-server": "alpha",
            "x-mcp-authz-source": "10.0.0.7",
            "x-mcp-authz-peer-dns-san": "client.test,other.test",
            "x-mcp-authz-peer-subject": "CN=client",
            "x-mcp-authz-unknown": "ignored",
            "x-thing": "a",
            "X-Thing": "b",
        },
    )
    [response] = await front.exchange(raw)
    assert response.status == 200
    [req] = front.stub.seen
    assert (req.method, req.path, req.body) == ("POST", "/mcp?x=1", body)
    assert req.headers["authorization"] == "Bearer t"
    assert req.headers["mcp-method"] == "tools/call"
    assert req.headers["x-thing"] == "a,b"  # as Envoy joins repeated headers
    assert (req.headers[":method"], req.headers[":path"], req.headers[":authority"]) == ("POST", "/mcp?x=1", "mcp.test")
    assert not [h for h in req.headers if h.startswith("x-mcp-authz-")]
    assert req.context == {"mcp_server": "alpha"}
    assert req.source_address == "10.0.0.7"
    assert req.source_principal == "client.test"  # no URI SAN: the first DNS SAN, like Envoy's gRPC principal
    assert [(r, d.allowed) for r, d in front.observed] == [(req, True)]


async def test_no_body_is_none(front: Front) -> None:
    await front.exchange(request(method="GET"))
    assert front.stub.seen[0].body is None
    assert front.stub.seen[0].context == {}


async def test_deny_status_headers_and_body(front: Front) -> None:
    [response] = await front.exchange(request("/deny"))
    assert response.status == 401
    assert response.header("www-authenticate") == 'Bearer resource_metadata="m"'
    assert response.header("content-type") == "application/json"
    assert response.body == b'{"error":"unauthorized"}'
    assert response.header("x-envoy-auth-headers-to-remove") is None


def test_a_deny_is_never_a_200() -> None:
    odd = Decision(allowed=False, status=200, reason="x")
    assert encode_decision(odd).startswith(b"HTTP/1.1 403 Forbidden\r\n")


@pytest.mark.parametrize("value", ["alice\r\nx-mcp-scopes: admin", "a\nb", "a\rb", "a\x00b", "a\x7fb"])
async def test_control_characters_never_reach_envoy(front: Front, value: str) -> None:
    front.stub.decide = lambda req: Decision(
        allowed=True, status=200, reason="allowed", set_headers=(("x-mcp-subject", value),)
    )
    reader, writer = await front.connect()
    writer.write(request() + request())
    first, second = await read_response(reader), await read_response(reader)
    writer.close()
    assert first.status == second.status == 500  # Envoy: status_on_error (fail closed)
    assert first.header("x-mcp-scopes") is None


def test_tab_and_utf8_are_header_values() -> None:
    decision = Decision(allowed=True, status=200, reason="allowed", set_headers=(("x-mcp-subject", "zoë\tx"),))
    assert "x-mcp-subject: zoë\tx\r\n".encode() in encode_decision(decision)


# ---------------------------------------------------------------- connections


async def test_keep_alive_and_pipelining_answer_in_order(front: Front) -> None:
    reader, writer = await front.connect()
    writer.write(request("/slow/80") + request("/slow/1") + request("/deny") + request("/fast"))
    responses = [await read_response(reader) for _ in range(4)]
    assert [r.header("x-path") for r in responses] == ["/slow/80", "/slow/1", None, "/fast"]
    assert [r.status for r in responses] == [200, 200, 401, 200]
    writer.write(request("/again"))  # still open
    assert (await read_response(reader)).header("x-path") == "/again"
    writer.close()


async def test_requests_split_across_reads(front: Front) -> None:
    reader, writer = await front.connect()
    raw = request("/split", body=b"0123456789")
    for i in range(len(raw)):
        writer.write(raw[i : i + 1])
        await writer.drain()
    response = await read_response(reader)
    writer.close()
    assert response.header("x-path") == "/split"
    assert front.stub.seen[0].body == b"0123456789"


async def test_connection_close_is_honoured(front: Front) -> None:
    reader, writer = await front.connect()
    writer.write(request(headers={"connection": "close"}))
    response = await read_response(reader)
    assert response.header("connection") == "close"
    assert await closed(reader)
    writer.close()


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64),  # a TLS ClientHello
        b"NOT HTTP AT ALL\r\n\r\n",
        b"POST /mcp HTTP/1.1\r\ncontent-length: nope\r\n\r\n",
        b"POST /mcp HTTP/1.1\r\nbad header\r\n\r\n",
        b"GET /mcp HTTP/1.1\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    ],
)
async def test_garbage_closes_the_connection_and_the_server_lives_on(front: Front, garbage: bytes) -> None:
    reader, writer = await front.connect()
    writer.write(garbage)
    assert await closed(reader)
    writer.close()
    [response] = await front.exchange(request("/after"))
    assert response.header("x-path") == "/after"


async def test_random_mutations_never_break_the_server(front: Front) -> None:
    """Valid requests with random bytes flipped, cut or repeated: any answer or a close, never a crash."""
    rng = random.Random(7)
    valid = request("/fuzz", body=b'{"jsonrpc":"2.0"}', headers={"authorization": "Bearer t"})
    for _ in range(150):
        data = bytearray(valid * rng.randint(1, 3))
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.3:
            data = data[: rng.randrange(len(data))]
        reader, writer = await front.connect()
        writer.write(bytes(data))
        writer.write_eof()
        with contextlib.suppress(ConnectionError):
            await asyncio.wait_for(reader.read(), 5)  # answers, then EOF (or just EOF)
        writer.close()
    [response] = await front.exchange(request("/after"))
    assert response.header("x-path") == "/after"


async def test_body_over_the_bound_is_413(front: Front) -> None:
    reader, writer = await front.connect()
    writer.write(request("/small", body=b"x" * 256) + request("/big", body=b"x" * 257))
    ok, too_large = await read_response(reader), await read_response(reader)
    assert (ok.status, too_large.status) == (200, 413)
    assert await closed(reader)
    writer.close()
    assert [r.path for r in front.stub.seen] == ["/small"]


async def test_headers_over_the_bound_are_431(front: Front) -> None:
    many = {f"x-h{i}": "v" for i in range(http_service.MAX_HEADERS + 1)}
    big = {"x-big": "v" * (http_service.MAX_HEADER_BYTES + 1)}
    for headers in (many, big):
        reader, writer = await front.connect()
        writer.write(request(headers=headers))
        assert (await read_response(reader)).status == 431
        assert await closed(reader)
        writer.close()
    assert front.stub.seen == []


async def test_a_failing_checker_drops_the_connection_only(front: Front) -> None:
    reader, writer = await front.connect()
    writer.write(request("/boom"))
    assert await closed(reader)
    writer.close()
    [response] = await front.exchange(request("/after"))
    assert response.status == 200


async def test_client_gone_during_a_check(front: Front) -> None:
    _, writer = await front.connect()
    writer.write(request("/slow/100") + request("/never"))
    await asyncio.sleep(0.02)
    writer.close()
    await asyncio.sleep(0.2)
    assert [r.path for r, _ in front.observed] == ["/slow/100"]  # finished and observed, not answered
    [response] = await front.exchange(request("/after"))
    assert response.header("x-path") == "/after"


async def test_many_pipelined_requests_are_all_answered(front: Front) -> None:
    count = http_service.MAX_PIPELINED * 3
    reader, writer = await front.connect()
    writer.write(b"".join(request(f"/slow/{i % 2}") for i in range(count)))
    responses = [await read_response(reader) for _ in range(count)]
    writer.close()
    assert [r.header("x-path") for r in responses] == [f"/slow/{i % 2}" for i in range(count)]


# ---------------------------------------------------------------- with the real Checker


async def test_real_checker_selects_the_server_from_the_envoy_header(tmp_path: Path) -> None:
    other = "https://other.test/mcp"
    stack = dev_stack(
        tmp_path,
        [
            server_spec("one", RESOURCE, scopes_supported=["tools:read"]),
            server_spec("two", other, policy=policy({"name": "none", "tools": ["nothing"]})),
        ],
    )
    server = await start_http("127.0.0.1:0", lambda: stack.checker, lambda req, dec, _started: None)
    port = server.sockets[0].getsockname()[1]
    front = Front(port, Stub(), [])
    body = json.dumps(enveloped(tool_call("search"))).encode()
    headers = {"content-type": "application/json", "mcp-protocol-version": STATELESS, "mcp-method": "tools/call"}
    headers["mcp-name"] = "search"
    try:
        token = stack.token(scopes=["tools:read"])
        allowed = request(
            body=body, headers={**headers, "authorization": f"Bearer {token}", "x-mcp-authz-server": "one"}
        )
        [ok] = await front.exchange(allowed)
        assert ok.status == 200
        assert ok.header("x-mcp-subject") == "alice"
        assert "authorization" in (ok.header("x-envoy-auth-headers-to-remove") or "")

        # No x-mcp-authz-server: the server is the one whose resource matches host and path (authz/routing.py)
        bearer = {**headers, "authorization": f"Bearer {token}"}
        [by_route] = await front.exchange(request(body=body, headers=bearer))
        assert by_route.status == 200 and by_route.header("x-mcp-subject") == "alice"
        [unknown] = await front.exchange(request(path="/elsewhere", body=body, headers=bearer))
        assert unknown.status == 403  # two servers, no header, no resource matches: server_unknown

        token_two = stack.token(audience=other, scopes=["tools:read"])
        two = {**headers, "authorization": f"Bearer {token_two}", "x-mcp-authz-server": "two"}
        [forbidden] = await front.exchange(request(body=body, headers=two))
        assert forbidden.status == 403
        assert "error" in json.loads(forbidden.body)  # a JSON-RPC error for the client

        [missing] = await front.exchange(request(body=body, headers={**headers, "x-mcp-authz-server": "one"}))
        assert missing.status == 401
        assert 'resource_metadata="' in (missing.header("www-authenticate") or "")
    finally:
        server.close()
        await server.wait_closed()


# ---------------------------------------------------------------- the rendered filter


def http_config(key: Path) -> Any:
    spec = {
        "listen": {"grpc": "127.0.0.1:9191", "http": "127.0.0.1:9193", "discovery": "127.0.0.1:9192"},
        "issuers": [{"name": "dev", "issuer": "http://127.0.0.1:8080/dev", "local_key_file": str(key)}],
        "servers": [
            {"name": "root", "resource": "http://127.0.0.1:8080/", "upstream": "127.0.0.1:8001"},
            {
                "name": "fast",
                "resource": "http://127.0.0.1:8080/tools/fast",
                "upstream": "localhost:8002",
                "header_only": True,
                "identity_headers": {"subject": "X-User"},
            },
        ],
        "envoy": {"listen": "127.0.0.1:8080", "authorizer": "http", "timeout_ms": 250},
    }
    return parse_config(yaml.safe_dump(spec), "<http>")


def test_rendered_http_filter(tmp_path: Path) -> None:
    config = http_config(ensure_key(tmp_path / "k.pem"))
    bootstrap = render.render_envoy(config)
    manager = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    authz = manager["http_filters"][0]["typed_config"]
    assert "grpc_service" not in authz
    service = authz["http_service"]
    assert service["server_uri"] == {"uri": "http://127.0.0.1:9193", "cluster": "mcp_authz", "timeout": "0.25s"}
    upstream = {p["exact"] for p in service["authorization_response"]["allowed_upstream_headers"]["patterns"]}
    assert upstream == {"x-user", "x-mcp-subject", "x-mcp-client-id", "x-mcp-scopes", "x-mcp-issuer"}
    client = {p["exact"] for p in service["authorization_response"]["allowed_client_headers"]["patterns"]}
    assert {"www-authenticate", "retry-after", "content-type"} <= client
    allowed = {p["exact"] for p in authz["allowed_headers"]["patterns"]}
    assert {"mcp-method", "mcp-name", "mcp-protocol-version", "mcp-session-id", "origin", "content-type"} <= allowed
    assert {"traceparent"} <= allowed
    assert not [h for h in allowed if h.startswith(contract.ENVOY_HEADER_PREFIX)]  # a client's copy never passes
    added = {h["key"] for h in service["authorization_request"]["headers_to_add"]}
    assert added == set(contract.AUTHORIZATION_REQUEST_HEADERS)  # Envoy sets (overwrites) every one the front trusts
    assert authz["failure_mode_allow"] is False
    assert authz["with_request_body"]["allow_partial_message"] is False
    routes = manager["route_config"]["virtual_hosts"][0]["routes"]
    servers = {r["name"]: r.get("metadata") for r in routes}
    assert servers["fast/header-only"] == {"filter_metadata": {"mcp_authz": {"server": "fast"}}}
    assert servers["root"] == {"filter_metadata": {"mcp_authz": {"server": "root"}}}
    assert servers["not-found"] is None
    [authz_cluster] = [c for c in bootstrap["static_resources"]["clusters"] if c["name"] == "mcp_authz"]
    options = authz_cluster["typed_extension_protocol_options"]
    assert "http_protocol_options" in next(iter(options.values()))["explicit_http_config"]  # HTTP/1.1


@needs_envoy
def test_rendered_http_bootstrap_passes_envoy_validate(tmp_path: Path) -> None:
    config = http_config(ensure_key(tmp_path / "k.pem"))
    path = tmp_path / "envoy.yaml"
    path.write_text(render.render_envoy_yaml(config), encoding="utf-8")
    run = subprocess.run([ENVOY, "--mode", "validate", "-c", str(path)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "deprecated" not in (run.stdout + run.stderr).lower()


def test_under_uvloop() -> None:
    """The authorizer runs on uvloop (``mcp-authz serve``): the same exchange there."""
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> list[Response]:
        stub = Stub()
        server = await start_http("127.0.0.1:0", lambda: cast(Checker, stub), lambda req, dec, _started: None)
        port = server.sockets[0].getsockname()[1]
        try:
            front = Front(port, stub, [])
            return await front.exchange(request("/a") + request("/deny") + request("/b"), responses=3)
        finally:
            server.close()
            await server.wait_closed()

    result: list[list[Response]] = []
    thread = threading.Thread(target=lambda: result.append(uvloop.run(scenario())))
    thread.start()
    thread.join(30)
    [responses] = result
    assert [r.status for r in responses] == [200, 401, 200]
    assert [r.header("x-path") for r in responses] == ["/a", None, "/b"]


# ---------------------------------------------------------------- listen.http_shared_secret (issue 21 item 10)


async def test_without_the_shared_secret_nothing_is_checked() -> None:
    """Beyond loopback only Envoy may ask: a request without ``x-mcp-authz-secret`` (or with a wrong one, or
    two) gets 403 and a closed connection before the Check sees it; the old front checked anything."""
    secret = "a-shared-secret-of-envoy"
    stub = Stub(config=stub_config(Secret(secret)))
    server = await start_http("127.0.0.1:0", lambda: cast(Checker, stub), lambda r, d, _: None)
    front = Front(server.sockets[0].getsockname()[1], stub, [])
    try:
        [ok] = await front.exchange(request("/a", headers={contract.SHARED_SECRET_HEADER: secret}))
        assert ok.status == 200 and [r.path for r in stub.seen] == ["/a"]
        assert contract.SHARED_SECRET_HEADER not in stub.seen[0].headers  # never passed on to the Check
        forged = {contract.SERVER_HEADER: "demo", contract.SOURCE_HEADER: "10.0.0.1"}
        for headers in (forged, {**forged, contract.SHARED_SECRET_HEADER: "a-shared-secret-of-envoX"}):
            reader, writer = await front.connect()
            writer.write(request("/forged", headers=headers))
            refused = await read_response(reader)
            assert refused.status == 403 and await closed(reader)
            writer.close()
        twice = request("/twice", headers={contract.SHARED_SECRET_HEADER: secret}).replace(
            b"\r\n\r\n", f"\r\n{contract.SHARED_SECRET_HEADER}: {secret}\r\n\r\n".encode(), 1
        )
        [doubled] = await front.exchange(twice)
        assert doubled.status == 403
        assert [r.path for r in stub.seen] == ["/a"]  # none of the refused requests reached the Check
    finally:
        server.close()
        await server.wait_closed()
