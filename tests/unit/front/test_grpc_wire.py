"""gRPC wire rules for the h2corn front: framing, limits, compression refusal, grpc-timeout, grpc-message."""

from __future__ import annotations

from urllib.parse import unquote

import pytest

from authz.front.grpc_wire import (
    GRPCIO_DEFAULT_LIMIT,
    HEADROOM,
    GrpcError,
    MessageReader,
    Status,
    encode_message,
    frame,
    message_limit,
    parse_timeout,
)


def test_frame_is_flag_and_big_endian_length() -> None:
    assert frame(b"abc") == b"\x00\x00\x00\x00\x03abc"
    assert frame(b"") == b"\x00\x00\x00\x00\x00"


def test_messages_split_across_and_within_chunks() -> None:
    reader = MessageReader(limit=100)
    wire = frame(b"one") + frame(b"") + frame(b"three")
    got: list[bytes] = []
    for i in range(len(wire)):  # one byte at a time
        got += reader.feed(wire[i : i + 1])
    reader.end()
    assert got == [b"one", b"", b"three"]
    reader = MessageReader(limit=100)
    assert list(reader.feed(wire)) == [b"one", b"", b"three"]  # all at once
    reader.end()


def test_data_ending_inside_a_message_is_internal() -> None:
    reader = MessageReader(limit=100)
    assert list(reader.feed(frame(b"hello")[:-1])) == []
    with pytest.raises(GrpcError) as caught:
        reader.end()
    assert caught.value.status is Status.INTERNAL


def test_a_message_over_the_limit_is_refused_from_its_prefix() -> None:
    reader = MessageReader(limit=10)
    assert list(reader.feed(frame(b"x" * 10))) == [b"x" * 10]
    with pytest.raises(GrpcError) as caught:
        list(reader.feed(b"\x00" + (11).to_bytes(4, "big")))  # only the prefix: nothing buffered yet
    assert caught.value.status is Status.RESOURCE_EXHAUSTED
    assert caught.value.reason == "grpc_message_too_large"
    assert "11 vs. 10" in caught.value.message


@pytest.mark.parametrize(
    ("encoding", "status"),
    [(b"gzip", Status.UNIMPLEMENTED), (b"", Status.INTERNAL), (b"identity", Status.INTERNAL)],
)
def test_compressed_messages_are_refused(encoding: bytes, status: Status) -> None:
    reader = MessageReader(limit=100, encoding=encoding)
    with pytest.raises(GrpcError) as caught:
        list(reader.feed(b"\x01\x00\x00\x00\x02ab"))
    assert caught.value.status is status


def test_an_uncompressed_message_with_an_encoding_named_is_read() -> None:
    assert list(MessageReader(limit=100, encoding=b"gzip").feed(frame(b"ab"))) == [b"ab"]


def test_an_invalid_flag_is_internal() -> None:
    with pytest.raises(GrpcError) as caught:
        list(MessageReader(limit=100).feed(b"\x02\x00\x00\x00\x00"))
    assert caught.value.status is Status.INTERNAL


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(b"1H", 3600.0), (b"2M", 120.0), (b"3S", 3.0), (b"250m", 0.25), (b"100u", 1e-4), (b"99999999n", 0.099999999)],
)
def test_grpc_timeout(value: bytes, seconds: float) -> None:
    assert parse_timeout(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", [b"", b"1", b"123456789S", b"1s", b"-1S", b"1.5S", b"S"])
def test_malformed_grpc_timeout_is_internal(value: bytes) -> None:
    with pytest.raises(GrpcError) as caught:
        parse_timeout(value)
    assert caught.value.status is Status.INTERNAL


def test_grpc_message_is_percent_encoded_utf8() -> None:
    assert encode_message("plain text: ok") == b"plain text: ok"
    encoded = encode_message("100% é\n")
    assert encoded == b"100%25 %C3%A9%0A"
    assert unquote(encoded.decode()) == "100% é\n"


def test_message_limit_follows_the_config_and_never_drops_below_grpcio() -> None:
    assert message_limit(1_048_576) == GRPCIO_DEFAULT_LIMIT
    assert message_limit(16 * 1024 * 1024) == 16 * 1024 * 1024 + HEADROOM
    assert message_limit(1_048_576, 8 * 1024 * 1024) == 8 * 1024 * 1024 + HEADROOM
