"""MemoryStore: revocation, session binding, rate limits, opaque values, expiry and bounds."""

from __future__ import annotations

import pytest

from authz.observe import telemetry
from authz.store.base import SessionLimit, Store, StoreError
from authz.store.memory import MemoryStore, gcra


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make(max_entries: int = 1000) -> tuple[MemoryStore, Clock]:
    clock = Clock()
    return MemoryStore(max_entries=max_entries, clock=clock), clock


def test_is_a_store() -> None:
    store: Store = MemoryStore()
    assert store.kind == "memory" and store.healthy


async def test_revoke_token_until_exp() -> None:
    store, clock = make()
    assert not store.is_revoked("alice", "j1", clock.now - 10)
    await store.revoke_token("j1", clock.now + 60)
    assert store.is_revoked("alice", "j1", clock.now - 10)
    assert store.is_revoked(None, "j1", None)
    assert not store.is_revoked("alice", "j2", clock.now - 10)
    clock.now += 61  # past exp: the token is refused for expiry anyway, the entry goes
    assert not store.is_revoked("alice", "j1", clock.now - 10)


async def test_revoke_subject_cuts_off_older_tokens() -> None:
    store, clock = make()
    await store.revoke_subject("alice", clock.now)
    assert store.is_revoked("alice", "j1", clock.now - 1)
    assert store.is_revoked("alice", None, None)  # no iat: cannot prove it is newer
    assert not store.is_revoked("alice", "j2", clock.now)
    assert not store.is_revoked("alice", "j2", clock.now + 5)
    assert not store.is_revoked("bob", "j1", clock.now - 1)
    assert not store.is_revoked(None, None, None)


async def test_revoke_subject_keeps_the_latest_cutoff() -> None:
    store, clock = make()
    await store.revoke_subject("alice", clock.now)
    await store.revoke_subject("alice", clock.now - 100)  # an older cut-off never narrows a newer one
    assert store.is_revoked("alice", None, clock.now - 50)


async def test_bind_session_first_subject_owns_it() -> None:
    store, clock = make()
    assert await store.bind_session("s", "sid", "alice", 60) == "alice"
    assert await store.bind_session("s", "sid", "bob", 60) == "alice"
    assert await store.bind_session("other", "sid", "bob", 60) == "bob"  # per server
    [binding] = await store.sessions("s")
    assert (binding.server, binding.session_id, binding.subject) == ("s", "sid", "alice")
    assert binding.expires_at == clock.now + 60


async def test_bind_session_refreshes_ttl_and_expires() -> None:
    store, clock = make()
    await store.bind_session("s", "sid", "alice", 60)
    clock.now += 50
    assert await store.bind_session("s", "sid", "bob", 60) == "alice"  # refreshed: now + 60
    clock.now += 50
    assert await store.bind_session("s", "sid", "alice", 60) == "alice"
    clock.now += 61
    assert await store.sessions() == []
    assert await store.bind_session("s", "sid", "bob", 60) == "bob"  # expired: free again


async def test_end_session() -> None:
    store, _ = make()
    await store.bind_session("s", "sid", "alice", 60)
    await store.bind_session("s", "sid2", "bob", 60)
    assert await store.end_session("s", "sid")
    assert not await store.end_session("s", "sid")
    assert [b.session_id for b in await store.sessions(subject="bob")] == ["sid2"]
    assert await store.sessions(subject="alice") == []
    assert await store.bind_session("s", "sid", "bob", 60) == "bob"


