"""Pure filtering of MCP list results: entries the caller may not use are removed, all else is kept.

An entry is kept when the policy would allow the operation it stands for: ``tools/call`` of the
tool's ``name``, ``prompts/get`` of the prompt's ``name``, ``resources/read`` of the resource's
``uri`` (of a template's ``uriTemplate`` string, matched by the same globs). Conditions are
evaluated with empty tool arguments. An entry without a usable name is removed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from authz.handover import LIST_METHODS, RequestId
from authz.model import McpCall

Allowed = Callable[[McpCall], bool]  # the policy's answer for one synthetic call
IdKey = tuple[bool, str | int]  # JSON-RPC ids 1 and "1" are different requests


class ListParseError(ValueError):
    """A response to a list request that cannot be read: the filter cannot vouch for it."""


def id_key(value: RequestId) -> IdKey | None:
    if isinstance(value, bool) or value is None:
        return None
    return (isinstance(value, str), value)


def entry_call(method: str, entry: Any) -> McpCall | None:
    """The operation a list entry stands for, or None when the entry names nothing usable."""
    if not isinstance(entry, Mapping):
        return None
    if method == "tools/list":
        name = entry.get("name")
        return McpCall("tools/call", tool=name) if isinstance(name, str) else None
    if method == "prompts/list":
        name = entry.get("name")
        return McpCall("prompts/get", prompt=name) if isinstance(name, str) else None
    uri = entry.get("uriTemplate" if method == "resources/templates/list" else "uri")
    return McpCall("resources/read", uri=uri) if isinstance(uri, str) else None


def filter_result(method: str, result: Any, allowed: Allowed) -> tuple[Any, int]:
    """``result`` without the refused entries (same object when nothing is removed), and how many went."""
    member = LIST_METHODS[method]
    if not isinstance(result, Mapping) or not isinstance(result.get(member), list):
        raise ListParseError(f"{method} result has no {member} list")
    entries = result[member]
    kept = []
    for entry in entries:
        call = entry_call(method, entry)
        if call is not None and allowed(call):
            kept.append(entry)
    if len(kept) == len(entries):
        return result, 0
    return {**result, member: kept}, len(entries) - len(kept)


def rewrite_message(
    message: Any, targets: Mapping[IdKey, str], allowed: Allowed, any_id: str | None = None
) -> tuple[Any, int, set[IdKey]]:
    """A JSON-RPC message or batch with the list results of ``targets`` (id → list method) filtered.

    ``any_id``: the list method of the one request whose id is unknown (decided on routing headers):
    any response is its answer. Returns the message (the same object when nothing changed), the
    entries removed, and the ids answered in it (with a result or an error).
    """
    if isinstance(message, list):
        out, removed, answered = [], 0, set()
        for item in message:
            new, n, seen = rewrite_message(item, targets, allowed, any_id)
            out.append(new)
            removed += n
            answered |= seen
        return (out if removed else message), removed, answered
    if not isinstance(message, Mapping) or "method" in message:
        return message, 0, set()
    key = id_key(message.get("id"))
    method = targets.get(key) if key is not None else None
    if method is None and any_id is not None and ("result" in message or "error" in message):
        method, key = any_id, key or (False, "")
    if method is None or key is None:
        return message, 0, set()
    if "result" not in message:
        return message, 0, {key}  # an error answer: nothing listed
    result, removed = filter_result(method, message["result"], allowed)
    return ({**message, "result": result} if removed else message), removed, {key}


def dumps(message: Any) -> bytes:
    return json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def rewrite_json(
    body: bytes, targets: Mapping[IdKey, str], allowed: Allowed, any_id: str | None = None
) -> tuple[bytes | None, set[IdKey]]:
    """An ``application/json`` body rewritten (None: unchanged) and the target ids it answered."""
    try:
        message = json.loads(body)
    except ValueError as exc:  # also bad UTF-8
        raise ListParseError(f"response is not JSON: {exc}") from None
    new, removed, answered = rewrite_message(message, targets, allowed, any_id)
    return (dumps(new) if removed else None), answered


def error_message(request_id: RequestId, message: str = "list filtering unavailable") -> dict[str, Any]:
    """The fail-closed answer: a JSON-RPC internal error for the list request."""
    return {"jsonrpc": "2.0", "id": request_id, "error": {"code": -32603, "message": message}}
