"""The request an explanation is about: the request-file format both ``policy explain`` and
``admin explain`` read, and the HttpRequest a Check would get from Envoy for it. Pure.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from authz.contract import SERVER_CONTEXT_KEY
from authz.model import HttpRequest


@dataclass(frozen=True, slots=True)
class ExplainInput:
    """What is explained: the HTTP request (as Envoy would send it) and the server it is for."""

    method: str = "POST"
    path: str = "/"
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    server: str = ""  # empty: chosen by host and path, as without the context extension


def from_file(spec: Any) -> ExplainInput:
    """A request file: a JSON-RPC body alone, or ``{"method", "path", "headers", "body", "server"}``
    (``body`` a JSON value, or a string sent as it is). A body gets ``content-type: application/json``
    unless the headers name one."""
    if not (isinstance(spec, dict) and "body" in spec and "jsonrpc" not in spec):
        spec = {"body": spec}
    body = spec.get("body")
    raw = body.encode() if isinstance(body, str) else (b"" if body is None else json.dumps(body).encode())
    headers = {str(k).lower(): str(v) for k, v in (spec.get("headers") or {}).items()}
    if raw:
        headers.setdefault("content-type", "application/json")
    return ExplainInput(
        method=str(spec.get("method") or "POST"),
        path=str(spec.get("path") or "/"),
        headers=headers,
        body=raw,
        server=str(spec.get("server") or ""),
    )


def http_request(given: ExplainInput, token: str = "") -> HttpRequest:
    """The HttpRequest for ``given``; ``token`` (if any) as its Bearer credential."""
    headers = {k.lower(): v for k, v in given.headers.items()}
    if token:
        headers["authorization"] = f"Bearer {token}"
    return HttpRequest(
        method=(given.method or "POST").upper(),
        path=given.path or "/",
        headers=headers,
        body=given.body or None,
        context={SERVER_CONTEXT_KEY: given.server} if given.server else {},
    )
