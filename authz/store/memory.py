"""The embedded store: one process, no configuration, bounded in size, O(1) per operation.

Sessions, rate-limit buckets and opaque values live in LRU tables (an ``OrderedDict``, least
recently stored first): a full table evicts its first entry, and each store also drops up to two
expired entries from the front, so no operation ever walks a table. Revocations are never evicted
while they can still refuse a token: they sit in a heap by expiry, and a full revocation table
refuses a new revocation (``StoreError``) rather than forget a live one. A subject's live sessions
are counted, so ``max_per_subject`` costs one lookup. Rate limits use the same token bucket (GCRA)
as the Redis store.
"""

from __future__ import annotations

import heapq
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from authz.observe import telemetry
from authz.store.base import DEFAULT_SUBJECT_KEEP, SessionBinding, SessionLimit, StoreError

DEFAULT_MAX_ENTRIES = 100_000  # per table: revoked jtis, subjects, sessions, rate-limit keys, values
RECLAIM = 2  # expired entries a store() may drop from the front of an LRU table

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


class LruTable(Generic[V]):
    """key → (expires_at, value), at most ``max_entries``; the least recently stored entry goes first.

    ``on_drop(key, value)`` is called for every entry that leaves other than by ``pop`` (expired,
    evicted). Live entries evicted to make room are counted (``mcp_authz.store.evictions``).
    """

    def __init__(self, name: str, max_entries: int, on_drop: Callable[[str, V], None] | None = None) -> None:
        self.name = name
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[float, V]] = OrderedDict()
        self._on_drop = on_drop

    def __len__(self) -> int:
        return len(self._entries)

    def live(self, key: str, now: float) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= now:
            self._drop(key)
            return None
        return entry[1]

    def store(self, key: str, value: V, expires_at: float, now: float) -> None:
        entries = self._entries
        entries[key] = (expires_at, value)
        entries.move_to_end(key)
        for _ in range(RECLAIM):
            first = next(iter(entries))
            if first == key or entries[first][0] > now:
                break
            self._drop(first)
        while len(entries) > self.max_entries:
            first = next(iter(entries))
            if entries[first][0] > now:
                telemetry.count_store_eviction(self.name)
            self._drop(first)

    def expires_at(self, key: str) -> float | None:
        entry = self._entries.get(key)
        return None if entry is None else entry[0]

    def pop(self, key: str) -> V | None:
        entry = self._entries.pop(key, None)
        return None if entry is None else entry[1]

    def live_values(self, now: float) -> Iterator[V]:
        """Every live value (a walk: for the admin API's listings, never on the Check path)."""
        return (value for expires_at, value in list(self._entries.values()) if expires_at > now)

    def _drop(self, key: str) -> None:
        _, value = self._entries.pop(key)
        if self._on_drop is not None:
            self._on_drop(key, value)


class RevocationTable(Generic[V]):
    """key → (expires_at, value) that forgets an entry only once it expired; O(log n) per change.

    A heap of (expires_at, key) finds the next entry to expire; superseded heap items are skipped
    when they surface. Full of live entries, it refuses the new one instead of evicting.
    """

    def __init__(self, name: str, max_entries: int) -> None:
        self.name = name
        self.max_entries = max_entries
        self._entries: dict[str, tuple[float, V]] = {}
        self._heap: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str, now: float) -> V | None:
        entry = self._entries.get(key)
        return entry[1] if entry is not None and entry[0] > now else None

    def expires_at(self, key: str) -> float | None:
        entry = self._entries.get(key)
        return None if entry is None else entry[0]

    def store(self, key: str, value: V, expires_at: float, now: float) -> None:
        self.expire(now)
        if key not in self._entries and len(self._entries) >= self.max_entries:
            raise StoreError(f"revocation: {self.name} holds {self.max_entries} live entries (the table's size)")
        self._entries[key] = (expires_at, value)
        heapq.heappush(self._heap, (expires_at, key))
        if len(self._heap) > 2 * len(self._entries) + 16:  # superseded items pile up: rebuild (rare)
            self._heap = [(exp, k) for k, (exp, _) in self._entries.items()]
            heapq.heapify(self._heap)

    def expire(self, now: float) -> None:
        """Drop every entry whose time has come (each entry is dropped once: amortized O(log n))."""
        heap, entries = self._heap, self._entries
        while heap and heap[0][0] <= now:
            expires_at, key = heapq.heappop(heap)
            entry = entries.get(key)
            if entry is not None and entry[0] == expires_at:
                del entries[key]


