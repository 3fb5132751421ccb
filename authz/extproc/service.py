"""The Envoy ``ExternalProcessor`` gRPC service: list responses filtered to what the caller may use.

Per HTTP stream (Envoy's processing mode: request headers only; the renderer routes requests
that cannot be answered with a list past the filter):

1. request headers: the Check's handover is read from the forwarded metadata. A list request →
   ``mode_override`` asks for the response headers; anything else → nothing more is asked.
2. response headers of a list request: a 2xx ``application/json`` answer is asked for BUFFERED,
   ``text/event-stream`` STREAMED (``mode_override``; the filter needs ``allow_mode_override``).
3. response body: list results filtered (``lists``), events rewritten as they complete (``sse``).

Failures (no handover, a body that cannot be read, one too large, an internal error) follow
``ext_proc.failure``: closed → the list response becomes a JSON-RPC error with the request's id;
open → it passes as it is. Envoy's own failure settings cover an unreachable processor.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2

from authz import handover
from authz.config.runtime import Config, Server
from authz.contract import HANDOVER_KEY, HANDOVER_NAMESPACE
from authz.errors import Refusal
from authz.extproc.lists import Allowed, IdKey, ListParseError, dumps, error_message, id_key, rewrite_json
from authz.extproc.sse import SseRewriter
from authz.model import HttpRequest, McpCall, McpRequest
from authz.policy.rules import authorize

log = logging.getLogger("mcp_authz.extproc")
Mode = processing_mode_pb2.ProcessingMode
OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
SERVICE_NAME = "envoy.service.ext_proc.v3.ExternalProcessor"  # for grpc.health.v1

# No more messages for this stream: what an ordinary (non-list) request gets after its headers.
_DONE = Mode(
    request_header_mode=Mode.SEND,
    response_header_mode=Mode.SKIP,
    request_body_mode=Mode.NONE,
    response_body_mode=Mode.NONE,
    request_trailer_mode=Mode.SKIP,
    response_trailer_mode=Mode.SKIP,
)


def _body_mode(mode: int) -> processing_mode_pb2.ProcessingMode:
    mode_override: processing_mode_pb2.ProcessingMode = Mode(
        request_header_mode=Mode.SEND,
        response_header_mode=Mode.SEND,
        request_body_mode=Mode.NONE,
        response_body_mode=mode,
        request_trailer_mode=Mode.SKIP,
        response_trailer_mode=Mode.SKIP,
    )
    return mode_override


def _headers(message: pb.HttpHeaders) -> dict[str, str]:
    values: dict[str, str] = {}
    for h in message.headers.headers:
        key = h.key.lower()
        value = h.raw_value.decode("utf-8", "replace") if h.raw_value else h.value
        values[key] = f"{values[key]},{value}" if key in values else value
    return values


def _set(key: str, value: str) -> base_pb2.HeaderValueOption:
    header = base_pb2.HeaderValue(key=key, raw_value=value.encode())
    return base_pb2.HeaderValueOption(header=header, append_action=OVERWRITE)


def _scalar(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        number = value.number_value  # a JSON-RPC id: integral doubles were integers
        return int(number) if number.is_integer() else number
    return getattr(value, kind) if kind in ("string_value", "bool_value") else None


def forwarded_metadata(request: pb.ProcessingRequest) -> dict[str, Any]:
    """The forwarded ``ext_authz`` namespace, its ``mcp_authz`` scalars as plain values ({} if absent)."""
    found = request.metadata_context.filter_metadata
    if HANDOVER_NAMESPACE not in found:
        return {}
    ours = found[HANDOVER_NAMESPACE].fields
    if HANDOVER_KEY not in ours:
        return {HANDOVER_NAMESPACE: {}}
    fields = ours[HANDOVER_KEY].struct_value.fields
    return {HANDOVER_NAMESPACE: {HANDOVER_KEY: {k: _scalar(v) for k, v in fields.items()}}}


DecisionCache = dict[tuple[Any, ...], bool]
CACHE_SIZE = 4096


def policy_check(
    server: Server, handover: handover.Handover, request_headers: Mapping[str, str], cache: DecisionCache | None = None
) -> Allowed:
    """The Check's rule engine for one synthetic call of this caller (a list entry is a call it may make).

    Without CEL conditions a decision depends only on the caller's scopes, whether it is anonymous,
    and the call: those are remembered in ``cache`` (one per config, bounded).
    """
    policy = server.policy
    caller = handover.caller
    req = HttpRequest(
        method=request_headers.get(":method", "POST"),
        path=request_headers.get(":path", server.path),
        headers=request_headers,
        body=None,
        source_address=handover.source_address,
        source_principal=handover.source_principal,
    )

    def decide(call: McpCall) -> bool:
        mcp = McpRequest(http_method="POST", revision=handover.revision, calls=(call,), session_id=handover.session_id)
        try:
            authorize(policy, caller, mcp, req)
        except Refusal:
            return False
        return True

    if cache is None or (policy is not None and policy.uses_cel):
        return decide
    who = (server.name, caller.scopes, caller.anonymous)

    def allowed(call: McpCall) -> bool:
        key = (*who, call.method, call.name)
        known = cache.get(key)
        if known is None:
            if len(cache) >= CACHE_SIZE:
                cache.clear()
            known = cache[key] = decide(call)
        return known

    return allowed


class ListStream:
    """One HTTP stream's list requests and what has become of them."""

    def __init__(self, handover: handover.Handover, allowed: Allowed, max_body: int) -> None:
        self.handover = handover
        self.targets: dict[IdKey, str] = {}
        self.any_id: str | None = None  # header-only Check: the id is unknown, the single answer is the list
        for item in handover.lists:
            key = id_key(item.id)
            if key is not None:
                self.targets[key] = item.method
            elif handover.any_id:
                self.any_id = item.method
        self.allowed = allowed
        self.max_body = max_body
        self.answered: set[IdKey] = set()
        self.sse: SseRewriter | None = None
        self.buffered = bytearray()

    def json(self, body: bytes) -> bytes | None:
        if len(body) > self.max_body:
            raise ListParseError(f"list response over {self.max_body} bytes")
        new, _ = rewrite_json(body, self.targets, self.allowed, self.any_id)
        return new

    def event(self, data: bytes) -> tuple[bytes | None, bool]:
        new, answered = rewrite_json(data, self.targets, self.allowed, self.any_id)
        self.answered |= answered
        if self.any_id is not None:
            return new, bool(answered)
        return new, self.answered >= self.targets.keys()

    def error_body(self) -> bytes:
        return dumps(error_message(self.handover.first_id))


