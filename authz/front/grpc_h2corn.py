"""The gRPC front on h2corn (``listen.grpc_server: h2corn``): Envoy's ext_authz ``Check``, the list filter's
``ExternalProcessor`` stream and ``grpc.health.v1.Health/Check``, with no RPC framework.

h2corn (PyPI) is a Rust HTTP/2 server (hyper's ``h2``) with an ASGI interface that has response
trailers: HTTP/2 framing, HPACK, flow control, SETTINGS, PING, GOAWAY and the connection timeouts are
its job, in Rust threads. What gRPC adds on top is this module's job, and ``authz.front.grpc_wire``'s:

* routing by ``:path``; an unknown method → UNIMPLEMENTED; a request that is not a gRPC POST → HTTP 415
  (or 405), as gRPC's PROTOCOL-HTTP2.md says;
* length-prefixed messages, at most ``limit()`` bytes each (RESOURCE_EXHAUSTED, logged with the size,
  the limit and the config key that sets it); compressed messages refused (UNIMPLEMENTED with
  ``grpc-accept-encoding: identity``, or INTERNAL when no encoding was named);
* ``grpc-timeout`` → DEADLINE_EXCEEDED once it passes;
* every answer is response headers (``:status 200``, ``content-type: application/grpc``), the
  messages, then trailers with ``grpc-status`` and, on error, a percent-encoded ``grpc-message``.

It costs about a quarter of grpcio's CPU per Check (bench/grpc_stacks.py, bench/README.md). h2corn refuses
a peer that resets streams faster than its fixed "rapid reset" limit with GOAWAY (ENHANCE_YOUR_CALM), and
Envoy's ext_proc resets a stream whenever its HTTP stream ends first: under load that costs a filtered list
now and then (docs/grpc-server.md), which is why ``grpcio`` stays the default. One
process: h2corn's multi-worker mode forks the whole application, and the memory store, discovery
and admin servers live in this one (see docs/grpc-server.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from envoy.service.auth.v3 import external_auth_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2

from authz.check import Checker
from authz.config.runtime import DEFAULT_MAX_INFLIGHT
from authz.extproc.service import SERVICE_NAME as EXTPROC_SERVICE_NAME
from authz.extproc.service import ExtProcService
from authz.front.admission import OVERLOADED, Admission
from authz.front.ext_authz_messages import to_check_response, to_http_request
from authz.front.grpc_wire import GrpcError, MessageReader, Status, encode_message, frame, parse_timeout
from authz.front.observer import Observer, guarded

log = logging.getLogger("mcp_authz.grpc")

AUTHZ_SERVICE = "envoy.service.auth.v3.Authorization"
CHECK = f"/{AUTHZ_SERVICE}/Check"
PROCESS = f"/{EXTPROC_SERVICE_NAME}/Process"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
SEND_AFTER_CLOSE = "SendAfterCloseError"  # h2corn's error for a send on a stream the peer has reset
LIMIT_KEYS = "envoy.max_request_bytes / ext_proc.max_body_bytes"  # what sets message_limit()

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

_GRPC_HEADERS = [(b"content-type", b"application/grpc"), (b"grpc-accept-encoding", b"identity")]
_START = {"type": "http.response.start", "status": 200, "headers": _GRPC_HEADERS, "trailers": True}
_OK_TRAILERS = {"type": "http.response.trailers", "headers": [(b"grpc-status", b"0")], "more_trailers": False}


class _Disconnected(Exception):
    """The peer reset the stream or went away: nothing more can be sent."""


class _Call:
    """One gRPC call on one HTTP/2 stream: reads its messages, writes its answer in order."""

    __slots__ = ("_reader", "_receive", "_send", "done", "started")

    def __init__(self, receive: Receive, send: Send, reader: MessageReader) -> None:
        self._receive = receive
        self._send = send
        self._reader = reader
        self.started = False
        self.done = False  # trailers sent

    async def messages(self) -> Any:
        """Yield each request message as it completes (an async iterator of bytes)."""
        reader = self._reader
        while True:
            event = await self._receive()
            if event["type"] != "http.request":
                raise _Disconnected
            body = event.get("body", b"")
            if body:
                for message in reader.feed(body):
                    yield message
            if not event.get("more_body", False):
                reader.end()
                return

    async def unary(self) -> bytes:
        """The one request message of a unary call."""
        found: list[bytes] = []
        reader = self._reader
        while True:  # messages() inlined: no async generator on the hot path
            event = await self._receive()
            if event["type"] != "http.request":
                raise _Disconnected
            body = event.get("body")
            if body:
                found.extend(reader.feed(body))
                if len(found) > 1:
                    raise GrpcError(Status.INTERNAL, "more than one request message", "grpc_cardinality")
            if not event.get("more_body", False):
                reader.end()
                break
        if not found:
            raise GrpcError(Status.INTERNAL, "no request message", "grpc_cardinality")
        return found[0]

    async def reply(self, message: bytes, more: bool = False) -> None:
        if not self.started:
            self.started = True
            await self._send(_START)
        if more:
            await self._send({"type": "http.response.body", "body": frame(message), "more_body": True})
            return
        self.done = True  # a unary answer: the message ends the body, the OK trailers follow
        await self._send({"type": "http.response.body", "body": frame(message), "more_body": False})
        await self._send(_OK_TRAILERS)

    async def finish(self, status: Status = Status.OK, message: str = "") -> None:
        if self.done:
            return
        if not self.started:
            self.started = True
            await self._send(_START)
        self.done = True
        await self._send({"type": "http.response.body", "body": b"", "more_body": False})
        if status is Status.OK:
            await self._send(_OK_TRAILERS)
            return
        trailers = [(b"grpc-status", str(int(status)).encode("ascii"))]
        if message:
            trailers.append((b"grpc-message", encode_message(message)))
        await self._send({"type": "http.response.trailers", "headers": trailers, "more_trailers": False})


class GrpcFront:
    """The ASGI application: one instance per server, shared by every stream.

    ``checker`` and ``limit`` are read once per call, so a reload never tears one.
    """

    def __init__(
        self,
        checker: Callable[[], Checker],
        observe: Observer,
        limit: Callable[[], int],
        processor: ExtProcService | None = None,
        admission: Admission | None = None,
    ) -> None:
        self._checker = checker
        self._observe = guarded(observe)
        self._limit = limit
        self._admission = admission if admission is not None else Admission(DEFAULT_MAX_INFLIGHT)
        self._processor = processor
        self.health: dict[str, int] = {"": health_pb2.HealthCheckResponse.SERVING}
        self.health[AUTHZ_SERVICE] = health_pb2.HealthCheckResponse.SERVING
        if processor is not None:
            self.health[EXTPROC_SERVICE_NAME] = health_pb2.HealthCheckResponse.SERVING
        self._routes: dict[str, Callable[[_Call], Awaitable[None]]] = {CHECK: self._check, HEALTH_CHECK: self._health}
        if processor is not None:
            self._routes[PROCESS] = self._process

    def set_serving(self, serving: bool) -> None:
        """Every service SERVING or NOT_SERVING (the drain on shutdown)."""
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in self.health:
            self.health[name] = status

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan is off; anything else is not ours
            return
        content_type = b""
        encoding = b""
        timeout = b""
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value
            elif name == b"grpc-timeout":
                timeout = value
            elif name == b"grpc-encoding":
                encoding = value
        if scope["method"] != "POST" or not content_type.startswith(b"application/grpc"):
            await _http_refusal(send, 405 if scope["method"] != "POST" else 415)
            return
        path: str = scope["path"]
        call = _Call(receive, send, MessageReader(self._limit(), encoding))
        try:
            route = self._routes.get(path)
            if route is None:
                raise GrpcError(Status.UNIMPLEMENTED, f"unknown method {path}", "grpc_unknown_method")
            if not timeout:
                await route(call)
            else:
                deadline = asyncio.timeout(parse_timeout(timeout))
                try:
                    async with deadline:
                        await route(call)
                except TimeoutError:
                    if not deadline.expired():
                        raise
                    raise GrpcError(Status.DEADLINE_EXCEEDED, "deadline exceeded", "grpc_deadline") from None
        except GrpcError as exc:
            self._refused(path, exc)
            await _finish_quietly(call, exc.status, exc.message)
        except _Disconnected:
            return
        except Exception as exc:  # never crash the server; Envoy applies status_on_error (fail closed)
            if type(exc).__name__ == SEND_AFTER_CLOSE:  # the peer reset the stream (Envoy's ext_proc does)
                return
            log.exception("gRPC call failed", extra={"reason": "grpc_internal", "method": path})
            await _finish_quietly(call, Status.INTERNAL, type(exc).__name__)

    def _refused(self, path: str, exc: GrpcError) -> None:
        extra: dict[str, Any] = {"reason": exc.reason, "method": path, "detail": exc.message}
        if exc.status is Status.RESOURCE_EXHAUSTED:
            extra["config"] = LIMIT_KEYS
            log.warning("gRPC message refused: over the size limit (raise %s to allow it)", LIMIT_KEYS, extra=extra)
        elif exc.status is Status.DEADLINE_EXCEEDED:
            log.info("gRPC deadline exceeded", extra=extra)
        else:
            log.info("gRPC call refused", extra=extra)

    # ------------------------------------------------------------ the services

    async def _check(self, call: _Call) -> None:
        """One Check; beyond ``listen.max_inflight`` in progress, the OVERLOADED deny at once (a 503 with
        ``Retry-After`` that Envoy passes to the client as it is)."""
        admitted = self._admission.admit()  # counted from the call's arrival to its answer
        try:
            data = await call.unary()
            started = time.perf_counter_ns()
            try:
                check = external_auth_pb2.CheckRequest.FromString(data)
            except DecodeError:
                raise GrpcError(Status.INTERNAL, "invalid CheckRequest", "grpc_decode") from None
            req = to_http_request(check)
            decision = await self._checker().check(req) if admitted else OVERLOADED
            self._observe(req, decision, started)
            await call.reply(to_check_response(decision).SerializeToString())
        finally:
            if admitted:
                self._admission.done()

    async def _health(self, call: _Call) -> None:
        data = await call.unary()
        try:
            service = health_pb2.HealthCheckRequest.FromString(data).service
        except DecodeError:
            raise GrpcError(Status.INTERNAL, "invalid HealthCheckRequest", "grpc_decode") from None
        status = self.health.get(service)
        if status is None:
            raise GrpcError(Status.NOT_FOUND, f"unknown service {service!r}", "grpc_health_unknown")
        await call.reply(health_pb2.HealthCheckResponse(status=status).SerializeToString())

    async def _process(self, call: _Call) -> None:
        """The bidirectional ext_proc stream: one answer per message, as each arrives."""
        assert self._processor is not None
        exchange = self._processor.open()
        parse = external_processor_pb2.ProcessingRequest.FromString
        async for data in call.messages():
            try:
                request = parse(data)
            except DecodeError:
                raise GrpcError(Status.INTERNAL, "invalid ProcessingRequest", "grpc_decode") from None
            await call.reply(exchange.answer(request).SerializeToString(), more=True)
        await call.finish()


async def _finish_quietly(call: _Call, status: Status, message: str) -> None:
    with contextlib.suppress(Exception):
        await call.finish(status, message)


async def _http_refusal(send: Send, status: int) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


class H2cornServer:
    """A running h2corn server: ``stop(grace)`` drains it (NOT_SERVING, GOAWAY, in-flight calls finish)."""

    def __init__(self, server: Any, task: asyncio.Task[None], front: GrpcFront) -> None:
        self._server = server
        self._task = task
        self.front = front

    @property
    def addresses(self) -> tuple[str, ...]:
        addresses: tuple[str, ...] = self._server.addresses
        return addresses

    async def stop(self, grace: float | None = None) -> None:
        self.front.set_serving(False)
        self._server.shutdown()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(asyncio.shield(self._task), (grace or 0) + 5)


KEEPALIVE_IDLE_SECONDS = 7200.0  # longer than Envoy's 1 h cluster idle timeout: Envoy closes idle connections first


async def start_grpc_h2corn(address: str, front: GrpcFront, *, grace: float = 5.0) -> H2cornServer:
    """Serve ``front`` on ``address`` (host:port) with h2corn in this event loop.

    Raises OSError if the address cannot be bound.
    """
    import h2corn

    config = h2corn.Config(
        bind=(address,),
        grpc=True,
        http1=False,  # gRPC is HTTP/2 only
        lifespan="off",
        access_log=False,
        log_format="json",  # its own lines (the startup banner, errors) as JSON, like ours
        date_header=False,
        timeout_keep_alive=KEEPALIVE_IDLE_SECONDS,
        timeout_graceful_shutdown=grace,
        max_request_body_size=64 * 1024,  # non-gRPC requests (refused anyway); gRPC messages: MessageReader
        runtime_threads=1,  # bench/grpc_stacks.py: one Tokio thread costs less CPU per Check than two
        backlog=1024,
    )
    server = h2corn.Server(front, config)
    task = asyncio.create_task(server.serve())
    started = asyncio.ensure_future(server.wait_started())
    done, _ = await asyncio.wait({task, started}, return_when=asyncio.FIRST_COMPLETED)
    if started not in done:
        started.cancel()
        error = task.exception()
        raise OSError(f"cannot listen on {address}: {error}") from error
    await started
    return H2cornServer(server, task, front)
