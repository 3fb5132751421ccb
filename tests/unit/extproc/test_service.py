"""The ext_proc stream (authz/extproc/service.py): which phases ask for bodies, rewrites, failures."""

from __future__ import annotations

import json
from typing import Any

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from google.protobuf import struct_pb2
from support import make_config, policy, server_spec

from authz import contract, handover
from authz.config.runtime import Config
from authz.extproc.service import Exchange
from authz.model import Caller, McpCall, McpRequest
from authz.response import allow

Mode = processing_mode_pb2.ProcessingMode
RULES = policy({"name": "lists", "methods": ["*/list"]}, {"name": "read", "tools": ["search"], "scopes": ["r"]})
TOOLS = {"tools": [{"name": "search"}, {"name": "delete_repo"}], "nextCursor": "2"}


def config(failure: str = "closed") -> Config:
    return make_config(
        servers=[server_spec(policy=RULES, filter_lists=True)], ext_proc={"failure": failure, "max_body_bytes": 2048}
    )


def forwarded(*calls: McpCall) -> base_pb2.Metadata:
    """The metadata Envoy forwards: the Check's dynamic_metadata under the ext_authz namespace."""
    cfg = config()
    mcp = McpRequest(http_method="POST", revision="2026-07-28", calls=calls)
    who = Caller(subject="alice", claims={}, scopes=frozenset({"r"}))
    decision = allow(cfg.servers["mcp"], who, mcp, "lists")
    struct = struct_pb2.Struct()
    struct.update(decision.metadata or {})
    return base_pb2.Metadata(filter_metadata={contract.HANDOVER_NAMESPACE: struct})


def headers(**values: str) -> pb.HttpHeaders:
    entries = [base_pb2.HeaderValue(key=k.replace("_", "-"), raw_value=v.encode()) for k, v in values.items()]
    return pb.HttpHeaders(headers=base_pb2.HeaderMap(headers=entries))


def request_headers(md: base_pb2.Metadata | None) -> pb.ProcessingRequest:
    req = pb.ProcessingRequest(request_headers=headers(**{":method": "POST", ":path": "/mcp"}))
    if md is not None:
        req.metadata_context.CopyFrom(md)
    return req


def response_headers(content_type: str, status: str = "200") -> pb.ProcessingRequest:
    return pb.ProcessingRequest(response_headers=headers(**{":status": status, "content_type": content_type}))


def body(data: bytes, end: bool = True) -> pb.ProcessingRequest:
    return pb.ProcessingRequest(response_body=pb.HttpBody(body=data, end_of_stream=end))


def rpc(result: Any, request_id: Any = 1) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "result": result}).encode()


def test_an_ordinary_request_is_done_after_its_headers() -> None:
    exchange = Exchange(config())
    answer = exchange.answer(request_headers(forwarded(McpCall("tools/call", id=1, tool="search"))))
    assert answer.HasField("request_headers")
    assert answer.mode_override.response_header_mode == Mode.SKIP
    assert answer.mode_override.response_body_mode == Mode.NONE


@pytest.mark.parametrize(
    ("content_type", "mode"), [("application/json", Mode.BUFFERED), ("text/event-stream", Mode.STREAMED)]
)
def test_a_list_answer_asks_for_its_body(content_type: str, mode: int) -> None:
    exchange = Exchange(config())
    first = exchange.answer(request_headers(forwarded(McpCall("tools/list", id=1))))
    assert first.HasField("request_headers")
    assert first.mode_override.response_header_mode == Mode.SEND  # the answer's headers, please
    assert first.mode_override.response_body_mode == Mode.NONE
    second = exchange.answer(response_headers(content_type + "; charset=utf-8"))
    assert second.mode_override.response_body_mode == mode
    removed = list(second.response_headers.response.header_mutation.remove_headers)
    assert removed == (["content-length"] if mode == Mode.STREAMED else [])


@pytest.mark.parametrize(("content_type", "status"), [("text/plain", "200"), ("application/json", "400")])
def test_other_answers_to_a_list_request_are_left_alone(content_type: str, status: str) -> None:
    exchange = Exchange(config())
    exchange.answer(request_headers(forwarded(McpCall("tools/list", id=1))))
    answer = exchange.answer(response_headers(content_type, status))
    assert answer.mode_override.response_body_mode == Mode.NONE


def test_buffered_json_is_rewritten_with_its_length() -> None:
    exchange = Exchange(config())
    exchange.answer(request_headers(forwarded(McpCall("tools/list", id=1))))
    exchange.answer(response_headers("application/json"))
    answer = exchange.answer(body(rpc(TOOLS)))
    common = answer.response_body.response
    new = common.body_mutation.body
    assert json.loads(new)["result"] == {"tools": [{"name": "search"}], "nextCursor": "2"}
    (length,) = common.header_mutation.set_headers
    assert (length.header.key, length.header.raw_value) == ("content-length", str(len(new)).encode())


