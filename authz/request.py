"""The MCP request parser: HttpRequest → McpRequest, or the BadRequest that refuses it.

Pure (no I/O, no config beyond the server's own settings) and the only module that knows
JSON-RPC and the MCP routing headers. Whatever the revision, policy sees the same McpCall.

Header/body agreement (MCP 2026-07-28): whenever the body is here, the decision is made on the
body, and ``Mcp-Method`` / ``Mcp-Name`` / ``MCP-Protocol-Version`` must agree with it. An older
revision carrying routing headers is held to the same agreement, so a caller can never pick
whichever source suits them.

``Mcp-Param-{Name}`` (tools whose input schema declares ``x-mcp-header``): the declarations the
server's ``param_headers`` lists are checked like ``Mcp-Name`` (characters, encoding, agreement with
the argument; required in 2026-07-28 when the argument is set) and handed to policy as
``McpCall.params``, from the body whenever it is here. Undeclared ones are ignored (Envoy forwards them
unchanged). Decided on headers alone only in header-only mode, which takes 2026-07-28 requests only:
older revisions' servers need not check mirrored headers against the body.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from authz import mcp_metadata
from authz.config.runtime import ParamHeader, Server
from authz.errors import (
    HEADER_MISMATCH,
    INVALID_PARAMS,
    PARSE_ERROR,
    UNSUPPORTED_PROTOCOL_VERSION,
    BadRequest,
    TooLarge,
    Unavailable,
)
from authz.model import BATCH_REVISIONS, DEFAULT_REVISION, STATELESS_REVISIONS, HttpRequest, McpCall, McpRequest

VERSION_HEADER = "mcp-protocol-version"
METHOD_HEADER = "mcp-method"
NAME_HEADER = "mcp-name"
SESSION_HEADER = "mcp-session-id"
VERSION_META_KEY = "io.modelcontextprotocol/protocolVersion"
CAPABILITIES_META_KEY = "io.modelcontextprotocol/clientCapabilities"
REQUIRED_META_KEYS = (VERSION_META_KEY, CAPABILITIES_META_KEY)  # in every 2026-07-28 request's params._meta
NAME_PARAM = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}  # mirrored in Mcp-Name
NAMED_PARAM = {**NAME_PARAM, "resources/subscribe": "uri", "resources/unsubscribe": "uri"}  # required in the body
MAX_BATCH = 256
MAX_BODY_BYTES = 16 * 1024 * 1024
# Any value in the sentinel form is decoded or refused, never taken as plain text (as the SDK does).
_B64_FORM = re.compile(r"=\?base64\?(?P<payload>.*)\?=")
# RFC 9110 field values as MCP lets clients send them plain: visible ASCII, space, tab (else base64-encoded).
_PLAIN_VALUE = re.compile(r"[\t\x20-\x7e]*")
_DECIMAL = re.compile(r"-?[0-9]+(\.0+)?")  # an integer argument's header, compared by value ("42.0" is 42)


def decode_header_value(value: str) -> str | None:
    """Decode an ``Mcp-Name`` value: plain, or ``=?base64?<canonical base64 of UTF-8>?=``.

    None for a malformed encoded form (bad or non-canonical base64, or not UTF-8).
    """
    m = _B64_FORM.fullmatch(value)
    if m is None:
        return value
    payload = m.group("payload")
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        return None
    if base64.b64encode(raw).decode("ascii") != payload:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def parse(req: HttpRequest, server: Server) -> McpRequest | BadRequest:
    """Classify one HTTP request to an MCP endpoint. Never raises for any input."""
    try:
        return _parse(req, server)
    except BadRequest as refusal:
        if refusal.request_id is None and refusal.code == HEADER_MISMATCH and req.body:
            refusal.request_id = _peek_id(req.body)  # refused on headers before the body was read
        return refusal
    except (RecursionError, MemoryError, ValueError, TypeError) as exc:
        return BadRequest("body_invalid", f"{type(exc).__name__}", code=PARSE_ERROR)


def _single(req: HttpRequest, name: str) -> str | None:
    values = req.values(name)
    if len(values) > 1:
        raise BadRequest("header_duplicated", f"{name} sent {len(values)} times", code=HEADER_MISMATCH)
    return values[0] if values else None


def _parse(req: HttpRequest, server: Server) -> McpRequest:
    version_header = _single(req, VERSION_HEADER)
    method_header = _single(req, METHOD_HEADER)
    name_header = _single(req, NAME_HEADER)
    revision = version_header or DEFAULT_REVISION
    session = _single(req, SESSION_HEADER)
    http_method = req.method.upper()

    if http_method != "POST":
        # GET opens the SSE stream, DELETE ends a session: no body, decided on method and identity.
        # A body here would travel to the MCP server unread by the decision: refused.
        if _has_body(req):
            raise BadRequest("body_not_allowed", f"{http_method} with a body")
        _check_revision(revision, server, initialize=False)
        return McpRequest(http_method, revision, (), session_id=session)

    if not req.body and req.envoy_mcp is None:
        return _from_headers(req, server, revision, method_header, _name(name_header), version_header)

    content_type = req.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type != "application/json":
        raise BadRequest("content_type_invalid", f"content-type {content_type!r}")
    if req.body:
        if len(req.body) > MAX_BODY_BYTES:
            raise TooLarge(detail=f"{len(req.body)} bytes")
        message = _load_json(req.body)
    else:  # Envoy's MCP filter parsed the body: its metadata is the message (authz.mcp_metadata)
        message = _envoy_message(req.envoy_mcp or {}, server)
    try:
        return _parse_message(req, message, server, revision, version_header, method_header, name_header, session)
    except BadRequest as refusal:
        refusal.request_id = _request_id(message)
        raise


def _envoy_message(fields: Mapping[str, Any], server: Server) -> Any:
    """The message from Envoy's MCP filter; refused for a server whose decisions need the body."""
    needed = mcp_metadata.body_needed(server)
    if needed is not None:
        raise Unavailable("envoy_metadata_insufficient", f"{needed}: the body is needed (render Envoy again)")
    return mcp_metadata.message(fields)


