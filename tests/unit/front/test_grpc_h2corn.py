"""The h2corn gRPC front on a real socket: grpcio as the client, and a raw ``h2`` client where the
frames themselves (headers, trailers, grpc-timeout) are what the test is about."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.events
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2, external_auth_pb2_grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc
from google.rpc import code_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support import dev_stack, tool_call

from authz.extproc.service import ExtProcService
from authz.front.grpc_h2corn import CHECK, GrpcFront, H2cornServer, start_grpc_h2corn
from authz.front.grpc_wire import frame
from authz.model import Decision, HttpRequest

LIMIT = 64 * 1024
Ctx = attribute_context_pb2.AttributeContext


def check_request(
    *, header_map: list[tuple[str, str]] | None = None, raw_body: bytes = b""
) -> external_auth_pb2.CheckRequest:
    http = Ctx.HttpRequest(method="POST", path="/mcp", raw_body=raw_body)
    for key, value in header_map or []:
        http.header_map.headers.append(base_pb2.HeaderValue(key=key, value=value))
    return external_auth_pb2.CheckRequest(attributes=Ctx(request=Ctx.Request(http=http)))


class SlowChecker:
    """Answers like the real checker after ``delay`` seconds."""

    def __init__(self, inner: Any, delay: float) -> None:
        self.inner = inner
        self.delay = delay
        self.config = inner.config

    async def check(self, req: HttpRequest) -> Decision:
        await asyncio.sleep(self.delay)
        decision: Decision = await self.inner.check(req)
        return decision


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[H2cornServer, Any, list[tuple[HttpRequest, Decision]]]]:
    stack = dev_stack(tmp_path)
    seen: list[tuple[HttpRequest, Decision]] = []
    holder: dict[str, Any] = {"checker": stack.checker}
    front = GrpcFront(
        lambda: holder["checker"],
        lambda req, d, _started: seen.append((req, d)),
        lambda: LIMIT,
        ExtProcService(lambda: stack.config),
    )
    server = await start_grpc_h2corn("127.0.0.1:0", front, grace=2)
    server.holder = holder  # type: ignore[attr-defined]
    server.stack = stack  # type: ignore[attr-defined]
    try:
        yield server, stack, seen
    finally:
        await server.stop(1)


def address(server: H2cornServer) -> str:
    return server.addresses[0]


# ---------------------------------------------------------------- through grpcio's client


async def test_check_allow_and_deny(served: Any) -> None:
    server, stack, seen = served
    async with grpc.aio.insecure_channel(address(server)) as channel:
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)
        token = stack.token(scopes=["tools:read"])
        ok = await stub.Check(
            check_request(
                header_map=[("authorization", f"Bearer {token}"), ("content-type", "application/json")],
                raw_body=json.dumps(tool_call("search")).encode(),
            )
        )
        assert ok.status.code == code_pb2.OK
        assert {h.header.key: h.header.value for h in ok.ok_response.headers}["x-mcp-subject"] == "alice"
        denied = await stub.Check(check_request(raw_body=json.dumps(tool_call("search")).encode()))
        assert denied.status.code == code_pb2.UNAUTHENTICATED
        assert denied.denied_response.status.code == 401
    assert [d.allowed for _, d in seen] == [True, False]


async def test_health(served: Any) -> None:
    server, _, _ = served
    async with grpc.aio.insecure_channel(address(server)) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", "envoy.service.auth.v3.Authorization", "envoy.service.ext_proc.v3.ExternalProcessor"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await health.Check(health_pb2.HealthCheckRequest(service="unknown.Service"))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        server.front.set_serving(False)
        reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING


async def test_unknown_method_is_unimplemented(served: Any) -> None:
    server, _, _ = served
    async with grpc.aio.insecure_channel(address(server)) as channel:
        call = channel.unary_unary("/envoy.service.auth.v3.Authorization/Nope")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(b"")
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_message_over_the_limit_is_resource_exhausted_and_logged(
    served: Any, caplog: pytest.LogCaptureFixture
) -> None:
    server, _, seen = served
    big = check_request(raw_body=b"x" * (LIMIT + 1))
    async with grpc.aio.insecure_channel(address(server)) as channel:
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)
        with caplog.at_level(logging.WARNING, logger="mcp_authz.grpc"), pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Check(big)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"vs. {LIMIT}" in (caught.value.details() or "")
        fitting = await stub.Check(check_request(raw_body=b"x" * (LIMIT - 1024)))  # the connection goes on
        assert fitting.denied_response.status.code == 401
    refusals = [r for r in caplog.records if getattr(r, "reason", "") == "grpc_message_too_large"]
    assert refusals and "envoy.max_request_bytes" in refusals[0].getMessage()
    assert len(seen) == 1  # the refused one never reached the Check


async def test_compressed_message_is_unimplemented(served: Any) -> None:
    server, _, seen = served
    async with grpc.aio.insecure_channel(address(server), compression=grpc.Compression.Gzip) as channel:
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Check(check_request(raw_body=b"y" * 4096))  # big enough for grpcio to compress
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert seen == []


async def test_ext_proc_stream_answers_each_message_before_the_next(served: Any) -> None:
    """A bidirectional stream: the answer to the first message arrives while the stream is open."""
    server, _, _ = served
    async with grpc.aio.insecure_channel(address(server)) as channel:
        stream = ep_grpc.ExternalProcessorStub(channel).Process()
        await stream.write(ep.ProcessingRequest(request_headers=ep.HttpHeaders()))
        first = await asyncio.wait_for(stream.read(), 5)
        assert first.WhichOneof("response") in ("request_headers", "immediate_response")
        await stream.write(ep.ProcessingRequest(response_headers=ep.HttpHeaders()))
        second = await asyncio.wait_for(stream.read(), 5)
        assert second.WhichOneof("response") == "response_headers"
        await stream.done_writing()
        assert await stream.read() == grpc.aio.EOF
        assert await stream.code() == grpc.StatusCode.OK


async def test_graceful_drain_finishes_the_call_in_flight(served: Any) -> None:
    server, stack, _ = served
    server.holder["checker"] = SlowChecker(stack.checker, 0.5)
    host, port = address(server).rsplit(":", 1)
    async with grpc.aio.insecure_channel(address(server)) as channel:
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)
        pending = asyncio.ensure_future(stub.Check(check_request(raw_body=b"{}")))
        await asyncio.sleep(0.2)
        await server.stop(2)
        reply = await asyncio.wait_for(pending, 5)
        assert reply.denied_response.status.code == 401  # answered, not cut off
    with pytest.raises(OSError):  # the listener is gone
        socket.create_connection((host, int(port)), timeout=1).close()


# ---------------------------------------------------------------- raw HTTP/2 frames


async def raw_call(
    addr: str, path: str, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> tuple[dict[bytes, bytes], bytes, dict[bytes, bytes]]:
    """One request with ``h2``: (response headers, DATA, trailers)."""
    host, port = addr.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    request = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", path.encode()), (b":authority", b"x")]
    request += headers if headers is not None else [(b"content-type", b"application/grpc"), (b"te", b"trailers")]
    conn.send_headers(1, request)
    conn.send_data(1, body, end_stream=True)
    writer.write(conn.data_to_send())
    got: list[dict[bytes, bytes]] = []
    data = bytearray()
    ended = False
    try:
        while not ended:
            chunk = await asyncio.wait_for(reader.read(65536), 5)
            if not chunk:
                break
            for event in conn.receive_data(chunk):
                if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                    got.append(dict(event.headers))  # type: ignore[arg-type]
                elif isinstance(event, h2.events.DataReceived):
                    data += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, 1)
                elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                    ended = True
            writer.write(conn.data_to_send())
    finally:
        writer.close()
    return got[0], bytes(data), got[1] if len(got) > 1 else {}


async def test_frames_of_an_answer_headers_message_trailers(served: Any) -> None:
    server, _, _ = served
    headers, data, trailers = await raw_call(address(server), CHECK, frame(check_request().SerializeToString()))
    assert headers[b":status"] == b"200"
    assert headers[b"content-type"] == b"application/grpc"
    assert b"grpc-status" not in headers
    length = int.from_bytes(data[1:5], "big")
    assert data[0] == 0 and len(data) == 5 + length
    assert external_auth_pb2.CheckResponse.FromString(data[5:]).denied_response.status.code == 401
    assert trailers == {b"grpc-status": b"0"}


async def test_grpc_timeout_is_honoured(served: Any) -> None:
    server, stack, _ = served
    server.holder["checker"] = SlowChecker(stack.checker, 2.0)
    timeout = [(b"content-type", b"application/grpc"), (b"te", b"trailers"), (b"grpc-timeout", b"100m")]
    started = asyncio.get_running_loop().time()
    _, data, trailers = await raw_call(address(server), CHECK, frame(check_request().SerializeToString()), timeout)
    assert asyncio.get_running_loop().time() - started < 1.5
    assert data == b""
    assert trailers[b"grpc-status"] == b"4"  # DEADLINE_EXCEEDED


async def test_error_message_is_percent_encoded(served: Any) -> None:
    server, _, _ = served
    request = health_pb2.HealthCheckRequest(service="é 100%").SerializeToString()
    _, _, trailers = await raw_call(address(server), "/grpc.health.v1.Health/Check", frame(request))
    assert trailers[b"grpc-status"] == b"5"
    assert trailers[b"grpc-message"] == b"unknown service '%C3%A9 100%25'"
    _, _, trailers = await raw_call(address(server), "/no.such.Service/Method", frame(b""))
    assert trailers == {b"grpc-status": b"12", b"grpc-message": b"unknown method /no.such.Service/Method"}


async def test_truncated_and_empty_unary_requests_are_internal(served: Any) -> None:
    server, _, _ = served
    _, _, trailers = await raw_call(address(server), CHECK, frame(b"abc")[:-1])
    assert trailers[b"grpc-status"] == b"13"
    _, _, trailers = await raw_call(address(server), CHECK, b"")
    assert trailers[b"grpc-status"] == b"13"
    _, _, trailers = await raw_call(address(server), CHECK, frame(b"") + frame(b""))
    assert trailers[b"grpc-status"] == b"13"


@pytest.mark.parametrize(
    ("headers", "status"),
    [([(b"content-type", b"application/json")], b"415"), ([], b"415")],
)
async def test_a_request_that_is_not_grpc_is_refused_over_http(
    served: Any, headers: list[tuple[bytes, bytes]], status: bytes
) -> None:
    server, _, _ = served
    got, _, trailers = await raw_call(address(server), CHECK, b"{}", headers)
    assert got[b":status"] == status
    assert trailers == {}
