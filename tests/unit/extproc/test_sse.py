"""The event-stream rewriter (authz/extproc/sse.py): events split across chunks, bytes kept."""

from __future__ import annotations

import json
from typing import Any

import pytest

from authz.extproc.lists import ListParseError, id_key, rewrite_json
from authz.extproc.sse import EventTooLarge, SseRewriter, event_data, replace_data
from authz.model import McpCall

TOOLS = [{"name": "search"}, {"name": "delete_repo"}, {"name": "read_file"}]


def allowed(call: McpCall) -> bool:
    return call.tool in ("search", "read_file")


def rewriter(max_event: int = 1 << 20) -> SseRewriter:
    targets = {id_key(4): "tools/list"}
    answered: set[Any] = set()

    def rewrite(data: bytes) -> tuple[bytes | None, bool]:
        new, seen = rewrite_json(data, targets, allowed)
        answered.update(seen)
        return new, answered >= targets.keys()

    return SseRewriter(rewrite, max_event)


def event(message: Any, end: str = "\r\n") -> bytes:
    return f"event: message{end}data: {json.dumps(message)}{end}{end}".encode()


PROGRESS = [
    event({"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progress": i, "message": "ü"}})
    for i in range(3)
]
LIST = event({"jsonrpc": "2.0", "id": 4, "result": {"tools": TOOLS, "nextCursor": "n"}})
AFTER = b": a comment after the answer\r\n\r\n" + event({"jsonrpc": "2.0", "method": "x"})
STREAM = b"".join(PROGRESS) + LIST + AFTER


def run(chunks: list[bytes], r: SseRewriter | None = None) -> bytes:
    r = r or rewriter()
    out = [r.feed(chunk, end=i == len(chunks) - 1) for i, chunk in enumerate(chunks)]
    return b"".join(out)


def expected() -> bytes:
    filtered = {"jsonrpc": "2.0", "id": 4, "result": {"tools": [TOOLS[0], TOOLS[2]], "nextCursor": "n"}}
    new_data = json.dumps(filtered, separators=(",", ":")).encode()
    return b"".join(PROGRESS) + b"event: message\r\ndata: " + new_data + b"\r\n\r\n" + AFTER


def test_whole_stream_in_one_chunk() -> None:
    assert run([STREAM]) == expected()


@pytest.mark.parametrize("cut", range(1, len(STREAM)))
def test_split_anywhere_in_two_chunks(cut: int) -> None:
    assert run([STREAM[:cut], STREAM[cut:]]) == expected()


def test_byte_by_byte() -> None:
    assert run([STREAM[i : i + 1] for i in range(len(STREAM))]) == expected()


def test_other_events_go_on_at_once_and_unchanged() -> None:
    r = rewriter()
    first = PROGRESS[0] + PROGRESS[1][:10]
    assert r.feed(first) == PROGRESS[0]  # only the partial event waits
    assert r.feed(PROGRESS[1][10:]) == PROGRESS[1]


def test_after_the_answer_chunks_pass_through_untouched() -> None:
    r = rewriter()
    r.feed(LIST)
    assert r.done
    odd = b"data: not json at all\n\nda"
    assert r.feed(odd) == odd  # not even scanned


@pytest.mark.parametrize("end", ["\n", "\r", "\r\n"])
def test_every_line_ending(end: str) -> None:
    stream = event({"jsonrpc": "2.0", "method": "n"}, end) + event(
        {"jsonrpc": "2.0", "id": 4, "result": {"tools": TOOLS}}, end
    )
    out = run([stream[i : i + 1] for i in range(len(stream))])
    assert out.startswith(event({"jsonrpc": "2.0", "method": "n"}, end))
    assert b"delete_repo" not in out and b"read_file" in out


def test_a_lone_cr_at_a_chunk_end_waits_for_its_lf() -> None:
    r = rewriter()
    assert r.feed(b"data: {}\r\n\r") == b""
    assert r.feed(b"\ndata: {}") == b"data: {}\r\n\r\n"


def test_an_unterminated_last_event_is_still_judged() -> None:
    last = b'data: {"jsonrpc":"2.0","id":4,"result":{"tools":[{"name":"delete_repo"}]}}'
    assert b"delete_repo" not in rewriter().feed(last, end=True)


def test_an_id_of_another_type_is_not_the_answer() -> None:
    other = event({"jsonrpc": "2.0", "id": "4", "result": {"tools": TOOLS}})
    r = rewriter()
    assert r.feed(other) == other and not r.done


def test_unreadable_data_while_waiting_is_a_parse_error() -> None:
    with pytest.raises(ListParseError):
        rewriter().feed(b"data: {not json\n\n")


def test_a_partial_event_beyond_the_bound_is_refused() -> None:
    r = rewriter(max_event=64)
    r.feed(PROGRESS[0])  # complete events of any size pass
    with pytest.raises(EventTooLarge):
        r.feed(b"data: " + b"x" * 100)


def test_event_fields_are_kept_when_data_is_replaced() -> None:
    original = b"id: 7\nevent: message\ndata: {\ndata: }\nretry: 10\n\n"
    assert event_data(original) == b"{\n}"
    assert replace_data(original, b"[]") == b"id: 7\nevent: message\ndata: []\nretry: 10\n\n"
