"""Frozen values passed between the stages of a Check. Stages import this, never each other."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# MCP revisions this build knows; the newest one is stateless (routing headers, no sessions).
HANDSHAKE_REVISIONS: tuple[str, ...] = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
STATELESS_REVISIONS: tuple[str, ...] = ("2026-07-28",)
KNOWN_REVISIONS: tuple[str, ...] = HANDSHAKE_REVISIONS + STATELESS_REVISIONS
DEFAULT_REVISION = "2025-03-26"  # what a request without MCP-Protocol-Version is taken as
BATCH_REVISIONS: tuple[str, ...] = ("2024-11-05", "2025-03-26")  # JSON-RPC batches: removed in 2025-06-18


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """The HTTP request as Envoy describes it, independent of the ext_authz transport (gRPC or HTTP).

    Header names are lower-case. A header sent several times keeps every value in order
    (``header_values``); ``headers`` holds the values joined by ``,`` as Envoy does.
    """

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes | None  # None: Envoy sent no body (GET/DELETE, or the route skips buffering)
    source_address: str = ""
    source_principal: str = ""  # mTLS peer: URI SAN, else DNS SAN, else subject
    context: Mapping[str, str] = field(default_factory=dict)  # per-route context_extensions
    header_values: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # Envoy's MCP filter's parse of the body (its dynamic metadata, JSON-like), sent instead of the body
    envoy_mcp: Mapping[str, Any] | None = None

    def values(self, name: str) -> tuple[str, ...]:
        """Every value of a header, for duplicate detection."""
        if name in self.header_values:
            return self.header_values[name]
        value = self.headers.get(name)
        return () if value is None else (value,)


@dataclass(frozen=True, slots=True)
class McpCall:
    """One JSON-RPC message of the request, as policy sees it in every MCP revision."""

    method: str
    id: str | int | None = None  # None for notifications (and responses)
    tool: str | None = None
    prompt: str | None = None
    uri: str | None = None
    arguments: Mapping[str, Any] | None = None
    # tools/call: the declared Mcp-Param-{Name} values (servers[].param_headers), Name -> value; None: none declared
    params: Mapping[str, str] | None = None

    @property
    def name(self) -> str | None:
        """The value MCP mirrors in ``Mcp-Name``: tool name, prompt name or resource URI."""
        return self.tool or self.prompt or self.uri


@dataclass(frozen=True, slots=True)
class McpRequest:
    """What the parser made of an HTTP request to an MCP endpoint."""

    http_method: str
    revision: str
    calls: tuple[McpCall, ...]  # empty for GET (SSE stream) and DELETE (end session)
    session_id: str | None = None
    batch: bool = False
    from_headers: bool = False  # decided on Mcp-Method/Mcp-Name alone (header-only mode)

    @property
    def stateless(self) -> bool:
        return self.revision in STATELESS_REVISIONS

    @property
    def first_id(self) -> str | int | None:
        return self.calls[0].id if self.calls and not self.batch else None


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: from a verified JWT, a trusted proxy, or nobody (optional modes)."""

    subject: str | None
    claims: Mapping[str, Any]
    scopes: frozenset[str]
    client_id: str | None = None
    issuer: str | None = None
    mode: str = "jwt"  # jwt | proxy | anonymous
    token_id: str | None = None
    expires_at: int | None = None
    # The verified bearer token itself, for RFC 8693 token exchange only: never logged or audited.
    token: str | None = field(default=None, repr=False, compare=False)

    @property
    def anonymous(self) -> bool:
        return self.subject is None


ANONYMOUS = Caller(subject=None, claims={}, scopes=frozenset(), mode="anonymous")


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of a Check, before it is encoded for Envoy.

    On allow, ``set_headers`` go to the MCP server and ``remove_headers`` are stripped.
    On deny, ``status``/``deny_headers``/``body`` go to the client.
    """

    allowed: bool
    status: int
    reason: str  # stable reason code for logs, audit and metrics
    server: str | None = None
    caller: Caller | None = None
    mcp: McpRequest | None = None
    rule: str | None = None
    set_headers: tuple[tuple[str, str], ...] = ()
    remove_headers: tuple[str, ...] = ()
    deny_headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    detail: str = ""  # for the log only, never sent to the client
    # On allow, for later Envoy filters (ext_proc list filtering): JSON-like values only.
    metadata: Mapping[str, Any] | None = None