class MemoryStore:
    """The ``Store`` for one process. Coroutines never block; only a full revocation table raises."""

    kind = "memory"

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._jtis: RevocationTable[bool] = RevocationTable("revoked_tokens", max_entries)
        self._subjects: RevocationTable[float] = RevocationTable("revoked_subjects", max_entries)  # → cut-off
        self._sessions: LruTable[SessionBinding] = LruTable("sessions", max_entries, self._session_dropped)
        self._owned: dict[str, set[str]] = {}  # subject → keys of its sessions (a superset of the live ones)
        self._buckets: LruTable[float] = LruTable("rate_limits", max_entries)
        self._values: LruTable[bytes] = LruTable("values", max_entries)

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
        if jti is not None and self._jtis.get(jti, now):
            return True
        if subject is None:
            return False
        return revoked_by_cutoff(self._subjects.get(subject, now), issued_at)

    async def revoke_token(self, jti: str, expires_at: float) -> None:
        now = self._clock()
        self._jtis.store(jti, True, max(expires_at, self._jtis.expires_at(jti) or 0.0), now)

    async def revoke_subject(self, subject: str, before: float, *, until: float | None = None) -> None:
        now = self._clock()
        current = self._subjects.get(subject, now)
        cutoff = before if current is None else max(current, before)
        keep = max(before + DEFAULT_SUBJECT_KEEP if until is None else until, self._subjects.expires_at(subject) or 0.0)
        self._subjects.store(subject, cutoff, keep, now)

    # --- sessions
    async def bind_session(
        self, server: str, session_id: str, subject: str, ttl: float, *, max_per_subject: int | None = None
    ) -> str:
        now = self._clock()
        key = session_key(server, session_id)
        bound = self._sessions.live(key, now)
        if bound is None:
            self._admit(subject, key, max_per_subject, now)
        owner = subject if bound is None else bound.subject
        self._sessions.store(key, SessionBinding(server, session_id, owner, now + ttl), now + ttl, now)
        return owner

    def _admit(self, subject: str, key: str, limit: int | None, now: float) -> None:
        """Count a new session of ``subject``; at the limit, forget its expired ones first (≤ limit lookups)."""
        owned = self._owned.get(subject)
        if limit is not None and owned is not None and len(owned) >= limit:
            for other in list(owned):
                if self._sessions.live(other, now) is None:  # an expired one is dropped (and uncounted) here
                    owned.discard(other)
            if len(owned) >= limit:
                first = min(self._sessions.expires_at(k) or now for k in owned)
                raise SessionLimit(subject, limit, first - now)
        self._owned.setdefault(subject, set()).add(key)

    def _session_dropped(self, key: str, binding: SessionBinding) -> None:
        owned = self._owned.get(binding.subject)
        if owned is not None:
            owned.discard(key)
            if not owned:
                del self._owned[binding.subject]

    async def end_session(self, server: str, session_id: str) -> bool:
        key = session_key(server, session_id)
        if self._sessions.live(key, self._clock()) is None:
            return False
        binding = self._sessions.pop(key)
        if binding is not None:
            self._session_dropped(key, binding)
        return binding is not None

    async def sessions(self, server: str | None = None, subject: str | None = None) -> list[SessionBinding]:
        return [
            binding
            for binding in self._sessions.live_values(self._clock())
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
            self._values.pop(key)
        return value


def session_key(server: str, session_id: str) -> str:
    return f"{server}\x00{session_id}"


def revoked_by_cutoff(cutoff: float | None, issued_at: float | None) -> bool:
    """A subject cut-off refuses tokens issued before it; a token without ``iat`` cannot prove it is newer."""
    if cutoff is None:
        return False
    return issued_at is None or issued_at < cutoff
