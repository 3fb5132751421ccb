"""Envoy's HTTP ext_authz protocol (``http_service``; Istio ``envoyExtAuthzHttp``): the fast front end.

The same Check as the gRPC service (``authz.front.grpc_service``), on a plain HTTP/1.1 connection: an asyncio
``Protocol`` feeding ``httptools``, no framework. It costs a few tens of µs per Check where grpcio
costs ~300 µs (see bench/README.md).

The contract with Envoy (what ``authz.render.envoy`` renders when ``envoy.authorizer: http``)
------------------------------------------------------------------------------------------------

Request (Envoy → authorizer). Envoy sends the client request's method and path, ``host``,
``authorization``, the headers listed in ``authorization_request.allowed_headers``
(``mcp-method``, ``mcp-name``, ``mcp-protocol-version``, ``mcp-session-id``, ``origin``,
``content-type``, ``accept``, ``traceparent``), and the body when ``with_request_body`` is set
(``content-length`` is the body's length; no body means ``content-length: 0``). A header the
client sent several times arrives once, its values joined by ``,`` (the MCP parser then sees a
value that disagrees with the body, not a duplicate). The front adds ``:method``, ``:path`` and
``:authority`` to the headers, as the gRPC CheckRequest has them.

Which MCP server (the HTTP twin of the gRPC ``mcp_server`` context extension). Envoy sends
``check_settings.context_extensions`` over gRPC only; the HTTP client copies headers and the body
and nothing else. So each MCP route carries ``metadata.filter_metadata.mcp_authz.server: <name>``
and the filter adds ``x-mcp-authz-server: %METADATA(ROUTE:mcp_authz:server)%`` to every
authorization request (``authorization_request.headers_to_add``). Likewise
``x-mcp-authz-source`` (the downstream address) and ``x-mcp-authz-peer-{uri-san,dns-san,subject}``
(the mTLS peer; absent without TLS) fill ``source_address`` / ``source_principal``. These
``x-mcp-authz-*`` headers are trusted because only Envoy can put them there:

* ``headers_to_add`` overwrites a header of the same name;
* a client's own ``x-mcp-authz-*`` headers never reach the authorizer, because
  ``allowed_headers`` never lists them (do not add a pattern such as ``prefix: x-`` to it);
* a route without the metadata (none exists with ext_authz enabled) sends no server header, and
  a config with several servers then denies (``server_unknown``).

The listen address must be reachable by Envoy only: whoever can reach it can make up these
headers and get decisions. Beyond loopback the config requires ``listen.http_shared_secret``
(Envoy sends it in ``x-mcp-authz-secret``, from its environment; a request without the right
value gets ``403`` and the connection closes, compared in constant time before anything else is
looked at) or ``listen.http_mesh_mtls`` (a mesh sidecar enforces mTLS and admits only Envoys).

Response (authorizer → Envoy).

* Allow: ``200`` with no body. The identity headers (``x-mcp-subject``...) are set on the
  upstream request, overwriting the client's copies, because the renderer lists their names in
  ``allowed_upstream_headers``. The client's ``Authorization`` and any identity header without a
  value are removed upstream through ``x-envoy-auth-headers-to-remove: authorization, ...``
  (Envoy's HTTP twin of ``OkHttpResponse.headers_to_remove``, which is gRPC-only; checked with
  Envoy 1.40 in tests/e2e/test_httpfront_envoy.py).
* Deny: the decision's status, headers and body. Envoy passes the status and body to the client,
  with the headers listed in ``allowed_client_headers`` (``content-type``, ``www-authenticate``,
  ``retry-after``). A ``5xx`` counts as an authorizer *error* in Envoy: the client gets
  ``status_on_error`` (503) without our body. A deny never goes out as ``200``.

Connections: keep-alive; pipelined requests are answered in order (one Check at a time per
connection; Envoy's pool opens more connections for concurrency). Past ``listen.max_inflight``
requests in progress (all connections together, counted from arrival), a request is answered
``503`` with ``Retry-After: 1`` without a Check (``authz.front.admission``). A request whose headers exceed
``MAX_HEADER_BYTES`` / ``MAX_HEADERS`` gets ``431``, a body over ``envoy.max_request_bytes``
``413``, both then close. Anything httptools cannot parse closes the connection without an answer
(Envoy then applies ``status_on_error``). An identity value that cannot be a header value (CR, LF
or another control character) is never written: the Check answers ``500``, which Envoy turns
into a 503 for the client (fail closed).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time
from collections import deque
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, cast

import httptools

from authz.check import Checker
from authz.config.runtime import DEFAULT_MAX_INFLIGHT, HostPort
from authz.contract import (
    ENVOY_HEADER_PREFIX,
    MCP_METADATA_HEADER,
    PEER_HEADERS,
    SERVER_CONTEXT_KEY,
    SERVER_HEADER,
    SHARED_SECRET_HEADER,
    SOURCE_HEADER,
)
from authz.front.admission import OVERLOADED, Admission
from authz.front.observer import Observer, guarded
from authz.model import Decision, HttpRequest

log = logging.getLogger("mcp_authz.httpfront")

# The x-mcp-authz-* names shared with the renderer are in authz.contract.
REMOVE_HEADER = "x-envoy-auth-headers-to-remove"  # Envoy's own: headers to remove upstream on allow

MAX_HEADER_BYTES = 96 * 1024  # URL + header names and values
MAX_HEADERS = 200
MAX_PIPELINED = 32  # requests queued on one connection before it stops reading
DEFAULT_MAX_BODY = 1_048_576

_ENVOY_PREFIX = ENVOY_HEADER_PREFIX.encode()
_SECRET = SHARED_SECRET_HEADER.encode()
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _envoy_mcp(raw: bytes) -> dict[str, Any] | None:
    """``x-mcp-authz-mcp``: Envoy's MCP filter metadata as JSON (``authz.mcp_metadata``). Empty or ``-``: the
    route sends none. Anything but a JSON object is kept as a failed parse, which the Check refuses."""
    if raw in (b"", b"-"):
        return None
    try:
        fields = json.loads(raw)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        return {"status": "x-mcp-authz-mcp unreadable"}
    return fields if isinstance(fields, dict) else {"status": "x-mcp-authz-mcp not an object"}


def _status_line(code: int) -> bytes:
    try:
        phrase = HTTPStatus(code).phrase
    except ValueError:
        phrase = "Unknown"
    return f"HTTP/1.1 {code} {phrase}\r\n".encode("ascii")


_STATUS_LINES = {code: _status_line(code) for code in range(100, 600)}
_ERROR_500 = _STATUS_LINES[500] + b"content-length: 0\r\n\r\n"
_CLOSE = b"connection: close\r\n"


class _Reject(Exception):
    """Raised from a parser callback: answer ``status`` and close."""

    def __init__(self, status: int) -> None:
        self.status = status


# ---------------------------------------------------------------- decisions → HTTP responses


def _header_lines(headers: tuple[tuple[str, str], ...]) -> str:
    if _BAD_VALUE.search("".join([name + value for name, value in headers])):
        raise ValueError("a header name or value holds a control character")
    return "".join([f"{name}: {value}\r\n" for name, value in headers])


def encode_decision(decision: Decision, keep_alive: bool = True) -> bytes:
    """The authorization response Envoy expects for ``decision`` (see the module docstring).

    Raises ValueError if a header would hold a control character (the caller answers 500).
    """
    close = b"" if keep_alive else _CLOSE
    if decision.allowed:
        head = _header_lines(decision.set_headers)
        if decision.remove_headers:
            names = ", ".join(decision.remove_headers)
            if _BAD_VALUE.search(names):
                raise ValueError("a header name holds a control character")
            head += f"{REMOVE_HEADER}: {names}\r\n"
        return b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n" + close + head.encode() + b"\r\n"
    status = decision.status if 300 <= decision.status <= 599 else 403  # a deny is never a 200
    head = _header_lines(decision.deny_headers)
    body = decision.body
    return (
        _STATUS_LINES[status]
        + f"content-length: {len(body)}\r\n".encode("ascii")
        + close
        + head.encode()
        + b"\r\n"
        + body
    )


def _error_response(status: int) -> bytes:
    return _STATUS_LINES[status] + b"content-length: 0\r\n" + _CLOSE + b"\r\n"


# ---------------------------------------------------------------- the protocol


class HttpFront:
    """What every connection shares: the current Checker (read once per request), the observer and the
    admission count."""

    __slots__ = ("admission", "checker", "observe")

    def __init__(self, checker: Callable[[], Checker], observe: Observer, admission: Admission) -> None:
        self.checker = checker
        self.observe = guarded(observe)
        self.admission = admission

    def max_body(self) -> int:
        return self.checker().config.envoy.max_request_bytes

    def from_envoy(self, presented: bytes | None) -> bool:
        """Whether a request carries ``listen.http_shared_secret`` (always true when none is set);
        constant time in the value."""
        secret = self.checker().config.listen.http_shared_secret
        if secret is None:
            return True
        return presented is not None and hmac.compare_digest(presented, secret.reveal().encode())


class ExtAuthzHttpProtocol(asyncio.Protocol):
    """One connection from Envoy: parse requests, Check them in order, answer each.

    One worker task per connection checks the queued requests in order; between requests it
    waits on a future (waking it costs ~1 µs where a task per request costs ~5 µs). Checks run
    inside that task, so whatever they await (a JWKS fetch with aiohttp) has a current task.
    """

    def __init__(self, front: HttpFront) -> None:
        self._front = front
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._queue: deque[tuple[HttpRequest, bool, bool, bool]] = deque()  # request, keep-alive, from Envoy, admitted
        self._worker: asyncio.Task[None] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self._fail_status = 0  # answer this, after the queued requests, then close
        # the request being parsed
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._body: list[bytes] = []
        self._body_bytes = 0
        self._max_body = DEFAULT_MAX_BODY
        self._secret: bytes | None = None  # the x-mcp-authz-secret header as sent

    # ------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports are no subclasses
        self._worker = asyncio.get_running_loop().create_task(self._serve())

    def connection_lost(self, exc: Exception | None) -> None:
        """An idle worker ends now; a Check under way finishes (a JWKS fetch it started may serve
        other Checks too), is observed, and its answer dropped."""
        self._transport = None
        self._drop_queue()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.cancel()
        self._worker = None

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._abort()
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _Reject):
                self._fail(exc.__context__.status)
            else:
                self._abort()

    # ------------------------------------------------------------ httptools callbacks

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._header_bytes = 0
        self._body = []
        self._body_bytes = 0
        self._max_body = self._front.max_body()
        self._secret = None

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._header_bytes += len(url)
        if self._header_bytes > MAX_HEADER_BYTES:
            raise _Reject(431)

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == _SECRET:
            self._secret = value if self._secret is None else b""  # sent twice: no match
            return
        self._headers.append((name, value))
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > MAX_HEADER_BYTES or len(self._headers) > MAX_HEADERS:
            raise _Reject(431)

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes > self._max_body:
            raise _Reject(413)
        self._body.append(body)

    def on_message_complete(self) -> None:
        from_envoy = self._front.from_envoy(self._secret)
        admitted = self._front.admission.admit()
        self._queue.append((self._request(), bool(self._parser.should_keep_alive()), from_envoy, admitted))
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)
        elif len(self._queue) >= MAX_PIPELINED and self._transport is not None and not self._paused:
            self._paused = True
            self._transport.pause_reading()

    # ------------------------------------------------------------ requests and answers

    def _request(self) -> HttpRequest:
        headers: dict[str, str] = {}
        context: dict[str, str] = {}
        source = ""
        peers: dict[str, str] = {}
        envoy_mcp: dict[str, Any] | None = None
        for raw_name, raw_value in self._headers:
            name = raw_name.decode("latin-1").lower()
            value = raw_value.decode("utf-8", "replace")
            if name.startswith(ENVOY_HEADER_PREFIX):
                if name == SERVER_HEADER:
                    context[SERVER_CONTEXT_KEY] = value
                elif name == SOURCE_HEADER:
                    source = value
                elif name in PEER_HEADERS:
                    peers[name] = value
                elif name == MCP_METADATA_HEADER:
                    envoy_mcp = _envoy_mcp(raw_value)
                continue
            previous = headers.get(name)
            headers[name] = value if previous is None else f"{previous},{value}"
        principal = ""
        if peers:  # like Envoy's source.principal: URI SAN, else DNS SAN, else subject
            for name in PEER_HEADERS:
                value = peers.get(name, "")
                if value and value != "-":
                    principal = value.split(",", 1)[0] if name != PEER_HEADERS[2] else value
                    break
        method = self._parser.get_method().decode("ascii", "replace")
        path = self._url.decode("utf-8", "replace")
        # The pseudo-headers Envoy's gRPC CheckRequest carries, so CEL's request.headers reads alike.
        headers[":method"] = method
        headers[":path"] = path
        if "host" in headers:
            headers[":authority"] = headers["host"]
        return HttpRequest(
            method=method,
            path=path,
            headers=headers,
            body=b"".join(self._body) if self._body else None,
            source_address=source,
            source_principal=principal,
            context=context,
            envoy_mcp=envoy_mcp,
        )

    async def _serve(self) -> None:
        """The connection's worker: Check queued requests one at a time, answer in order (pipelining)."""
        front = self._front
        queue = self._queue
        loop = asyncio.get_running_loop()
        try:
            while True:
                if not queue:
                    if self._fail_status:
                        self._write_error(self._fail_status)
                        return
                    self._waiter = loop.create_future()
                    await self._waiter
                    continue
                request, keep_alive, from_envoy, admitted = queue.popleft()
                try:
                    if not from_envoy:
                        log.warning(
                            "HTTP authorization request without the shared secret refused",
                            extra={"reason": "shared_secret_mismatch", "peer": self._peer()},
                        )
                        self._write_error(403)
                        return
                    started = time.perf_counter_ns()
                    decision = await front.checker().check(request) if admitted else OVERLOADED
                    front.observe(request, decision, started)
                    try:
                        response = encode_decision(decision, keep_alive)
                    except ValueError as exc:
                        log.error("cannot encode the decision: %s", exc, extra={"reason": "header_invalid"})
                        response = _ERROR_500
                    transport = self._transport
                    if transport is None or transport.is_closing():
                        return
                    transport.write(response)
                finally:
                    if admitted:
                        front.admission.done()
                if not keep_alive:
                    transport.close()
                    return
                if self._paused and len(queue) < MAX_PIPELINED // 2:
                    self._paused = False
                    transport.resume_reading()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("HTTP ext_authz connection failed")
            self._abort()

    def _peer(self) -> str:
        peer = self._transport.get_extra_info("peername") if self._transport is not None else None
        return str(peer[0]) if isinstance(peer, tuple) and peer else ""

    def _fail(self, status: int) -> None:
        """Answer a request that cannot be checked once the ones before it are answered, then close."""
        if self._transport is None:
            return
        self._transport.pause_reading()
        self._fail_status = status
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            self._waiter = None
            waiter.set_result(None)

    def _write_error(self, status: int) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(_error_response(status))
            transport.close()

    def _drop_queue(self) -> None:
        """Forget the queued requests (the connection is gone); their Checks no longer count."""
        admission = self._front.admission
        for *_, admitted in self._queue:
            if admitted:
                admission.done()
        self._queue.clear()

    def _abort(self) -> None:
        self._drop_queue()
        if self._transport is not None:
            self._transport.close()


async def start_http(
    address: str | HostPort,
    checker: Callable[[], Checker],
    observe: Observer,
    admission: Admission | None = None,
) -> asyncio.Server:
    """Listen on ``address`` (host:port) for Envoy's HTTP authorization requests; ``admission`` bounds the
    Checks in progress (default: the ``listen.max_inflight`` default)."""
    at = HostPort.of(address)
    front = HttpFront(checker, observe, admission if admission is not None else Admission(DEFAULT_MAX_INFLIGHT))
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: ExtAuthzHttpProtocol(front), at.host, at.port, backlog=1024)
