"""Every front answers the decision when the decision observer raises, and logs it (authz/front/observer.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2, external_auth_pb2_grpc
from google.rpc import code_pb2
from support import DevStack, dev_stack, tool_call

from authz.front.grpc_h2corn import GrpcFront, start_grpc_h2corn
from authz.front.grpc_service import AuthorizationService, start_grpc
from authz.front.http_service import start_http
from authz.model import Decision, HttpRequest

Ctx = attribute_context_pb2.AttributeContext


def broken_observer(req: HttpRequest, decision: Decision, started: int) -> None:
    raise RuntimeError("audit sink exploded")


def _body() -> bytes:
    return json.dumps(tool_call("search")).encode()


async def _grpc_check(address: str, token: str) -> bool:
    http = Ctx.HttpRequest(method="POST", path="/mcp", raw_body=_body())
    http.headers.update({"authorization": f"Bearer {token}", "content-type": "application/json"})
    request = external_auth_pb2.CheckRequest(attributes=Ctx(request=Ctx.Request(http=http)))
    async with grpc.aio.insecure_channel(address) as channel:
        answer = await external_auth_pb2_grpc.AuthorizationStub(channel).Check(request, timeout=5)
    return bool(answer.status.code == code_pb2.OK)


async def grpcio_front(stack: DevStack, token: str) -> bool:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    server, _ = await start_grpc(address, AuthorizationService(lambda: stack.checker, broken_observer))
    try:
        return await _grpc_check(address, token)
    finally:
        await server.stop(None)


async def h2corn_front(stack: DevStack, token: str) -> bool:
    front = GrpcFront(lambda: stack.checker, broken_observer, lambda: 1 << 20)
    server = await start_grpc_h2corn("127.0.0.1:0", front, grace=1)
    try:
        return await _grpc_check(server.addresses[0], token)
    finally:
        await server.stop(1)


async def http_front(stack: DevStack, token: str) -> bool:
    server = await start_http("127.0.0.1:0", lambda: stack.checker, broken_observer)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        body = _body()
        head = f"POST /mcp HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\n"
        writer.write(f"{head}content-length: {len(body)}\r\n\r\n".encode() + body)
        status = (await asyncio.wait_for(reader.readline(), 5)).split()[1]
        writer.close()
        return status == b"200"
    finally:
        server.close()


@pytest.mark.parametrize("front", [grpcio_front, h2corn_front, http_front], ids=["grpcio", "h2corn", "http"])
async def test_the_decision_is_answered_when_the_observer_raises(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    front: Callable[[DevStack, str], Awaitable[bool]],
) -> None:
    stack = dev_stack(tmp_path)
    with caplog.at_level(logging.ERROR):
        allowed = await front(stack, stack.token(scopes=["tools:read"]))
    assert allowed
    failed = [r for r in caplog.records if r.getMessage() == "decision observer failed"]
    assert [getattr(r, "reason", None) for r in failed] == ["observer_failed"]