def _has_body(req: HttpRequest) -> bool:
    """A body came with the request, or its headers announce one that Envoy did not buffer."""
    if req.body:
        return True
    length = req.headers.get("content-length", "").strip()
    return (length != "" and length != "0") or "transfer-encoding" in req.headers


def _parse_message(
    req: HttpRequest,
    message: Any,
    server: Server,
    revision: str,
    version_header: str | None,
    method_header: str | None,
    name_header: str | None,
    session: str | None,
) -> McpRequest:
    name = _name(name_header)
    batch = isinstance(message, list)
    items = message if batch else [message]
    if batch and (not items or len(items) > MAX_BATCH):
        raise BadRequest("batch_invalid", f"batch of {len(items)} elements")
    calls = tuple(_call(item) for item in items)

    first = calls[0]
    initialize = not batch and first.method == "initialize"
    _check_revision(revision, server, initialize=initialize and version_header is None)
    stateless = version_header in STATELESS_REVISIONS
    if batch and revision not in BATCH_REVISIONS:  # removed in 2025-06-18; Envoy's MCP filter refuses them too
        raise BadRequest("batch_invalid", "JSON-RPC batches are not part of this revision")
    if stateless or method_header is not None or name_header is not None:
        _agree(first, items[0], batch, stateless, method_header, name, version_header)
    if server.param_headers:
        calls = tuple(_with_params(req, server, call, stateless=stateless, batch=batch) for call in calls)
    if stateless and first.method and first.id is not None:
        _envelope(items[0])  # after the header agreement: a mismatch is answered as one (-32020)
    return McpRequest("POST", revision, calls, session_id=None if stateless else session, batch=batch)


def _envelope(item: dict[str, Any]) -> None:
    """2026-07-28 (basic/index, per-request protocol fields): a request without the required ``_meta``
    fields is malformed, -32602 (the SDK's server and Envoy's MCP filter refuse it too)."""
    params = item.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    missing = [k for k in REQUIRED_META_KEYS if k not in meta] if isinstance(meta, dict) else REQUIRED_META_KEYS
    if missing:
        raise BadRequest("params_meta_missing", f"params._meta lacks {', '.join(missing)}", code=INVALID_PARAMS)


