"""The store-backed stages of a Check, built together over one store: revocation (revocation.py),
rate limits (ratelimit.py), session binding (sessions.py).

Each stage raises a ``Refusal`` or returns. When the store cannot answer (``StoreError``, or for
revocation an unhealthy store whose local copy may be stale) the feature's failure mode decides:
``closed`` refuses with 503 ``store_unavailable``, ``open`` lets the call through unchecked.
"""

from __future__ import annotations

from authz.config.runtime import Server, StoreFailure
from authz.model import Caller, McpRequest
from authz.state.ratelimit import ANONYMOUS_KEY, RateLimiter
from authz.state.revocation import RevocationCheck
from authz.state.sessions import SessionBinder, SessionRefused
from authz.store.base import Store

__all__ = ["ANONYMOUS_KEY", "DEFAULT_MAX_SESSIONS_PER_SUBJECT", "Guards", "SessionRefused"]

DEFAULT_MAX_SESSIONS_PER_SUBJECT = 100


class Guards:
    """The three stages over one store; built with the Checker, so a reload brings new failure modes."""

    def __init__(
        self,
        store: Store,
        failure: StoreFailure,
        max_sessions_per_subject: int | None = DEFAULT_MAX_SESSIONS_PER_SUBJECT,
    ) -> None:
        self.store = store
        self.failure = failure
        self.revocations = RevocationCheck(store, failure.revocation)
        self.limiter = RateLimiter(store, failure.rate_limits)
        self.sessions = SessionBinder(store, failure.sessions, max_sessions_per_subject)

    def revocation(self, caller: Caller) -> None:
        """Refuse a revoked token: by ``jti``, or by its subject's cut-off against ``iat``. No I/O."""
        self.revocations.check(caller)

    async def rate_limit(self, server: Server, caller: Caller, mcp: McpRequest, source: str = "") -> None:
        """Count the request against each limit of the server (before the session is bound)."""
        await self.limiter.hit(server, caller, mcp, source)

    async def session(self, server: Server, caller: Caller, mcp: McpRequest) -> None:
        """Bind the MCP session to the first subject using it; refuse it to any other; DELETE ends it."""
        await self.sessions.bind(server, caller, mcp)
