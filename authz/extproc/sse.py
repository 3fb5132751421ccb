"""Incremental rewriting of a ``text/event-stream`` body, chunk by chunk.

Only complete events are looked at; bytes of an event not yet complete wait (bounded by
``max_event``). An event is rewritten only when its data is the JSON-RPC response to one of the
list requests; every other event is emitted as the exact bytes received. Once every list request
is answered, the rest of the stream passes through untouched, without scanning.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from authz.extproc.lists import ListParseError

_LINE_END = re.compile(rb"\r\n|\r|\n")  # SSE line terminators; \r\n is one


class EventTooLarge(ListParseError):
    """An event still incomplete beyond the bound: it cannot be checked without holding more."""


def event_data(event: bytes) -> bytes:
    """The ``data`` field of one event (its data lines joined by ``\\n``)."""
    lines = []
    for line in _LINE_END.split(event):
        if line.startswith(b"data:"):
            value = line[5:]
            lines.append(value[1:] if value.startswith(b" ") else value)
    return b"\n".join(lines)


def replace_data(event: bytes, data: bytes) -> bytes:
    """``event`` with its data lines replaced by one line carrying ``data`` (other fields kept in place)."""
    match = _LINE_END.search(event)
    end = match.group(0) if match else b"\n"
    out: list[bytes] = []
    placed = False
    for line in _LINE_END.split(event):
        if line.startswith(b"data:"):
            if not placed:
                out.append(b"data: " + data)
                placed = True
        elif line:
            out.append(line)
    if not placed:
        out.append(b"data: " + data)
    return end.join(out) + end + end


class SseRewriter:
    """Feed body chunks in order; each call returns the bytes to send on now.

    ``rewrite(data)`` gets the data of each complete event while list answers are awaited and
    returns (new data or None to leave the event as it is, whether every awaited answer has now
    been seen). It raises ListParseError when it cannot judge the event.
    """

    def __init__(self, rewrite: Callable[[bytes], tuple[bytes | None, bool]], max_event: int) -> None:
        self._rewrite = rewrite
        self._max_event = max_event
        self._pending = bytearray()
        self._done = False  # every list request answered: pass the rest through
        self._scan_from = 0  # offset in _pending where the search for a line end resumes
        self._line_start = 0

    @property
    def done(self) -> bool:
        return self._done

    def feed(self, chunk: bytes, *, end: bool = False) -> bytes:
        if self._done:
            return chunk
        self._pending += chunk
        out = bytearray()
        event_start = 0
        buf = self._pending
        pos = self._scan_from
        line_start = self._line_start
        while not self._done:
            match = _LINE_END.search(buf, pos)
            if match is None:
                break
            if match.group(0) == b"\r" and match.end() == len(buf) and not end:
                break  # a lone CR at the end may be the first half of CRLF
            if match.start() == line_start:  # an empty line: the event ends here
                out += self._event(bytes(buf[event_start : match.end()]))
                event_start = match.end()
            pos = line_start = match.end()
        if self._done:
            out += buf[event_start:]
            self._pending = bytearray()
            return bytes(out)
        del buf[:event_start]
        self._scan_from = pos - event_start
        self._line_start = line_start - event_start
        if end and buf:  # an unterminated last event is judged too: it may be the answer
            out += self._event(bytes(buf))
            buf.clear()
        elif len(buf) > self._max_event:
            raise EventTooLarge(f"an event exceeds {self._max_event} bytes")
        return bytes(out)

    def _event(self, event: bytes) -> bytes:
        data = event_data(event)
        if not data.strip():
            return event  # a comment, a keep-alive, a retry or id field alone
        new, finished = self._rewrite(data)
        if finished:
            self._done = True
        return event if new is None else replace_data(event, new)
