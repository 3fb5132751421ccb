"""Audit events: one JSON line per decision, written straight to stdout.

Not sent through ``logging``, so no log level can hide it. Each event is a dict serialised once
and written with one ``write`` call. The token, the Authorization header, the ``Mcp-Session-Id``
(``session`` is its fingerprint, as in the logs) and tool arguments (other than the keys in
``audit.argument_keys``) are never part of an event. Writing never
raises into the Check: a failure is counted in ``Auditor.errors`` and the event is dropped.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson

from authz.model import Decision, HttpRequest

STREAM = "mcp-authz-audit"

# W3C Trace Context §3.2: version-traceid-parentid-flags, lower-case hex; all-zero ids are invalid.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")


def session_fingerprint(session_id: str) -> str:
    """How logs and audit events name an ``Mcp-Session-Id``: the id is a bearer secret, never written."""
    return hashlib.sha256(session_id.encode()).hexdigest()[:12]


def trace_id(traceparent: str | None) -> str | None:
    """The trace id of a well-formed ``traceparent`` header, else None."""
    if not traceparent:
        return None
    m = _TRACEPARENT.fullmatch(traceparent.strip())
    if m is None:
        return None
    version, trace, parent, _flags, rest = m.groups()
    if version == "ff" or trace == "0" * 32 or parent == "0" * 16:
        return None
    if version == "00" and rest is not None:  # version 00 has exactly four fields
        return None
    return trace


def event(
    req: HttpRequest, decision: Decision, argument_keys: Iterable[str] = (), trace: str | None = None
) -> dict[str, Any]:
    """The audit event of one decision, as a dict ready for ``json.dumps``.

    ``trace``: the trace id of the Check's span, when one was made; else the ``traceparent``'s.

    ``method`` is the JSON-RPC method; for a batch it is the list of the batch's methods.
    ``tool``/``resource``/``prompt``/``arguments`` describe the first message.
    """
    mcp = decision.mcp
    caller = decision.caller
    call = mcp.calls[0] if mcp and mcp.calls else None
    batch = mcp is not None and mcp.batch
    method: str | list[str] | None = call.method if call else None
    if batch and mcp is not None:
        method = [c.method for c in mcp.calls]
    arguments = None
    keys = tuple(argument_keys)
    if keys and call is not None and call.arguments:
        arguments = {k: call.arguments[k] for k in keys if k in call.arguments}
    headers = req.headers
    return {
        "stream": STREAM,
        "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "decision": "allow" if decision.allowed else "deny",
        "reason": decision.reason,
        "status": decision.status,
        "subject": caller.subject if caller else None,
        "client_id": caller.client_id if caller else None,
        "issuer": caller.issuer if caller else None,
        "identity_mode": caller.mode if caller else None,
        "server": decision.server,
        "http_method": req.method,
        "method": method,
        "batch_size": len(mcp.calls) if batch and mcp is not None else None,
        "tool": call.tool if call else None,
        "resource": call.uri if call else None,
        "prompt": call.prompt if call else None,
        "arguments": arguments,
        "session": session_fingerprint(mcp.session_id) if mcp and mcp.session_id else None,
        "revision": mcp.revision if mcp else None,
        "source_address": req.source_address or None,
        "source_principal": req.source_principal or None,
        "request_id": headers.get("x-request-id"),
        "trace_id": trace or trace_id(headers.get("traceparent")),
        "rule": decision.rule,
    }


def _dumps(fields: Mapping[str, Any]) -> str:
    """Compact JSON, by orjson (a sixteenth of the stdlib's cost per event); the stdlib for what orjson
    refuses (integers beyond 64 bits in allow-listed arguments)."""
    try:
        return orjson.dumps(fields, default=str).decode()
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return json.dumps(fields, separators=(",", ":"), default=str)


class Auditor:
    """Writes audit events to a text stream (stdout by default); counts what it could not write.

    ``sink``, when set, also receives each serialised event (the webhook queue); it must not block.
    """

    __slots__ = ("_flush_pending", "_out", "argument_keys", "enabled", "errors", "sink")

    def __init__(
        self,
        enabled: bool = True,
        argument_keys: Iterable[str] = (),
        out: TextIO | None = None,
        sink: Callable[[str], None] | None = None,
    ) -> None:
        self.enabled = enabled
        self.argument_keys = tuple(argument_keys)
        self._out = out
        self.sink = sink
        self.errors = 0
        self._flush_pending = False

    def configure(self, enabled: bool, argument_keys: Iterable[str]) -> None:
        self.enabled = enabled
        self.argument_keys = tuple(argument_keys)

    def __call__(self, req: HttpRequest, decision: Decision, trace: str | None = None) -> None:
        if self.enabled:
            self._write(lambda: event(req, decision, self.argument_keys, trace))

    def step(self, fields: Mapping[str, Any]) -> None:
        """An event that is not a decision (e.g. ``{"event": "approval", "step": "requested", ...}``)."""
        if self.enabled:
            now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
            self._write(lambda: {"stream": STREAM, "time": now, **fields})

    def _write(self, build: Callable[[], Mapping[str, Any]]) -> None:
        """One JSON line on stdout (and to the webhook sink); never raises: auditing must not fail a Check."""
        try:
            line = _dumps(build())
            out = self._out if self._out is not None else sys.stdout
            out.write(line + "\n")
            self._schedule_flush(out)
            if self.sink is not None:
                self.sink(line)
        except Exception:
            self.errors += 1

    def _schedule_flush(self, out: TextIO) -> None:
        """Flush once per event-loop iteration, not once per event: under load the events of many
        Checks leave in one write. Outside a running loop, at once."""
        if self._flush_pending:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            out.flush()
            return
        self._flush_pending = True
        loop.call_soon(self._flush, out)

    def _flush(self, out: TextIO) -> None:
        self._flush_pending = False
        try:
            out.flush()
        except Exception:
            self.errors += 1