def _with_params(req: HttpRequest, server: Server, call: McpCall, *, stateless: bool, batch: bool) -> McpCall:
    """The call with its declared ``Mcp-Param-*`` values (from the body), the headers checked against them."""
    declared = server.param_headers.get(call.tool or "", ()) if call.method == "tools/call" else ()
    if not declared:
        return call
    params: dict[str, str] = {}
    for param in declared:
        raw = _single(req, param.header)
        if raw is not None and batch:
            raise BadRequest("header_mismatch", f"{param.header} on a batch", code=HEADER_MISMATCH)
        header = None if raw is None else _header_value(raw, param.header)
        value = _argument(call.arguments, param.path)
        rendered = _render(value)
        if rendered is None:  # absent, null or not a primitive: a conforming client sends no header
            if header is not None:
                detail = f"{param.header} without arguments.{param.at}"
                raise BadRequest("header_mismatch", detail, code=HEADER_MISMATCH)
            continue
        if header is None:
            if stateless:
                detail = f"{param.header} is required: arguments.{param.at} is set"
                raise BadRequest("header_missing", detail, code=HEADER_MISMATCH)
        elif not _same(value, rendered, header):
            detail = f"{param.header} disagrees with arguments.{param.at}"
            raise BadRequest("header_mismatch", detail, code=HEADER_MISMATCH)
        params[param.name] = rendered
    return replace(call, params=params)


def _header_params(req: HttpRequest, declared: tuple[ParamHeader, ...]) -> dict[str, str]:
    """Header-only mode: the declared values as the (2026-07-28) headers carry them."""
    params: dict[str, str] = {}
    for param in declared:
        raw = _single(req, param.header)
        if raw is not None:
            params[param.name] = _header_value(raw, param.header)
    return params


def _argument(arguments: Any, path: tuple[str, ...]) -> Any:
    """The value at ``path`` in the arguments; None where a step is missing or not an object."""
    node = arguments
    for key in path:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def _render(value: Any) -> str | None:
    """An argument as a client mirrors it (2026-07-28 Value Encoding), or None where it mirrors nothing."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):  # an integral one as an integer, so policy sees "42" for 42 and 42.0
        return str(int(value)) if value.is_integer() and abs(value) < 2**53 else str(value)
    return value if isinstance(value, str) else None


def _same(value: Any, rendered: str, header: str) -> bool:
    """Does the decoded header carry the argument? An integral number also matches "42.0" (compared by value)."""
    if header == rendered:
        return True
    integral = (isinstance(value, int) and not isinstance(value, bool)) or (
        isinstance(value, float) and value.is_integer()
    )
    if not integral or _DECIMAL.fullmatch(header) is None:
        return False
    try:
        return int(header.partition(".")[0]) == int(value)
    except ValueError:  # more digits than Python converts: not a value any client mirrors
        return False


def _name(header: str | None) -> str | None:
    return None if header is None else _header_value(header, "Mcp-Name")


def _header_value(raw: str, what: str) -> str:
    """A mirrored header's value, decoded; invalid characters or a malformed encoding are -32020."""
    value = decode_header_value(raw) if _PLAIN_VALUE.fullmatch(raw) else None
    if value is None:
        raise BadRequest("header_malformed", f"{what} is not a valid header value", code=HEADER_MISMATCH)
    return value


def _peek_id(body: bytes) -> str | int | None:
    """The id of a body refused before it was parsed, if it is a well-formed single message."""
    try:
        return _request_id(_load_json(body))
    except (BadRequest, RecursionError, ValueError, TypeError):
        return None


def _request_id(message: Any) -> str | int | None:
    """The id a JSON-RPC error answers with: the single message's, when it is a valid one."""
    request_id = message.get("id") if isinstance(message, dict) else None
    return request_id if isinstance(request_id, str | int) and not isinstance(request_id, bool) else None


def _check_revision(revision: str, server: Server, *, initialize: bool) -> None:
    # An initialize without the header negotiates its version in the body: the server decides.
    if not initialize and revision not in server.revisions:
        accepted = ", ".join(sorted(server.revisions))
        raise BadRequest(
            "revision_unsupported",
            f"MCP-Protocol-Version {revision!r}; accepted: {accepted}",
            code=UNSUPPORTED_PROTOCOL_VERSION,
            data={"supported": sorted(server.revisions), "requested": revision},
        )


def _from_headers(
    req: HttpRequest, server: Server, revision: str, method: str | None, name: str | None, version: str | None
) -> McpRequest:
    """Header-only mode: no body reached us; decide on the routing headers if that is allowed."""
    if not server.header_only or version not in STATELESS_REVISIONS:
        raise BadRequest("body_missing", "POST without a body")
    _check_revision(revision, server, initialize=False)
    if not method:
        raise BadRequest("header_missing", "Mcp-Method is required", code=HEADER_MISMATCH)
    if method in NAME_PARAM and not name:
        raise BadRequest("header_missing", f"Mcp-Name is required for {method}", code=HEADER_MISMATCH)
    call = _named_call(method, None, name, None)
    if server.param_headers and call.tool is not None:
        call = replace(call, params=_header_params(req, server.param_headers.get(call.tool, ())))
    return McpRequest("POST", revision, (call,), from_headers=True)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise BadRequest("body_duplicate_key", "a JSON object repeats a key", code=PARSE_ERROR)
    return obj


