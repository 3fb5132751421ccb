"""MemoryStore: revocation, session binding, rate limits, opaque values, expiry and bounds."""

from __future__ import annotations

from authz.store.base import Store
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
    store, clock = make(max_entries=3)
    for i in range(5):
        await store.put(f"k{i}", b"v", 100)
    assert [await store.get(f"k{i}") for i in range(5)] == [None, None, b"v", b"v", b"v"]
    for i in range(5):
        await store.bind_session("s", f"sid{i}", "alice", 100)
    assert len(await store.sessions()) == 3
    for i in range(10):
        await store.revoke_token(f"j{i}", clock.now + 100)
    assert not store.is_revoked(None, "j0", None) and store.is_revoked(None, "j9", None)


async def test_full_table_drops_expired_before_live() -> None:
    store, clock = make(max_entries=2)
    await store.put("short", b"s", 1)
    await store.put("long", b"l", 100)
    clock.now += 2
    await store.put("new", b"n", 100)
    assert await store.get("long") == b"l" and await store.get("new") == b"n"
