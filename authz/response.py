"""Decisions as MCP clients expect them: challenges (RFC 6750 / RFC 9728), JSON-RPC error bodies,
identity headers for the MCP server, and the caller's token removed."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from authz import handover
from authz.config.runtime import Server
from authz.contract import ENVOY_HEADER_PREFIX, LIST_ROUTE_HEADER
from authz.errors import (
    FORBIDDEN_CODE,
    ApprovalRefused,
    BadRequest,
    Forbidden,
    InsufficientScope,
    InvalidRequest,
    InvalidToken,
    MissingToken,
    RateLimited,
    Refusal,
)
from authz.model import Caller, Decision, McpRequest

JSON = ("content-type", "application/json")
_UNSAFE = frozenset(chr(c) for c in (*range(0x20), 0x7F))


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def challenge(refusal: Refusal, server: Server | None) -> str | None:
    """The WWW-Authenticate value for a refusal, or None where none is due."""
    params: list[tuple[str, str]] = []
    if isinstance(refusal, InvalidToken):
        params.append(("error", "invalid_token"))
    elif isinstance(refusal, InsufficientScope):
        params.append(("error", "insufficient_scope"))
        if refusal.scopes:
            asked = server.asked_as(refusal.scopes) if server is not None else list(refusal.scopes)
            params.append(("scope", " ".join(asked)))
    elif isinstance(refusal, InvalidRequest):
        params.append(("error", "invalid_request"))
    elif not isinstance(refusal, MissingToken):
        return None
    elif server is not None and server.scopes_supported:
        params.append(("scope", " ".join(server.asked_as(s for s in server.scopes_supported if s != "offline_access"))))
    if server is not None:
        params.append(("resource_metadata", server.metadata_url))
    return "Bearer " + ", ".join(f'{k}="{_quote(v)}"' for k, v in params) if params else "Bearer"


def _body(refusal: Refusal, mcp: McpRequest | None) -> bytes:
    if isinstance(refusal, MissingToken | InvalidToken):
        error = "invalid_token" if isinstance(refusal, InvalidToken) else "unauthorized"
        return json.dumps({"error": error, "error_description": "authorization required"}).encode()
    code = refusal.code if isinstance(refusal, BadRequest) else FORBIDDEN_CODE
    message = {
        400: "Bad Request",
        404: "Session not found",
        413: "Request too large",
        429: "Too many requests",
        503: "Unavailable",
    }.get(refusal.status, "Forbidden")
    if isinstance(refusal, InsufficientScope):
        message = f"insufficient_scope: requires {' '.join(refusal.scopes)}".strip()
    elif isinstance(refusal, ApprovalRefused):
        message = (
            f"Refused: approval {refusal.approval_id} was denied"
            if refusal.state == "denied"
            else f"Approval {refusal.approval_id} is pending: retry the same call once it is approved"
        )
    elif isinstance(refusal, BadRequest):
        message = f"{message}: {refusal.reason}"
    rpc_error: dict[str, Any] = {"code": code, "message": message}
    if isinstance(refusal, BadRequest) and refusal.data is not None:
        rpc_error["data"] = refusal.data
    elif isinstance(refusal, ApprovalRefused):
        rpc_error["data"] = {"approval_id": refusal.approval_id, "approval": refusal.state}
    # Refused while parsing (no McpRequest yet): the parser kept the id when it could read one.
    bad_id = refusal.request_id if isinstance(refusal, BadRequest) else None
    request_id = mcp.first_id if mcp is not None else bad_id
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "error": rpc_error}).encode()


def deny(
    refusal: Refusal,
    server: Server | None,
    mcp: McpRequest | None,
    status: int | None = None,
    caller: Caller | None = None,
) -> Decision:
    """The refusal for the client; ``caller`` (when identified) is kept for the log and audit only."""
    headers = [JSON]
    www = challenge(refusal, server)
    if www is not None:
        headers.append(("www-authenticate", www))
    if isinstance(refusal, RateLimited):
        headers.append(("retry-after", str(refusal.retry_after)))
    return Decision(
        allowed=False,
        status=status or refusal.status,
        reason=refusal.reason,
        server=server.name if server else None,
        caller=caller,
        mcp=mcp,
        rule=refusal.rule,
        deny_headers=tuple(headers),
        body=_body(refusal, mcp),
        detail=refusal.detail,
    )


def allow(
    server: Server,
    caller: Caller,
    mcp: McpRequest,
    rule: str | None,
    extra_headers: tuple[tuple[str, str], ...] = (),
    *,
    source: tuple[str, str] = ("", ""),
    client_headers: Iterable[str] = (),
) -> Decision:
    """Identity headers set (overwriting whatever the client sent), the token and unset ones removed.

    ``extra_headers`` are upstream credentials (integration secret, exchanged token): set, replacing
    any client copy, and never in the remove list (Envoy removes after it sets).
    ``client_headers``: the names of the request's headers; any ``x-mcp-authz-*`` one (the names
    Envoy and the authorizer use between them) is removed, unless this decision sets it.
    For a ``filter_lists`` server, ``metadata`` hands the caller to the list filter (``source``:
    the request's address and mTLS principal, kept only when CEL conditions may read them).
    """
    names = server.identity_headers
    values = {
        names.subject: caller.subject,
        names.client_id: caller.client_id,
        names.scopes: " ".join(sorted(caller.scopes)) if caller.scopes else None,
        names.issuer: caller.issuer,
    }
    set_headers = tuple((k, v) for k, v in values.items() if v)
    if any(not _UNSAFE.isdisjoint(v) for _, v in set_headers):
        raise Forbidden("identity_unrepresentable", "a claim for an identity header has control characters")
    remove = ("authorization", *(k for k, v in values.items() if not v))
    if extra_headers:
        injected = {k for k, _ in extra_headers}
        set_headers += extra_headers
        remove = tuple(h for h in remove if h not in injected)
    if server.proxy is not None:  # the proxy's own identity headers never reach the MCP server
        remove += tuple(h for h in server.proxy.headers if h not in values)
        if caller.mode != "proxy":  # the proxy's other headers are believed only with its identity
            remove += tuple(h for h in server.proxy.passthrough if h not in values and h not in remove)
    if server.filter_lists:  # routes the request past ext_proc unless it lists (see the Envoy renderer)
        listing = any(c.method in handover.LIST_METHODS for c in mcp.calls)
        set_headers += ((LIST_ROUTE_HEADER, "1" if listing else "0"),)
    reserved = [h for h in client_headers if h.startswith(ENVOY_HEADER_PREFIX)]
    if reserved:
        setting = {k for k, _ in set_headers}
        remove += tuple(h for h in reserved if h not in setting and h not in remove)
    return Decision(
        allowed=True,
        status=200,
        reason="allowed",
        server=server.name,
        caller=caller,
        mcp=mcp,
        rule=rule,
        set_headers=set_headers,
        remove_headers=remove,
        metadata=handover.encode(server, caller, mcp, source) if server.filter_lists else None,
    )