def _load_json(body: bytes) -> Any:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("body_invalid", "body is not UTF-8", code=PARSE_ERROR) from None
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise BadRequest("body_invalid", f"not JSON: {exc.msg}", code=PARSE_ERROR) from None


def _reject_constant(name: str) -> Any:
    raise BadRequest("body_invalid", f"{name} is not JSON", code=PARSE_ERROR)


def _call(item: Any) -> McpCall:
    if not isinstance(item, dict) or item.get("jsonrpc") != "2.0":
        raise BadRequest("jsonrpc_invalid", "not a JSON-RPC 2.0 message")
    request_id = item.get("id")
    if isinstance(request_id, float) and request_id.is_integer():
        request_id = int(request_id)  # 1.0 is the integer 1 (as the MCP SDKs and Envoy's MCP filter take it)
    if "id" in item and (not isinstance(request_id, str | int) or isinstance(request_id, bool)):
        raise BadRequest("jsonrpc_invalid", "id must be a string or an integer")
    method = item.get("method")
    if method is None:
        if "id" in item and ("result" in item or "error" in item):
            return McpCall(method="", id=request_id)  # a response to a server-initiated request
        raise BadRequest("jsonrpc_invalid", "neither a request nor a response")
    if not isinstance(method, str) or not method:
        raise BadRequest("jsonrpc_invalid", "method must be a non-empty string")
    params = item.get("params")
    if params is not None and not isinstance(params, dict | list):
        raise BadRequest("jsonrpc_invalid", "params must be an object or an array")
    key = NAME_PARAM.get(method) or (
        "uri" if method.startswith("resources/") and method.endswith("subscribe") else None
    )
    value = params.get(key) if key and isinstance(params, dict) else None
    if key and (not isinstance(value, str) or not value):
        raise BadRequest("params_invalid", f"{method} without params.{key}", code=INVALID_PARAMS)
    arguments = params.get("arguments") if method == "tools/call" and isinstance(params, dict) else None
    if arguments is not None and not isinstance(arguments, dict):
        raise BadRequest("params_invalid", "tools/call arguments must be an object", code=INVALID_PARAMS)
    return _named_call(method, request_id, value, arguments)


def _named_call(method: str, request_id: Any, name: str | None, arguments: dict[str, Any] | None) -> McpCall:
    if method == "tools/call":
        return McpCall(method, request_id, tool=name, arguments=arguments or {})
    if method == "prompts/get":
        return McpCall(method, request_id, prompt=name)
    if method.startswith("resources/") and name is not None:
        return McpCall(method, request_id, uri=name)
    return McpCall(method, request_id)


def _agree(
    call: McpCall,
    item: dict[str, Any],
    batch: bool,
    stateless: bool,
    method: str | None,
    name: str | None,
    version: str | None,
) -> None:
    """Routing headers must say what the body says (a -32020 refusal otherwise)."""
    if batch:
        raise BadRequest("header_mismatch", "routing headers on a batch", code=HEADER_MISMATCH)
    if method is None and stateless and call.method:
        raise BadRequest("header_missing", "Mcp-Method is required", code=HEADER_MISMATCH)
    if method is not None and method != call.method:
        raise BadRequest("header_mismatch", f"Mcp-Method {method!r} but body {call.method!r}", code=HEADER_MISMATCH)
    if call.method in NAME_PARAM:
        if name is None and stateless:
            raise BadRequest("header_missing", "Mcp-Name is required", code=HEADER_MISMATCH)
        if name is not None and name != call.name:
            raise BadRequest("header_mismatch", "Mcp-Name disagrees with the body", code=HEADER_MISMATCH)
    elif name is not None:
        raise BadRequest("header_mismatch", f"Mcp-Name on {call.method!r}", code=HEADER_MISMATCH)
    params = item.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    if isinstance(meta, dict) and VERSION_META_KEY in meta and meta[VERSION_META_KEY] != version:
        raise BadRequest("header_mismatch", "MCP-Protocol-Version disagrees with params._meta", code=HEADER_MISMATCH)
