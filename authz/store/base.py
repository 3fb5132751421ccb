"""The shared-state contract: revocation, session binding, rate limits, and opaque values.

Two implementations: ``memory.MemoryStore`` (the embedded default, one process) and
``redis.RedisStore`` (a fleet of replicas). Every coroutine answers within the store's deadline or
raises ``StoreError``; what a Check does then (fail closed or open) is decided by the caller, per
feature, not here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

# How long a subject cut-off is kept without ``until``: the schema's default max_lifetime plus leeway.
DEFAULT_SUBJECT_KEEP = 86400.0 + 300.0


class StoreError(Exception):
    """The store could not answer within its deadline (down, slow, refused)."""


class SessionLimit(Exception):
    """A new session would exceed the subject's ``max_per_subject``: nothing was bound."""

    def __init__(self, subject: str, limit: int, retry_after: float) -> None:
        super().__init__(f"subject {subject!r} has {limit} live sessions already")
        self.limit = limit
        self.retry_after = retry_after  # seconds until the subject's first session expires


@dataclass(frozen=True, slots=True)
class SessionBinding:
    server: str
    session_id: str
    subject: str
    expires_at: float  # epoch seconds


class Store(Protocol):
    kind: str  # "memory" | "redis"

    @property
    def healthy(self) -> bool:
        """False while the backend is unreachable (``/readyz`` reports it)."""
        ...

    async def start(self) -> None:
        """Connect and load the local revocation copy; keep it current in the background."""
        ...

    async def close(self) -> None: ...

    # --- revocation: read from a local copy, so the hot path makes no round trip
    def is_revoked(self, subject: str | None, jti: str | None, issued_at: float | None) -> bool:
        """True if the jti is revoked, or the subject's tokens issued before its cut-off are."""
        ...

    async def revoke_token(self, jti: str, expires_at: float) -> None:
        """Revoke one token id until ``expires_at`` (its ``exp``)."""
        ...

    async def revoke_subject(self, subject: str, before: float, *, until: float | None = None) -> None:
        """Refuse every token of ``subject`` issued (``iat``) before ``before``.

        Kept until ``until`` (epoch seconds; by then every such token has expired: the cut-off plus the
        issuers' longest token lifetime), else ``before + DEFAULT_SUBJECT_KEEP``."""
        ...

    # --- MCP session binding
    async def bind_session(
        self, server: str, session_id: str, subject: str, ttl: float, *, max_per_subject: int | None = None
    ) -> str:
        """Bind the session to ``subject`` if unbound (atomic) and refresh its TTL; return the owner.

        A new binding beyond ``max_per_subject`` live sessions of the subject (all servers) raises
        ``SessionLimit`` and binds nothing."""
        ...

    async def end_session(self, server: str, session_id: str) -> bool: ...

    async def sessions(self, server: str | None = None, subject: str | None = None) -> list[SessionBinding]: ...

    # --- rate limits
    async def hit(self, key: str, limit: int, window: float) -> float:
        """Count one call against ``limit`` per ``window`` seconds; 0 if allowed, else seconds to wait."""
        ...

    # --- opaque values (token-exchange cache, approvals)
    async def get(self, key: str) -> bytes | None: ...

    async def put(self, key: str, value: bytes, ttl: float) -> None: ...

    async def take(self, key: str) -> bytes | None:
        """Get and delete atomically: a value taken once is gone for every replica."""
        ...
