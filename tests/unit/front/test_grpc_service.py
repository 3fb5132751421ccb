"""Envoy's CheckRequest ↔ our model (authz/server.py), and one real gRPC round trip."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import grpc
import pytest
from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2, external_auth_pb2_grpc
from google.rpc import code_pb2
from support import DevStack, dev_stack, rpc, tool_call

from authz.front.grpc_service import AuthorizationService, start_grpc, to_check_response, to_http_request
from authz.front.grpc_wire import message_limit
from authz.model import Decision, HttpRequest

Ctx = attribute_context_pb2.AttributeContext
OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


def check_request(
    *,
    headers: dict[str, str] | None = None,
    header_map: list[tuple[str, str | bytes]] | None = None,
    raw_body: bytes = b"",
    body: str = "",
    method: str = "POST",
    context: dict[str, str] | None = None,
    principal: str = "",
) -> external_auth_pb2.CheckRequest:
    http = Ctx.HttpRequest(method=method, path="/mcp?x=1", headers=headers or {}, raw_body=raw_body, body=body)
    for key, value in header_map or []:
        if isinstance(value, bytes):
            http.header_map.headers.append(base_pb2.HeaderValue(key=key, raw_value=value))
        else:
            http.header_map.headers.append(base_pb2.HeaderValue(key=key, value=value))
    source = Ctx.Peer(
        address=address_pb2.Address(socket_address=address_pb2.SocketAddress(address="10.0.0.7", port_value=5555)),
        principal=principal,
    )
    return external_auth_pb2.CheckRequest(
        attributes=Ctx(source=source, request=Ctx.Request(http=http), context_extensions=context or {})
    )


# ---------------------------------------------------------------- CheckRequest → HttpRequest


def test_headers_map_body_context_and_source() -> None:
    req = to_http_request(
        check_request(
            headers={"content-type": "application/json", "mcp-name": "a"},
            raw_body=b'{"jsonrpc":"2.0"}',
            context={"mcp_server": "github"},
            principal="spiffe://cluster/ns/a/sa/b",
        )
    )
    assert req == HttpRequest(
        method="POST",
        path="/mcp?x=1",
        headers={"content-type": "application/json", "mcp-name": "a"},
        body=b'{"jsonrpc":"2.0"}',
        source_address="10.0.0.7",
        source_principal="spiffe://cluster/ns/a/sa/b",
        context={"mcp_server": "github"},
        header_values={},
    )
    assert req.values("mcp-name") == ("a",)
    assert req.values("absent") == ()


def test_header_map_keeps_repeated_headers_apart() -> None:
    req = to_http_request(
        check_request(
            headers={"mcp-name": "ignored when header_map is present"},
            header_map=[("Mcp-Name", "a"), ("x-other", "1"), ("mcp-name", b"delete_repo"), (":path", "/mcp")],
        )
    )
    assert req.header_values["mcp-name"] == ("a", "delete_repo")
    assert req.values("mcp-name") == ("a", "delete_repo")
    assert req.headers["mcp-name"] == "a,delete_repo"
    assert req.headers["x-other"] == "1" and req.headers[":path"] == "/mcp"


def test_raw_value_wins_and_bad_utf8_is_replaced() -> None:
    req = to_http_request(check_request(header_map=[("x-a", b"caf\xc3\xa9"), ("x-b", b"\xff")]))
    assert req.headers == {"x-a": "café", "x-b": "\ufffd"}


@pytest.mark.parametrize(
    ("raw_body", "body", "expected"),
    [
        (b"\xff\x00raw", "", b"\xff\x00raw"),
        (b"raw", "text", b"raw"),
        (b"", '{"a": "é"}', '{"a": "é"}'.encode()),
        (b"", "", None),
    ],
)
def test_body_sources(raw_body: bytes, body: str, expected: bytes | None) -> None:
    assert to_http_request(check_request(raw_body=raw_body, body=body)).body == expected


# ---------------------------------------------------------------- Decision → CheckResponse


def test_allow_response() -> None:
    decision = Decision(
        allowed=True,
        status=200,
        reason="allowed",
        set_headers=(("x-mcp-subject", "alice"), ("x-mcp-scopes", "a b")),
        remove_headers=("authorization", "x-mcp-issuer"),
    )
    resp = to_check_response(decision)
    assert resp.status.code == code_pb2.OK
    assert resp.WhichOneof("http_response") == "ok_response"
    assert [(h.header.key, h.header.value, h.append_action) for h in resp.ok_response.headers] == [
        ("x-mcp-subject", "alice", OVERWRITE),
        ("x-mcp-scopes", "a b", OVERWRITE),
    ]
    assert list(resp.ok_response.headers_to_remove) == ["authorization", "x-mcp-issuer"]


@pytest.mark.parametrize(
    ("status", "grpc_code"),
    [
        (401, code_pb2.UNAUTHENTICATED),
        (403, code_pb2.PERMISSION_DENIED),
        (400, code_pb2.PERMISSION_DENIED),
        (503, code_pb2.PERMISSION_DENIED),
        (599, code_pb2.PERMISSION_DENIED),
    ],
)
def test_deny_response(status: int, grpc_code: int) -> None:
    decision = Decision(
        allowed=False,
        status=status,
        reason="x",
        deny_headers=(("content-type", "application/json"), ("www-authenticate", 'Bearer error="invalid_token"')),
        body=b'{"error": "\\u00e9"}',
    )
    resp = to_check_response(decision)
    assert resp.status.code == grpc_code
    assert resp.WhichOneof("http_response") == "denied_response"
    assert resp.denied_response.status.code == status
    assert [(h.header.key, h.header.value, h.append_action) for h in resp.denied_response.headers] == [
        ("content-type", "application/json", OVERWRITE),
        ("www-authenticate", 'Bearer error="invalid_token"', OVERWRITE),
    ]
    assert resp.denied_response.body == '{"error": "\\u00e9"}'


# ---------------------------------------------------------------- over gRPC


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_grpc_round_trip(tmp_path: Path) -> None:
    stack: DevStack = dev_stack(tmp_path)
    seen: list[tuple[HttpRequest, Decision]] = []
    service = AuthorizationService(lambda: stack.checker, lambda req, d, _started: seen.append((req, d)))
    address = f"127.0.0.1:{free_port()}"
    server, _ = await start_grpc(address, service)
    try:
        async with grpc.aio.insecure_channel(address) as channel:
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
            assert "authorization" in ok.ok_response.headers_to_remove

            duplicated = await stub.Check(
                check_request(
                    header_map=[
                        ("authorization", f"Bearer {token}"),
                        ("content-type", "application/json"),
                        ("mcp-protocol-version", "2026-07-28"),
                        ("mcp-method", "tools/call"),
                        ("mcp-name", "search"),
                        ("mcp-name", "delete_repo"),
                    ],
                    raw_body=json.dumps(tool_call("search", id=9)).encode(),
                )
            )
            assert duplicated.denied_response.status.code == 400
            assert json.loads(duplicated.denied_response.body)["error"]["code"] == -32020

            no_token = await stub.Check(check_request(raw_body=json.dumps(rpc("ping")).encode()))
            assert no_token.status.code == code_pb2.UNAUTHENTICATED
            assert no_token.denied_response.status.code == 401
    finally:
        await server.stop(None)
    assert [d.reason for _, d in seen] == ["allowed", "header_duplicated", "token_missing"]
    assert seen[1][0].header_values["mcp-name"] == ("search", "delete_repo")


async def test_grpcio_receive_limit_follows_the_config(tmp_path: Path) -> None:
    """A 5 MiB body, allowed by ``envoy.max_request_bytes: 16 MiB``, is checked (grpcio's own 4 MiB default
    refused it with RESOURCE_EXHAUSTED, which Envoy turns into a 503); over the derived limit it is refused."""
    stack: DevStack = dev_stack(tmp_path)
    service = AuthorizationService(lambda: stack.checker, lambda req, d, _started: None)
    address = f"127.0.0.1:{free_port()}"
    server, _ = await start_grpc(address, service, max_message_bytes=message_limit(16 * 1024 * 1024))
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = external_auth_pb2_grpc.AuthorizationStub(channel)
            checked = await stub.Check(check_request(raw_body=b"x" * (5 * 1024 * 1024)))
            assert checked.denied_response.status.code == 401  # a decision, not a transport error
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Check(check_request(raw_body=b"x" * (18 * 1024 * 1024)))
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        await server.stop(None)