class Exchange:
    """The processor's side of one ext_proc stream (one HTTP request and its response)."""

    def __init__(self, config: Config, cache: DecisionCache | None = None) -> None:
        self.config = config
        self.cache = cache
        self.closed = config.ext_proc.failure == "closed"
        self.lists: ListStream | None = None
        self.mode = Mode.NONE
        self.dropping = False  # closed failure mid-stream: the rest of the body is withheld

    def answer(self, request: pb.ProcessingRequest) -> pb.ProcessingResponse:
        phase = request.WhichOneof("request")
        try:
            if phase == "request_headers":
                return self.request_headers(request)
            if phase == "response_headers":
                return self.response_headers(request)
            if phase == "response_body":
                return self.response_body(request.response_body)
        except Exception as exc:  # never crash a stream: fail as configured
            detail = f"{type(exc).__name__}: {exc}"
            log.warning("list filter failed", extra={"reason": "extproc_error", "detail": detail})
            return self.failed(phase)
        return self.passed(phase)

    # ---------------------------------------------------------------- phases

    def request_headers(self, request: pb.ProcessingRequest) -> pb.ProcessingResponse:
        try:
            given = handover.decode(forwarded_metadata(request))
        except handover.HandoverError as exc:
            log.warning("no caller for the list filter", extra={"reason": "extproc_no_handover", "detail": str(exc)})
            if self.closed:
                return self.immediate(None)
            return pb.ProcessingResponse(request_headers=pb.HeadersResponse(), mode_override=_DONE)
        server = self.config.servers.get(given.server)
        if server is None or not given.lists:
            return pb.ProcessingResponse(request_headers=pb.HeadersResponse(), mode_override=_DONE)
        headers = _headers(request.request_headers) if server.policy and server.policy.uses_cel else {}
        allowed = policy_check(server, given, headers, self.cache)
        self.lists = ListStream(given, allowed, self.config.ext_proc.max_body_bytes)
        return pb.ProcessingResponse(request_headers=pb.HeadersResponse(), mode_override=_body_mode(Mode.NONE))

    def response_headers(self, request: pb.ProcessingRequest) -> pb.ProcessingResponse:
        headers = _headers(request.response_headers)
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        ok = headers.get(":status", "").startswith("2")
        if self.lists is None or not ok or request.response_headers.end_of_stream:
            return pb.ProcessingResponse(response_headers=pb.HeadersResponse(), mode_override=_DONE)
        if content_type == "application/json":
            self.mode = Mode.BUFFERED
        elif content_type == "text/event-stream":
            self.mode = Mode.STREAMED
            lists = self.lists
            self.lists.sse = SseRewriter(lists.event, lists.max_body)
        else:
            return pb.ProcessingResponse(response_headers=pb.HeadersResponse(), mode_override=_DONE)
        common = pb.CommonResponse()
        if self.mode == Mode.STREAMED:  # events may change length: no content-length on a stream
            common.header_mutation.remove_headers.append("content-length")
        return pb.ProcessingResponse(
            response_headers=pb.HeadersResponse(response=common), mode_override=_body_mode(self.mode)
        )

    def response_body(self, body: pb.HttpBody) -> pb.ProcessingResponse:
        lists = self.lists
        if lists is None or self.dropping:
            return self.body(b"" if self.dropping else None)
        if lists.sse is None:  # BUFFERED JSON: the whole body at once
            new = lists.json(body.body)
            return self.body(new, content_length=new is not None)
        return self.body(lists.sse.feed(body.body, end=body.end_of_stream), streamed=True, original=body.body)

    # ---------------------------------------------------------------- answers

    def body(
        self, new: bytes | None, *, content_length: bool = False, streamed: bool = False, original: bytes = b""
    ) -> pb.ProcessingResponse:
        common = pb.CommonResponse()
        if streamed and new == original:
            new = None  # the chunk goes on as it came
        if new is not None:
            if new:
                common.body_mutation.body = new
            else:
                common.body_mutation.clear_body = True
            if content_length:
                common.header_mutation.set_headers.append(_set("content-length", str(len(new))))
        return pb.ProcessingResponse(response_body=pb.BodyResponse(response=common))

    def immediate(self, request_id: handover.RequestId) -> pb.ProcessingResponse:
        body = dumps(error_message(request_id))
        return pb.ProcessingResponse(
            immediate_response=pb.ImmediateResponse(
                status=http_status_pb2.HttpStatus(code=self.config.failure_status),
                headers=pb.HeaderMutation(set_headers=[_set("content-type", "application/json")]),
                body=body,
                details="mcp_authz_list_filter_failed",
            )
        )

    def passed(self, phase: str | None) -> pb.ProcessingResponse:
        """The message goes on unchanged."""
        if phase in ("request_headers", "response_headers"):
            return pb.ProcessingResponse(**{phase: pb.HeadersResponse()})
        if phase in ("request_body", "response_body"):
            return pb.ProcessingResponse(**{phase: pb.BodyResponse()})
        if phase in ("request_trailers", "response_trailers"):
            return pb.ProcessingResponse(**{phase: pb.TrailersResponse()})
        return pb.ProcessingResponse()

    def failed(self, phase: str | None) -> pb.ProcessingResponse:
        """Open: the message goes on (and nothing more is asked). Closed: the list answer becomes the
        JSON-RPC error; before anything is known about the request, the request is refused."""
        lists = self.lists
        if not self.closed:
            if phase in ("request_headers", "response_headers"):
                return pb.ProcessingResponse(**{phase: pb.HeadersResponse()}, mode_override=_DONE)
            return self.passed(phase)
        if phase != "response_body" or lists is None:
            return self.immediate(lists.handover.first_id if lists is not None else None)
        if self.mode == Mode.BUFFERED:
            return self.body(lists.error_body(), content_length=True)
        self.dropping = True  # the error event replaces the rest of the stream
        return self.body(b"data: " + lists.error_body() + b"\n\n")


class ExtProcService(pb_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    """``Process`` streams, one ``Exchange`` each, on the current config (read once per stream)."""

    def __init__(self, config: Callable[[], Config]) -> None:
        self._config = config
        self._cache: tuple[Config | None, DecisionCache] = (None, {})

    def _decisions(self, config: Config) -> DecisionCache:
        """Policy decisions remembered for this config (a reload starts afresh)."""
        if self._cache[0] is not config:
            self._cache = (config, {})
        return self._cache[1]

    def open(self) -> Exchange:
        """A new stream's exchange, on the config in force now (any gRPC front calls this per stream)."""
        config = self._config()
        return Exchange(config, self._decisions(config))

    async def Process(
        self, request_iterator: AsyncIterator[pb.ProcessingRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ProcessingResponse]:
        exchange = self.open()
        async for request in request_iterator:
            yield exchange.answer(request)


def add_to_server(service: ExtProcService, server: grpc.aio.Server) -> None:
    pb_grpc.add_ExternalProcessorServicer_to_server(service, server)