def test_streamed_events_are_rewritten_and_other_chunks_untouched() -> None:
    exchange = Exchange(config())
    exchange.answer(request_headers(forwarded(McpCall("tools/list", id=1))))
    exchange.answer(response_headers("text/event-stream"))
    note = b'data: {"jsonrpc":"2.0","method":"notifications/message","params":{}}\n\n'
    assert not exchange.answer(body(note, end=False)).response_body.response.HasField("body_mutation")
    listed = b"data: " + rpc(TOOLS) + b"\n\n"
    held = exchange.answer(body(listed[:20], end=False)).response_body.response.body_mutation
    assert held.clear_body  # the partial event waits
    rest = exchange.answer(body(listed[20:], end=True)).response_body.response.body_mutation.body
    assert b"delete_repo" not in rest and b"search" in rest


def test_closed_no_handover_is_an_immediate_error() -> None:
    answer = Exchange(config()).answer(request_headers(None))
    immediate = answer.immediate_response
    assert immediate.status.code == 503
    assert json.loads(immediate.body)["error"]["code"] == -32603


def test_open_no_handover_passes() -> None:
    answer = Exchange(config("open")).answer(request_headers(None))
    assert answer.HasField("request_headers") and answer.mode_override.response_header_mode == Mode.SKIP


@pytest.mark.parametrize("data", [b"{not json", b'{"jsonrpc":"2.0","id":"req-9","result":{"tools":{}}}', b"x" * 4096])
def test_closed_unreadable_json_becomes_the_error_with_the_id(data: bytes) -> None:
    exchange = Exchange(config())
    exchange.answer(request_headers(forwarded(McpCall("tools/list", id="req-9"))))
    exchange.answer(response_headers("application/json"))
    common = exchange.answer(body(data)).response_body.response
    assert json.loads(common.body_mutation.body) == {
        "jsonrpc": "2.0",
        "id": "req-9",
        "error": {"code": -32603, "message": "list filtering unavailable"},
    }


def test_open_unreadable_json_passes_unchanged() -> None:
    exchange = Exchange(config("open"))
    exchange.answer(request_headers(forwarded(McpCall("tools/list", id=1))))
    exchange.answer(response_headers("application/json"))
    assert not exchange.answer(body(b"{not json")).response_body.response.HasField("body_mutation")


def test_closed_stream_failure_sends_the_error_event_and_withholds_the_rest() -> None:
    exchange = Exchange(config())
    exchange.answer(request_headers(forwarded(McpCall("tools/list", id=3))))
    exchange.answer(response_headers("text/event-stream"))
    error = exchange.answer(body(b"data: {broken\n\n", end=False)).response_body.response.body_mutation.body
    assert error.startswith(b"data: ") and json.loads(error[6:])["id"] == 3
    later = exchange.answer(body(b"data: " + rpc(TOOLS, 3) + b"\n\n")).response_body.response.body_mutation
    assert later.clear_body


def test_the_decision_cache_keeps_callers_apart() -> None:
    cache: dict[Any, bool] = {}
    cfg = config()

    def listed(scopes: set[str]) -> list[str]:
        mcp = McpRequest(http_method="POST", revision="2026-07-28", calls=(McpCall("tools/list", id=1),))
        who = Caller(subject="s", claims={}, scopes=frozenset(scopes))
        struct = struct_pb2.Struct()
        struct.update(allow(cfg.servers["mcp"], who, mcp, "lists").metadata or {})
        exchange = Exchange(cfg, cache)
        exchange.answer(request_headers(base_pb2.Metadata(filter_metadata={contract.HANDOVER_NAMESPACE: struct})))
        exchange.answer(response_headers("application/json"))
        new = exchange.answer(body(rpc(TOOLS))).response_body.response.body_mutation.body
        return [t["name"] for t in json.loads(new or rpc(TOOLS))["result"]["tools"]]

    assert listed({"r"}) == ["search"]
    assert listed(set()) == []
    assert listed({"r"}) == ["search"]
    assert len(cache) == 4  # (scopes, tool) pairs


def test_closed_an_internal_error_before_anything_is_known_refuses_the_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*args: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(handover, "decode", broken)
    closed = Exchange(config()).answer(request_headers(forwarded(McpCall("tools/list", id=1))))
    assert closed.immediate_response.status.code == 503
    opened = Exchange(config("open")).answer(request_headers(forwarded(McpCall("tools/list", id=1))))
    assert opened.HasField("request_headers") and opened.mode_override.response_header_mode == Mode.SKIP
