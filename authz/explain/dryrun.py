"""A read-only view of a Store, for ``Explain``: the Check sees the live state but changes nothing.

Revocation and session owners are read from the real store; binding a session, counting a call
against a rate limit, taking or putting a value, and revoking are not done. A rate limit is never
reported as exceeded (peeking at a bucket without spending from it is not in the store contract).
"""

from __future__ import annotations

from authz.store.base import SessionBinding, Store


class DryRunStore:
    kind = "dry-run"

    def __init__(self, store: Store) -> None:
        self._store = store

    @property
    def healthy(self) -> bool:
        return self._store.healthy

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def is_revoked(self, subject: str | None, jti: str | None, issued_at: float | None) -> bool:
        return self._store.is_revoked(subject, jti, issued_at)

    async def revoke_token(self, jti: str, expires_at: float) -> None:
        return None

    async def revoke_subject(self, subject: str, before: float, *, until: float | None = None) -> None:
        return None

    async def bind_session(
        self, server: str, session_id: str, subject: str, ttl: float, *, max_per_subject: int | None = None
    ) -> str:
        """The current owner if the session is bound, else ``subject`` (as a first use would bind it)."""
        for binding in await self._store.sessions(server=server):
            if binding.session_id == session_id:
                return binding.subject
        return subject

    async def end_session(self, server: str, session_id: str) -> bool:
        return any(b.session_id == session_id for b in await self._store.sessions(server=server))

    async def sessions(self, server: str | None = None, subject: str | None = None) -> list[SessionBinding]:
        return await self._store.sessions(server, subject)

    async def hit(self, key: str, limit: int, window: float) -> float:
        return 0.0

    async def get(self, key: str) -> bytes | None:
        return await self._store.get(key)

    async def put(self, key: str, value: bytes, ttl: float) -> None:
        return None

    async def take(self, key: str) -> bytes | None:
        return await self._store.get(key)