async def test_hit_allows_limit_then_waits() -> None:
    store, clock = make()
    assert [await store.hit("k", 3, 60) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = await store.hit("k", 3, 60)
    assert wait == 20.0  # one token every 60/3 s
    assert await store.hit("other", 3, 60) == 0.0
    clock.now += 20
    assert await store.hit("k", 3, 60) == 0.0
    assert await store.hit("k", 3, 60) > 0


async def test_refused_hits_do_not_consume() -> None:
    store, clock = make()
    await store.hit("k", 1, 10)
    for _ in range(5):
        assert await store.hit("k", 1, 10) == 10.0
    clock.now += 10
    assert await store.hit("k", 1, 10) == 0.0


def test_gcra_burst_and_rate() -> None:
    tat, wait = gcra(None, 100.0, 2, 10.0)
    assert (tat, wait) == (105.0, 0.0)
    tat, wait = gcra(tat, 100.0, 2, 10.0)
    assert (tat, wait) == (110.0, 0.0)
    assert gcra(tat, 100.0, 2, 10.0) == (110.0, 5.0)
    assert gcra(tat, 105.0, 2, 10.0) == (115.0, 0.0)


async def test_values_put_get_take_and_expire() -> None:
    store, clock = make()
    await store.put("a", b"1", 10)
    assert await store.get("a") == b"1"
    assert await store.take("a") == b"1"
    assert await store.take("a") is None
    await store.put("b", b"2", 10)
    clock.now += 10
    assert await store.get("b") is None


async def test_tables_are_bounded() -> None:
    store, _ = make(max_entries=3)
    for i in range(5):
        await store.put(f"k{i}", b"v", 100)
    assert [await store.get(f"k{i}") for i in range(5)] == [None, None, b"v", b"v", b"v"]
    for i in range(5):
        await store.bind_session("s", f"sid{i}", "alice", 100)
    assert len(await store.sessions()) == 3


async def test_a_full_revocation_table_refuses_rather_than_forgets() -> None:
    store, clock = make(max_entries=3)
    for i in range(3):
        await store.revoke_token(f"j{i}", clock.now + 100 + i)
    with pytest.raises(StoreError, match="revoked_tokens holds 3 live entries"):
        await store.revoke_token("j3", clock.now + 100)
    assert all(store.is_revoked(None, f"j{i}", None) for i in range(3))  # none forgotten
    await store.revoke_token("j1", clock.now + 500)  # a known one may be extended
    clock.now += 101  # j0 expired: its place is free
    await store.revoke_token("j3", clock.now + 100)
    assert store.is_revoked(None, "j3", None) and store.is_revoked(None, "j1", None)
    assert not store.is_revoked(None, "j0", None)


async def test_full_table_drops_expired_before_live() -> None:
    store, clock = make(max_entries=2)
    await store.put("short", b"s", 1)
    await store.put("long", b"l", 100)
    clock.now += 2
    await store.put("new", b"n", 100)
    assert await store.get("long") == b"l" and await store.get("new") == b"n"


async def test_subject_revocation_expires_after_until() -> None:
    store, clock = make(max_entries=2)
    await store.revoke_subject("alice", clock.now, until=clock.now + 100)
    await store.revoke_subject("bob", clock.now, until=clock.now + 50)
    assert store.is_revoked("alice", None, clock.now - 1) and store.is_revoked("bob", None, clock.now - 1)
    clock.now += 51  # bob's tokens from before the cut-off have all expired: the entry goes
    assert not store.is_revoked("bob", None, None) and store.is_revoked("alice", None, clock.now - 60)
    await store.revoke_subject("carol", clock.now, until=clock.now + 100)  # bob's place is free again
    clock.now += 50
    assert not store.is_revoked("alice", None, None)


async def test_subject_revocation_without_until_is_kept_a_default_lifetime() -> None:
    store, clock = make()
    await store.revoke_subject("dave", clock.now)
    clock.now += 86400
    assert store.is_revoked("dave", None, clock.now - 86400 - 1)
    clock.now += 301
    assert not store.is_revoked("dave", None, None)


async def test_a_later_revocation_of_a_subject_never_shortens_the_first() -> None:
    store, clock = make()
    await store.revoke_subject("alice", clock.now, until=clock.now + 1000)
    await store.revoke_subject("alice", clock.now - 10, until=clock.now + 10)
    clock.now += 500
    assert store.is_revoked("alice", None, clock.now - 600)


async def test_new_sessions_per_subject_are_capped_and_a_bystander_is_unaffected() -> None:
    store, clock = make(max_entries=1000)
    assert await store.bind_session("s", "alice-1", "alice", 60, max_per_subject=3) == "alice"
    for i in range(3):
        await store.bind_session("s", f"flood-{i}", "mallory", 60, max_per_subject=3)
    with pytest.raises(SessionLimit):
        await store.bind_session("s", "flood-3", "mallory", 60, max_per_subject=3)
    with pytest.raises(SessionLimit):  # the cap counts the subject's sessions on every server
        await store.bind_session("other", "flood-4", "mallory", 60, max_per_subject=3)
    assert sorted(b.session_id for b in await store.sessions(subject="mallory")) == ["flood-0", "flood-1", "flood-2"]
    assert await store.bind_session("s", "flood-0", "mallory", 60, max_per_subject=3) == "mallory"  # a known one
    assert await store.bind_session("s", "alice-1", "mallory", 60, max_per_subject=3) == "alice"  # not hers to take
    assert await store.bind_session("s", "alice-2", "alice", 60, max_per_subject=3) == "alice"
    assert await store.end_session("s", "flood-1")  # an ended session frees its place
    assert await store.bind_session("s", "flood-5", "mallory", 60, max_per_subject=3) == "mallory"
    clock.now += 61  # so do expired ones
    assert await store.bind_session("s", "flood-6", "mallory", 60, max_per_subject=3) == "mallory"


class CountingNow(float):
    """A clock reading that counts how often it is compared: every entry a store operation looks at."""

    compared = 0

    def _count(self) -> float:
        CountingNow.compared += 1
        return float(self)

    def __lt__(self, other: object) -> bool:
        return self._count() < other  # type: ignore[operator]

    def __le__(self, other: object) -> bool:
        return self._count() <= other  # type: ignore[operator]

    def __gt__(self, other: object) -> bool:
        return self._count() > other  # type: ignore[operator]

    def __ge__(self, other: object) -> bool:
        return self._count() >= other  # type: ignore[operator]


async def _comparisons_per_new_session(entries: int, flood: int = 200) -> float:
    """Fill a store of ``entries`` sessions (some expired), then count comparisons per new session."""
    now = [1_000_000.0]
    store = MemoryStore(max_entries=entries, clock=lambda: CountingNow(now[0]))
    for i in range(entries):
        await store.bind_session("s", f"old-{i}", f"user-{i % 97}", 30 if i % 1000 == 0 else 3600)
    now[0] += 60  # one in a thousand of them has expired, out of order
    CountingNow.compared = 0
    for i in range(flood):
        await store.bind_session("s", f"flood-{i}", f"flooder-{i % 50}", 60)
    return CountingNow.compared / flood


async def test_a_session_flood_costs_the_same_per_insert_at_1k_and_50k_entries() -> None:
    small, large = await _comparisons_per_new_session(1_000), await _comparisons_per_new_session(50_000)
    assert large <= small + 1 and large <= 8, (small, large)  # no walk over the table


async def test_a_used_session_survives_a_flood_that_fills_the_table() -> None:
    store, _ = make(max_entries=100)
    await store.bind_session("s", "mine", "alice", 3600)
    evicted = telemetry.STORE_EVICTIONS.get("sessions")
    for i in range(1000):
        await store.bind_session("s", f"flood-{i}", f"flooder-{i}", 3600)
        if i % 50 == 0:
            assert await store.bind_session("s", "mine", "bob", 3600) == "alice"  # used: kept, still hers
    assert len(await store.sessions()) == 100
    assert telemetry.STORE_EVICTIONS.get("sessions") >= evicted + 900  # evictions are counted
