"""Refusals: each knows its HTTP status, its reason code and what the client is told.

The ``detail`` goes to the log and the audit event; the client sees only the status,
the challenge and a short body.
"""

from __future__ import annotations

from typing import Any

# JSON-RPC error codes used in deny bodies.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
INVALID_PARAMS = -32602
HEADER_MISMATCH = -32020  # MCP 2026-07-28: routing headers disagree with the body
UNSUPPORTED_PROTOCOL_VERSION = -32022
FORBIDDEN_CODE = -32001  # server-defined: refused by policy


class Refusal(Exception):
    """Base of every denial. ``reason`` is a stable code (e.g. ``token_expired``)."""

    status = 403
    default_reason = "forbidden"
    rule: str | None = None  # the policy rule that refused, when one did

    def __init__(self, reason: str | None = None, detail: str = "") -> None:
        self.reason = reason or self.default_reason
        self.detail = detail
        super().__init__(f"{self.reason}: {detail}" if detail else self.reason)


class MissingToken(Refusal):
    """No credential at all: 401 with a challenge but no error code (RFC 6750 §3.1)."""

    status = 401
    default_reason = "token_missing"


class InvalidToken(Refusal):
    """A credential was presented and is not acceptable: 401 ``error="invalid_token"``."""

    status = 401
    default_reason = "token_invalid"


class InsufficientScope(Refusal):
    """Valid token lacking scopes a rule needs: 403 ``error="insufficient_scope"`` with ``scope``."""

    status = 403
    default_reason = "insufficient_scope"

    def __init__(self, scopes: tuple[str, ...], reason: str | None = None, detail: str = "") -> None:
        super().__init__(reason, detail)
        self.scopes = scopes


class Forbidden(Refusal):
    """Refused by policy for reasons other than scope (claims, origin, default deny)."""

    status = 403
    default_reason = "forbidden"


class ApprovalRefused(Forbidden):
    """A tool call a person refused (``denied``) or has not answered yet (``pending``).

    The client gets a JSON-RPC error naming the state and the approval id (``error.data``).
    """

    def __init__(self, state: str, approval_id: str, detail: str = "") -> None:
        super().__init__(f"approval_{state}", detail)
        self.state = state
        self.approval_id = approval_id


class BadRequest(Refusal):
    """Malformed MCP input. ``code`` is the JSON-RPC error code put in the body."""

    status = 400
    default_reason = "bad_request"

    def __init__(
        self, reason: str | None = None, detail: str = "", code: int = INVALID_REQUEST, data: Any = None
    ) -> None:
        super().__init__(reason, detail)
        self.code = code
        self.data = data  # JSON-RPC error.data for the client (e.g. -32022's supported versions)
        self.request_id: str | int | None = None  # the refused message's id, when it could be read


class InvalidRequest(BadRequest):
    """A malformed request for a protected resource (RFC 6750 §3.1 ``invalid_request``): 400 with
    ``WWW-Authenticate: Bearer error="invalid_request"``, e.g. a token sent in the URL or in a form body."""

    default_reason = "token_request_invalid"


class TooLarge(BadRequest):
    status = 413
    default_reason = "body_too_large"


class Unavailable(Refusal):
    """A dependency (JWKS, store) failed and the operator chose to fail closed."""

    status = 503
    default_reason = "unavailable"


class RateLimited(Refusal):
    status = 429
    default_reason = "rate_limited"

    def __init__(self, retry_after: int, reason: str | None = None, detail: str = "") -> None:
        super().__init__(reason, detail)
        self.retry_after = retry_after
