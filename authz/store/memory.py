"""The embedded store: one process, no configuration, bounded in size.

Every table is a dict in insertion order; expired entries go first, and when a table is full the
oldest entry makes room. Rate limits use the same token bucket (GCRA) as the Redis store.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from authz.observe import telemetry
from authz.store.base import SessionBinding

DEFAULT_MAX_ENTRIES = 100_000  # per table: revoked jtis, subjects, sessions, rate-limit keys, values

V = TypeVar("V")


def gcra(tat: float | None, now: float, limit: int, window: float) -> tuple[float, float]:
    """One token-bucket step (GCRA): ``limit`` calls per ``window``, bursts up to ``limit``.

    ``tat`` is the theoretical arrival time kept per key. Returns ``(new_tat, wait)``: ``wait`` is 0
    when the call is allowed (store ``new_tat``), else seconds until it would be (keep ``tat``).
    """
    interval = window / limit
    start = now if tat is None or tat < now else tat
    new_tat = start + interval
    allowed_at = new_tat - window
    if allowed_at > now:
        return start, allowed_at - now
    return new_tat, 0.0


class _Table(dict[str, tuple[float, V]]):
    """key → (expires_at, value), bounded; expired entries are dropped when touched or when full."""

    def __init__(self, max_entries: int) -> None:
        super().__init__()
        self.max_entries = max_entries

    def live(self, key: str, now: float) -> V | None:
        entry = self.get(key)
        if entry is None:
            return None
        if entry[0] <= now:
            del self[key]
            return None
        return entry[1]

    def store(self, key: str, value: V, expires_at: float, now: float) -> None:
        self.pop(key, None)  # re-inserted last: the oldest entries stay first
        if len(self) >= self.max_entries:
            self.sweep(now)
            while len(self) >= self.max_entries:
                del self[next(iter(self))]
        self[key] = (expires_at, value)

    def sweep(self, now: float) -> None:
        for key in [k for k, (expires_at, _) in self.items() if expires_at <= now]:
            del self[key]


class MemoryStore:
    """The ``Store`` for one process. Coroutines never block and never raise ``StoreError``."""

    kind = "memory"

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._jtis: _Table[bool] = _Table(max_entries)
        self._subjects: _Table[float] = _Table(max_entries)  # subject → cut-off (iat before it is refused)
        self._sessions: _Table[SessionBinding] = _Table(max_entries)
        self._buckets: _Table[float] = _Table(max_entries)
        self._values: _Table[bytes] = _Table(max_entries)

    @property
    def healthy(self) -> bool:
        return True

    async def start(self) -> None:
        telemetry.set_store_state(self.kind, True)

    async def close(self) -> None:
        return None

    # --- revocation
    def is_revoked(self, subject: str | None, jti: str | None, issued_at: float | None) -> bool:
        now = self._clock()
        if jti is not None and self._jtis.live(jti, now):
            return True
        if subject is None:
            return False
        return revoked_by_cutoff(self._subjects.live(subject, now), issued_at)

    async def revoke_token(self, jti: str, expires_at: float) -> None:
        self._jtis.store(jti, True, expires_at, self._clock())

    async def revoke_subject(self, subject: str, before: float) -> None:
        now = self._clock()
        current = self._subjects.live(subject, now)
        cutoff = before if current is None else max(current, before)
        self._subjects.store(subject, cutoff, float("inf"), now)

    # --- sessions
    async def bind_session(self, server: str, session_id: str, subject: str, ttl: float) -> str:
        now = self._clock()
        key = session_key(server, session_id)
        bound = self._sessions.live(key, now)
        owner = subject if bound is None else bound.subject
        self._sessions.store(key, SessionBinding(server, session_id, owner, now + ttl), now + ttl, now)
        return owner

    async def end_session(self, server: str, session_id: str) -> bool:
        key = session_key(server, session_id)
        return self._sessions.live(key, self._clock()) is not None and self._sessions.pop(key, None) is not None

    async def sessions(self, server: str | None = None, subject: str | None = None) -> list[SessionBinding]:
        self._sessions.sweep(self._clock())
        return [
            binding
            for _, binding in self._sessions.values()
            if (server is None or binding.server == server) and (subject is None or binding.subject == subject)
        ]

    # --- rate limits
    async def hit(self, key: str, limit: int, window: float) -> float:
        now = self._clock()
        tat, wait = gcra(self._buckets.live(key, now), now, limit, window)
        if wait == 0.0:
            self._buckets.store(key, tat, tat, now)
        return wait

    # --- opaque values
    async def get(self, key: str) -> bytes | None:
        return self._values.live(key, self._clock())

    async def put(self, key: str, value: bytes, ttl: float) -> None:
        now = self._clock()
        self._values.store(key, value, now + ttl, now)

    async def take(self, key: str) -> bytes | None:
        value = self._values.live(key, self._clock())
        if value is not None:
            del self._values[key]
        return value


def session_key(server: str, session_id: str) -> str:
    return f"{server}\x00{session_id}"


def revoked_by_cutoff(cutoff: float | None, issued_at: float | None) -> bool:
    """A subject cut-off refuses tokens issued before it; a token without ``iat`` cannot prove it is newer."""
    if cutoff is None:
        return False
    return issued_at is None or issued_at < cutoff
