"""gRPC over HTTP/2, the parts a server on a plain HTTP/2 stack must do itself (gRPC's PROTOCOL-HTTP2.md).

Pure: length-prefixed message framing with a size limit, ``grpc-timeout``, ``grpc-message``
percent-encoding, status codes, and the receive limit derived from the config. Used by
``authz.front.grpc_h2corn``; ``message_limit`` by the grpcio front too.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterator
from urllib.parse import quote

PREFIX = 5  # compressed flag (1 byte) + message length (4 bytes, big-endian)
GRPCIO_DEFAULT_LIMIT = 4 * 1024 * 1024  # grpcio's default receive limit: never go below it
HEADROOM = 1024 * 1024  # headers, attributes and protobuf overhead around the body in a CheckRequest


class Status(enum.IntEnum):
    """gRPC status codes (google.rpc.Code) a server sends."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    RESOURCE_EXHAUSTED = 8
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14


class GrpcError(Exception):
    """End the call with ``status`` and ``message`` (sent as ``grpc-status`` / ``grpc-message``).

    ``reason`` is the stable code for the log line (``grpc_message_too_large``...).
    """

    def __init__(self, status: Status, message: str, reason: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason


def message_limit(max_request_bytes: int, max_list_body_bytes: int = 0) -> int:
    """The largest gRPC message the authorizer accepts, derived from the config.

    A CheckRequest carries the request body (up to ``envoy.max_request_bytes``) plus headers and
    attributes; an ext_proc message carries a response body (up to ``ext_proc.max_body_bytes``).
    Hence the larger of both plus ``HEADROOM``, and never less than grpcio's 4 MiB default.
    """
    return max(GRPCIO_DEFAULT_LIMIT, max(max_request_bytes, max_list_body_bytes) + HEADROOM)


_TIMEOUT = re.compile(rb"([0-9]{1,8})([HMSmun])")
_UNIT_SECONDS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}


def parse_timeout(value: bytes) -> float:
    """``grpc-timeout`` (``1-8 digits`` + ``H M S m u n``) → seconds. A malformed value is INTERNAL,
    as grpc-go and grpc-java answer it."""
    match = _TIMEOUT.fullmatch(value.strip())
    if match is None:
        raise GrpcError(Status.INTERNAL, f"malformed grpc-timeout {value!r}", "grpc_timeout_malformed")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def encode_message(text: str) -> bytes:
    """``grpc-message``: UTF-8, percent-encoded outside printable ASCII (space to ``~``) and ``%``."""
    return quote(text, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~").encode("ascii")


def frame(message: bytes) -> bytes:
    """One uncompressed length-prefixed message."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


class MessageReader:
    """Splits a request's DATA into length-prefixed messages, refusing what gRPC says to refuse.

    * a message over ``limit`` bytes → RESOURCE_EXHAUSTED, as soon as its prefix arrives (the rest
      is never buffered);
    * a compressed message (flag 1): UNIMPLEMENTED when the request named an encoding (we accept
      only ``identity``; the answer carries ``grpc-accept-encoding: identity``), INTERNAL when it
      named none or ``identity`` (a protocol violation), as grpc-go answers both;
    * data ending inside a message → INTERNAL.
    """

    __slots__ = ("_buffer", "encoding", "limit")

    def __init__(self, limit: int, encoding: bytes = b"") -> None:
        self.limit = limit
        self.encoding = encoding
        self._buffer = bytearray()

    def feed(self, data: bytes) -> Iterator[bytes]:
        """Append ``data``; yield every message now complete."""
        buffer = self._buffer
        if not buffer and len(data) >= PREFIX:  # fast path: whole messages in one chunk
            view = memoryview(data)
            offset = 0
            while len(data) - offset >= PREFIX:
                length = self._check(data[offset], int.from_bytes(view[offset + 1 : offset + PREFIX], "big"))
                end = offset + PREFIX + length
                if end > len(data):
                    break
                yield bytes(view[offset + PREFIX : end])
                offset = end
            buffer += view[offset:]
            return
        buffer += data
        while len(buffer) >= PREFIX:
            length = self._check(buffer[0], int.from_bytes(buffer[1:PREFIX], "big"))
            if len(buffer) < PREFIX + length:
                return
            message = bytes(buffer[PREFIX : PREFIX + length])
            del buffer[: PREFIX + length]
            yield message

    def end(self) -> None:
        """The request's DATA ended: nothing may be left half-read."""
        if self._buffer:
            raise GrpcError(Status.INTERNAL, "request ended inside a message", "grpc_message_truncated")

    def _check(self, flag: int, length: int) -> int:
        if flag:
            if flag != 1:
                raise GrpcError(Status.INTERNAL, f"invalid message flag {flag}", "grpc_frame_invalid")
            if self.encoding and self.encoding != b"identity":
                name = self.encoding.decode("latin-1")
                raise GrpcError(
                    Status.UNIMPLEMENTED, f"message compressed with {name!r}; accepted: identity", "grpc_compressed"
                )
            raise GrpcError(
                Status.INTERNAL, "compressed flag set without grpc-encoding", "grpc_compressed_without_encoding"
            )
        if length > self.limit:
            raise GrpcError(
                Status.RESOURCE_EXHAUSTED,
                f"received message larger than max ({length} vs. {self.limit})",
                "grpc_message_too_large",
            )
        return length
