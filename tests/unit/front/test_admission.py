"""Admission control (authz/front/admission.py): beyond listen.max_inflight Checks in progress, each front
answers at once with a retryable refusal instead of queueing."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2, external_auth_pb2_grpc
from google.rpc import code_pb2
from support import DevStack, dev_stack, make_config, tool_call

from authz.front.admission import OVERLOADED, Admission
from authz.front.grpc_h2corn import GrpcFront, start_grpc_h2corn
from authz.front.grpc_service import AuthorizationService, start_grpc
from authz.front.http_service import start_http
from authz.model import Decision, HttpRequest

Ctx = attribute_context_pb2.AttributeContext


class HeldChecker:
    """The real Checker, except that a request for path ``/hold`` waits until ``release`` is set."""

    def __init__(self, stack: DevStack) -> None:
        self.inner = stack.checker
        self.config = stack.checker.config
        self.release = asyncio.Event()
        self.held = asyncio.Event()

    async def check(self, req: HttpRequest) -> Decision:
        if req.path == "/hold":
            self.held.set()
            await self.release.wait()
        decision: Decision = await self.inner.check(req)
        return decision


@pytest.fixture
def stack(tmp_path: Path) -> DevStack:
    return dev_stack(tmp_path)


def test_the_count_refuses_at_the_bound_and_frees_on_done() -> None:
    admission = Admission(2)
    assert admission.admit() and admission.admit()
    assert not admission.admit()
    admission.done()
    assert admission.admit()
    assert (admission.inflight, admission.refused) == (2, 1)
    with pytest.raises(ValueError, match="max_inflight"):
        Admission(0)


def test_the_refusal_is_a_retryable_503() -> None:
    assert (OVERLOADED.allowed, OVERLOADED.status, OVERLOADED.reason) == (False, 503, "overloaded")
    assert ("retry-after", "1") in OVERLOADED.deny_headers
    assert json.loads(OVERLOADED.body)["error"]["message"] == "Unavailable"


def test_max_inflight_is_a_listen_setting_with_a_default() -> None:
    assert make_config().listen.max_inflight == 256
    assert make_config(listen={"max_inflight": 8}).listen.max_inflight == 8


# ---------------------------------------------------------------- the HTTP front


async def _http(port: int, path: str, token: str) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = json.dumps(tool_call("search")).encode()
    head = f"POST {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\n"
    writer.write(f"{head}content-length: {len(body)}\r\n\r\n".encode() + body)
    try:
        raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        lines = raw.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if line)}
        answer = await reader.readexactly(int(headers.get("content-length", "0")))
        return int(lines[0].split()[1]), headers, answer
    finally:
        writer.close()


async def test_http_front_answers_503_at_once_when_saturated(stack: DevStack) -> None:
    checker = HeldChecker(stack)
    seen: list[Decision] = []
    admission = Admission(1)
    server = await start_http("127.0.0.1:0", lambda: checker, lambda r, d, _: seen.append(d), admission)  # type: ignore[arg-type, return-value]
    port = server.sockets[0].getsockname()[1]
    token = stack.token(scopes=["tools:read"])
    try:
        held = asyncio.create_task(_http(port, "/hold", token))
        await asyncio.wait_for(checker.held.wait(), 5)
        status, headers, body = await asyncio.wait_for(_http(port, "/mcp", token), 2)
        assert (status, headers.get("retry-after")) == (503, "1")
        assert json.loads(body)["error"]["message"] == "Unavailable"
        checker.release.set()
        assert (await held)[0] == 200
        assert (await _http(port, "/mcp", token))[0] == 200  # room again
    finally:
        server.close()
    assert [d.reason for d in seen] == ["overloaded", "allowed", "allowed"]  # refusals are observed too
    assert (admission.inflight, admission.refused) == (0, 1)


async def test_http_front_frees_the_count_of_a_connection_that_goes_away(stack: DevStack) -> None:
    checker = HeldChecker(stack)
    admission = Admission(1)
    server = await start_http("127.0.0.1:0", lambda: checker, lambda r, d, _: None, admission)  # type: ignore[arg-type, return-value]
    port = server.sockets[0].getsockname()[1]
    token = stack.token(scopes=["tools:read"])
    try:
        held = asyncio.create_task(_http(port, "/hold", token))
        await asyncio.wait_for(checker.held.wait(), 5)
        held.cancel()  # the client (Envoy, after its timeout) closes the connection
        with pytest.raises(asyncio.CancelledError):
            await held
        checker.release.set()
        for _ in range(50):
            await asyncio.sleep(0.01)
            if admission.inflight == 0:
                break
        assert admission.inflight == 0
        assert (await _http(port, "/mcp", token))[0] == 200
    finally:
        server.close()


# ---------------------------------------------------------------- the gRPC fronts


def _check_request(path: str, token: str) -> external_auth_pb2.CheckRequest:
    http = Ctx.HttpRequest(method="POST", path=path, raw_body=json.dumps(tool_call("search")).encode())
    http.headers.update({"authorization": f"Bearer {token}", "content-type": "application/json"})
    return external_auth_pb2.CheckRequest(attributes=Ctx(request=Ctx.Request(http=http)))


@pytest.fixture
async def h2corn(stack: DevStack) -> AsyncIterator[tuple[str, HeldChecker, Admission]]:
    checker = HeldChecker(stack)
    admission = Admission(1)
    front = GrpcFront(lambda: checker, lambda r, d, _: None, lambda: 1 << 20, None, admission)  # type: ignore[arg-type, return-value]
    server = await start_grpc_h2corn("127.0.0.1:0", front, grace=1)
    try:
        yield server.addresses[0], checker, admission
    finally:
        checker.release.set()
        await server.stop(1)


async def test_h2corn_front_denies_503_with_retry_after_when_saturated(
    stack: DevStack, h2corn: tuple[str, HeldChecker, Admission]
) -> None:
    address, checker, admission = h2corn
    token = stack.token(scopes=["tools:read"])
    async with grpc.aio.insecure_channel(address) as channel:
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)
        held = asyncio.ensure_future(stub.Check(_check_request("/hold", token), timeout=5))
        await asyncio.wait_for(checker.held.wait(), 5)
        refused = await stub.Check(_check_request("/mcp", token), timeout=2)
        assert refused.status.code == code_pb2.PERMISSION_DENIED
        assert refused.denied_response.status.code == 503
        assert {h.header.key: h.header.value for h in refused.denied_response.headers}["retry-after"] == "1"
        checker.release.set()
        assert (await held).status.code == code_pb2.OK
        assert (await stub.Check(_check_request("/mcp", token), timeout=2)).status.code == code_pb2.OK
    assert (admission.inflight, admission.refused) == (0, 1)


def _free_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


async def test_grpcio_front_denies_503_with_retry_after_when_saturated(stack: DevStack) -> None:
    checker = HeldChecker(stack)
    address = _free_address()
    admission = Admission(1)
    service = AuthorizationService(lambda: checker, lambda r, d, _: None, admission)  # type: ignore[arg-type, return-value]
    server, _ = await start_grpc(address, service)
    token = stack.token(scopes=["tools:read"])
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = external_auth_pb2_grpc.AuthorizationStub(channel)
            held = asyncio.ensure_future(stub.Check(_check_request("/hold", token), timeout=5))
            await asyncio.wait_for(checker.held.wait(), 5)
            refused = await stub.Check(_check_request("/mcp", token), timeout=2)
            assert refused.denied_response.status.code == 503
            assert {h.header.key: h.header.value for h in refused.denied_response.headers}["retry-after"] == "1"
            checker.release.set()
            answered: Any = await held
            assert answered.status.code == code_pb2.OK
    finally:
        checker.release.set()
        await server.stop(None)
    assert (admission.inflight, admission.refused) == (0, 1)
