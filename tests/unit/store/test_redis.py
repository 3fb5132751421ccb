"""RedisStore against a real redis-server on loopback: the contract, pub/sub propagation between two
stores, the deadline on a paused Redis, and reconnection after a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis as RedisClient

from authz.config.compile import compile_store
from authz.config.schema import StoreSpec
from authz.observe import telemetry
from authz.store import MemoryStore, open_store
from authz.store.base import SessionLimit, StoreError
from authz.store.redis import RedisStore
from tests.e2e.harness import Proc, Redis, free_port, start_redis

WAIT = 10.0  # seconds a test waits for something asynchronous before it fails (never a speed assertion)


async def eventually(condition: Callable[[], bool | Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        result = condition()
        if result if isinstance(result, bool) else await result:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"never happened: {what}")


@pytest.fixture(scope="module")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Redis]:
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.proc.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[Redis]:
    """A redis-server of this test alone (it gets paused or restarted)."""
    server = start_redis(tmp_path)
    yield server
    if server.proc.pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(server.proc.pid, signal.SIGCONT)
    server.proc.stop()


@contextlib.asynccontextmanager
async def opened(url: str, prefix: str, **kwargs: float) -> AsyncIterator[RedisStore]:
    store = RedisStore(url, key_prefix=prefix, **kwargs)  # type: ignore[arg-type]
    await store.start()
    try:
        yield store
    finally:
        await store.close()


_prefixes = iter(range(1_000_000))


@pytest.fixture
async def store(shared_redis: Redis) -> AsyncIterator[RedisStore]:
    async with opened(shared_redis.url, f"t{next(_prefixes)}:", timeout=1.0) as s:
        yield s


async def test_open_store_picks_by_url(shared_redis: Redis) -> None:
    assert isinstance(open_store(compile_store(StoreSpec.model_validate({}))), MemoryStore)
    spec = {"url": shared_redis.url, "key_prefix": "o:", "timeout_ms": 200}
    opened_store = open_store(compile_store(StoreSpec.model_validate(spec)))
    assert isinstance(opened_store, RedisStore)
    await opened_store.start()
    try:
        assert opened_store.healthy and telemetry.STORE_STATE["redis"] is True
    finally:
        await opened_store.close()


async def test_revocation_is_local_and_keyed(store: RedisStore) -> None:
    now = time.time()
    assert store.healthy
    await store.revoke_token("j1", now + 60)
    await store.revoke_subject("alice", now)
    assert store.is_revoked("bob", "j1", now)
    assert store.is_revoked("alice", "j2", now - 1) and store.is_revoked("alice", None, None)
    assert not store.is_revoked("alice", "j2", now + 1)
    assert not store.is_revoked("bob", "j2", None)
    await store.revoke_subject("alice", now - 100)  # an older cut-off never narrows a newer one
    assert store.is_revoked("alice", "j2", now - 50)


async def test_bind_session_is_atomic_and_listed(store: RedisStore) -> None:
    owners = await asyncio.gather(*(store.bind_session("s", "sid", f"user{i}", 60) for i in range(20)))
    assert len(set(owners)) == 1  # exactly one subject won the race
    assert await store.bind_session("s", "sid", "someone", 60) == owners[0]
    assert await store.bind_session("s2", "sid", "bob", 60) == "bob"
    [binding] = await store.sessions("s")
    assert (binding.server, binding.session_id, binding.subject) == ("s", "sid", owners[0])
    assert binding.expires_at > time.time() + 50
    assert [b.server for b in await store.sessions(subject="bob")] == ["s2"]
    assert await store.end_session("s", "sid") and not await store.end_session("s", "sid")
    assert await store.bind_session("s", "sid", "carol", 60) == "carol"


async def test_session_ttl_expires(store: RedisStore) -> None:
    await store.bind_session("s", "short", "alice", 0.3)
    assert await store.bind_session("s", "short", "bob", 0.3) == "alice"
    await eventually(lambda: _unbound(store, "short"), "binding expired")
    assert await store.bind_session("s", "short", "bob", 60) == "bob"


async def _unbound(store: RedisStore, sid: str) -> bool:
    return all(b.session_id != sid for b in await store.sessions("s"))


async def test_hit_limits_atomically(store: RedisStore) -> None:
    waits = await asyncio.gather(*(store.hit("k", 5, 60) for _ in range(8)))
    assert sorted(waits)[:5] == [0.0] * 5 and all(w > 0 for w in sorted(waits)[5:])
    assert 0 < max(waits) <= 60
    assert await store.hit("other", 5, 60) == 0.0


async def test_hit_refills(store: RedisStore) -> None:
    assert await store.hit("fast", 1, 0.2) == 0.0
    assert await store.hit("fast", 1, 0.2) > 0
    await eventually(lambda: _allowed(store, "fast"), "a token came back")


async def _allowed(store: RedisStore, key: str) -> bool:
    return await store.hit(key, 1, 0.2) == 0.0


async def test_values(store: RedisStore) -> None:
    await store.put("a", b"\x00bytes", 60)
    assert await store.get("a") == b"\x00bytes"
    results = await asyncio.gather(*(store.take("a") for _ in range(5)))
    assert results.count(b"\x00bytes") == 1 and results.count(None) == 4  # taken once, for everyone
    assert await store.get("missing") is None


async def test_revocation_propagates_between_stores(shared_redis: Redis) -> None:
    prefix = f"t{next(_prefixes)}:"
    async with opened(shared_redis.url, prefix, timeout=1.0) as a, opened(shared_redis.url, prefix, timeout=1.0) as b:
        now = time.time()
        await a.revoke_token("shared-jti", now + 60)
        await eventually(lambda: b.is_revoked(None, "shared-jti", None), "jti revocation reached b")
        await b.revoke_subject("alice", now)
        await eventually(lambda: a.is_revoked("alice", None, now - 1), "subject revocation reached a")
        assert not a.is_revoked("alice", None, now + 1)


async def test_session_end_reaches_other_replicas_cache(shared_redis: Redis) -> None:
    prefix = f"t{next(_prefixes)}:"
    async with opened(shared_redis.url, prefix, timeout=1.0) as a, opened(shared_redis.url, prefix, timeout=1.0) as b:
        assert await a.bind_session("s", "sid", "alice", 3600) == "alice"
        assert await a.bind_session("s", "sid", "alice", 3600) == "alice"  # answered from a's cache
        assert await b.bind_session("s", "sid", "bob", 3600) == "alice"
        assert await b.end_session("s", "sid")
        assert await b.bind_session("s", "sid", "bob", 3600) == "bob"
        await eventually(lambda: _owner_seen(a, "alice", "bob"), "a sees bob own the session after the end")


async def _owner_seen(store: RedisStore, subject: str, owner: str) -> bool:
    return await store.bind_session("s", "sid", subject, 3600) == owner


async def test_new_store_loads_existing_revocations_and_ignores_junk(shared_redis: Redis) -> None:
    prefix = f"t{next(_prefixes)}:"
    now = time.time()
    async with opened(shared_redis.url, prefix, timeout=1.0) as a:
        await a.revoke_token("old", now + 60)
        await a.revoke_token("gone", now - 1)  # already expired: not kept
        await a.revoke_subject("alice", now)
        client = RedisClient.from_url(shared_redis.url)
        try:
            await client.publish(f"{prefix}revocations", b"\xff not json")
            await client.publish(f"{prefix}revocations", b'{"t": "jti", "jti": 5}')
        finally:
            await client.aclose()
        async with opened(shared_redis.url, prefix, timeout=1.0) as b:
            assert b.is_revoked(None, "old", None) and b.is_revoked("alice", None, now - 1)
            assert not b.is_revoked(None, "gone", None)
        await a.revoke_token("after", now + 60)  # a still follows the channel after the junk
        assert a.healthy and a.is_revoked(None, "after", None)


async def test_foreign_values_in_redis_are_ignored(shared_redis: Redis) -> None:
    prefix = f"t{next(_prefixes)}:"
    client = RedisClient.from_url(shared_redis.url)
    try:
        await client.hset(f"{prefix}rev:sub", mapping={"junk": "not a number", "alice": str(time.time())})
        await client.set(f"{prefix}sess:foreign", b"\xff{", px=60_000)
        await client.set(f"{prefix}sess:foreign2", b'{"a": 1}', px=60_000)
    finally:
        await client.aclose()
    async with opened(shared_redis.url, prefix, timeout=1.0) as store:
        assert store.healthy and store.is_revoked("alice", None, None) and not store.is_revoked("junk", None, 0)
        await store.bind_session("s", "sid", "bob", 60)
        assert [b.subject for b in await store.sessions()] == ["bob"]


async def test_paused_redis_hits_the_deadline_then_recovers(own_redis: Redis) -> None:
    pid = own_redis.proc.pid
    assert pid is not None
    async with opened(own_redis.url, "p:", timeout=0.05) as store:
        assert store.healthy
        errors_before = telemetry.STORE_ERRORS.get("sessions")
        os.kill(pid, signal.SIGSTOP)
        try:
            async with asyncio.timeout(WAIT):  # a hang would fail here, not pass
                with pytest.raises(StoreError):
                    await store.bind_session("s", "sid", "alice", 60)
                with pytest.raises(StoreError):
                    await store.hit("k", 1, 60)
            assert telemetry.STORE_ERRORS.get("sessions") == errors_before + 1
            await eventually(lambda: not store.healthy, "paused Redis reported unhealthy")
            assert telemetry.STORE_STATE["redis"] is False
        finally:
            os.kill(pid, signal.SIGCONT)
        await eventually(lambda: store.healthy, "healthy again after SIGCONT")
        assert await store.bind_session("s", "sid", "alice", 60) == "alice"


async def test_reconnects_after_restart_and_reloads(own_redis: Redis, tmp_path: Path) -> None:
    async with opened(own_redis.url, "r:", timeout=0.2) as store:
        await store.bind_session("s", "sid", "alice", 60)
        own_redis.proc.stop()
        await eventually(lambda: not store.healthy, "stopped Redis reported unhealthy")
        with pytest.raises(StoreError):
            await store.bind_session("s", "sid", "alice", 60)
        restarted = start_redis(tmp_path / "again", port=own_redis.port)
        try:
            client = RedisClient.from_url(restarted.url)
            try:  # written while this store was away: only a reload can bring it
                await client.zadd("r:rev:jti", {"while-away": time.time() + 60})
            finally:
                await client.aclose()
            await eventually(lambda: store.healthy, "healthy after restart")
            await eventually(lambda: store.is_revoked(None, "while-away", None), "copy reloaded on reconnect")
            assert await store.bind_session("s", "sid", "bob", 60) == "bob"  # the restarted Redis was empty
        finally:
            restarted.proc.stop()


async def test_unreachable_at_start_does_not_fail_start(tmp_path: Path) -> None:
    async with opened(f"redis://127.0.0.1:{free_port()}/0", "u:", timeout=0.05) as store:
        assert not store.healthy
        assert not store.is_revoked("alice", "j", None)
        with pytest.raises(StoreError):
            await store.get("x")


def _tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it: (ca, cert, key) PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def builder(subject: str, issuer: x509.Name, public: ec.EllipticCurvePublicKey) -> x509.CertificateBuilder:
        now = datetime.datetime.now(datetime.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(issuer)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
        )

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (
        builder("store test ca", name("store test ca"), ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert = (
        builder("127.0.0.1", ca.subject, key.public_key())
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


async def test_rediss_url_with_password_and_database(tmp_path: Path) -> None:
    ca, cert, key = _tls_files(tmp_path)
    port = free_port()
    argv = [
        "redis-server",
        "--port",
        "0",
        "--tls-port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    argv += ["--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca)]
    argv += ["--tls-auth-clients", "no", "--requirepass", "s3cret-pw", "--dir", str(tmp_path)]
    proc = Proc("redis-tls", argv, log_dir=tmp_path).start()
    try:
        proc.wait_port(port)
        url = f"rediss://:s3cret-pw@127.0.0.1:{port}/3?ssl_ca_certs={ca}"
        async with opened(url, "tls:", timeout=1.0) as store:
            assert store.healthy
            await store.put("k", b"v", 60)
            assert await store.get("k") == b"v"
        plain = RedisClient.from_url(url)
        try:
            assert await plain.get("tls:val:k") == b"v"  # in database 3, over TLS
            assert await plain.execute_command("SELECT", 0) and await plain.get("tls:val:k") is None  # type: ignore[no-untyped-call]
        finally:
            await plain.aclose()
        async with opened(f"rediss://:wrong@127.0.0.1:{port}/3?ssl_ca_certs={ca}", "tls:", timeout=0.5) as refused:
            assert not refused.healthy
            with pytest.raises(StoreError):
                await refused.get("k")
        async with opened(f"rediss://:s3cret-pw@127.0.0.1:{port}/3", "tls:", timeout=0.5) as untrusted:
            assert not untrusted.healthy  # the server's certificate is not trusted without its CA
    finally:
        proc.stop()


# ---------------------------------------------------------------- a Redis that forgets (issue 21 item 1)


async def _restart_empty(server: Redis, tmp_path: Path, *stores: RedisStore) -> Redis:
    """Stop the redis-server, wait until ``stores`` notice, start a fresh one (nothing comes back) on its port."""
    server.proc.stop()
    await eventually(lambda: not any(s.healthy for s in stores), "the stores noticed Redis is gone")
    return start_redis(tmp_path / "again", port=server.port)


async def test_revocations_survive_a_redis_restart_without_persistence(own_redis: Redis, tmp_path: Path) -> None:
    now = time.time()
    lost_before = telemetry.STORE_DATA_LOSS.get("redis")
    async with opened(own_redis.url, "l:", timeout=0.5) as a, opened(own_redis.url, "l:", timeout=0.5) as b:
        await a.revoke_token("gone-with-redis", now + 600)
        await b.revoke_subject("mallory", now, until=now + 600)
        await eventually(lambda: b.is_revoked(None, "gone-with-redis", None), "b has the token revocation")
        await eventually(lambda: a.is_revoked("mallory", None, now - 1), "a has the subject revocation")
        restarted = await _restart_empty(own_redis, tmp_path, a, b)
        try:
            await eventually(lambda: a.healthy and b.healthy, "both reconnected")
            for store in (a, b):  # still refused on both replicas, though Redis forgot
                assert store.is_revoked(None, "gone-with-redis", None)
                assert store.is_revoked("mallory", None, now - 1) and not store.is_revoked("mallory", None, now + 1)
            await eventually(lambda: telemetry.STORE_DATA_LOSS.get("redis") >= lost_before + 2, "both saw the loss")
            async with opened(restarted.url, "l:", timeout=0.5) as late:  # a replica started after the loss
                assert late.is_revoked(None, "gone-with-redis", None) and late.is_revoked("mallory", None, now - 1)
            client = RedisClient.from_url(restarted.url)
            try:  # written back into Redis, each until it may go
                assert await client.zscore("{l:rev}:jti", "gone-with-redis") == now + 600
                members: list[Any] = await client.zrange("{l:rev}:sub", 0, -1, withscores=True)
                assert [(json.loads(m), until) for m, until in members] == [(["mallory", now], now + 600)]
            finally:
                await client.aclose()
        finally:
            restarted.proc.stop()


async def test_a_flush_while_connected_is_noticed_and_repaired(
    shared_redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    prefix = f"t{next(_prefixes)}:"
    async with opened(shared_redis.url, prefix, timeout=0.5) as store:
        await store.revoke_token("flushed", time.time() + 600)
        client = RedisClient.from_url(shared_redis.url)
        try:
            epoch = await client.get(f"{{{prefix}rev}}:epoch")
            assert epoch is not None
            with caplog.at_level("ERROR", logger="mcp_authz.store"):
                await client.delete(f"{{{prefix}rev}}:jti", f"{{{prefix}rev}}:epoch")  # as FLUSHALL would
                await eventually(lambda: _zscore(client, f"{{{prefix}rev}}:jti", "flushed"), "written back")
            assert store.is_revoked(None, "flushed", None)
            assert any(getattr(r, "reason", "") == "store_data_loss" for r in caplog.records)
            assert await client.get(f"{{{prefix}rev}}:epoch") not in (None, epoch)  # a new epoch
        finally:
            await client.aclose()


async def _zscore(client: RedisClient, key: str, member: str) -> bool:
    return await client.zscore(key, member) is not None


async def test_revocations_in_redis_are_merged_not_replaced(shared_redis: Redis) -> None:
    """A reload keeps what this replica knows and Redis lacks (a fail-over to a lagging replica)."""
    prefix = f"t{next(_prefixes)}:"
    now = time.time()
    async with opened(shared_redis.url, prefix, timeout=0.5, resync=1.0) as store:
        await store.revoke_token("kept", now + 600)
        await store.revoke_token("short", now + 1.5)
        client = RedisClient.from_url(shared_redis.url)
        try:
            await client.zrem(f"{{{prefix}rev}}:jti", "kept", "short")  # Redis forgets, the epoch stays
            await client.zadd(f"{{{prefix}rev}}:jti", {"from-elsewhere": now + 600})
            await eventually(lambda: store.is_revoked(None, "from-elsewhere", None), "resync merged Redis in")
            assert store.is_revoked(None, "kept", None)
            await eventually(lambda: _zscore(client, f"{{{prefix}rev}}:jti", "kept"), "written back")
            await asyncio.sleep(1.6)  # "short" expired: it is not written back again
            await eventually(lambda: not store.is_revoked(None, "short", None), "expired")
            await store.revoke_token("trigger", now + 600)
            assert await client.zscore(f"{{{prefix}rev}}:jti", "short") is None
        finally:
            await client.aclose()


async def test_subject_revocations_expire_in_redis(shared_redis: Redis) -> None:
    prefix = f"t{next(_prefixes)}:"
    now = time.time()
    async with opened(shared_redis.url, prefix, timeout=0.5) as a:
        await a.revoke_subject("alice", now, until=now + 0.5)
        await a.revoke_subject("bob", now, until=now + 600)
        assert a.is_revoked("alice", None, now - 1)
        await asyncio.sleep(0.6)
        assert not a.is_revoked("alice", None, now - 1) and a.is_revoked("bob", None, now - 1)
        await a.revoke_subject("carol", time.time())  # each revocation drops the expired ones from Redis
        client = RedisClient.from_url(shared_redis.url)
        try:
            stored: list[Any] = await client.zrange(f"{{{prefix}rev}}:sub", 0, -1)
            members = [json.loads(m)[0] for m in stored]
        finally:
            await client.aclose()
        assert sorted(members) == ["bob", "carol"]
        async with opened(shared_redis.url, prefix, timeout=0.5) as b:
            assert not b.is_revoked("alice", None, now - 1) and b.is_revoked("bob", None, now - 1)


async def test_legacy_revocation_keys_of_0_1_are_read(shared_redis: Redis) -> None:
    prefix = f"t{next(_prefixes)}:"
    client = RedisClient.from_url(shared_redis.url)
    try:
        await client.zadd(f"{prefix}rev:jti", {"old-jti": time.time() + 600})
        await client.hset(f"{prefix}rev:sub", mapping={"old-subject": str(time.time())})
    finally:
        await client.aclose()
    async with opened(shared_redis.url, prefix, timeout=0.5) as store:
        assert store.is_revoked(None, "old-jti", None) and store.is_revoked("old-subject", None, time.time() - 10)


# ---------------------------------------------------------------- sessions per subject (issue 21 item 2)


async def test_sessions_per_subject_are_capped_across_replicas(shared_redis: Redis) -> None:
    prefix = f"t{next(_prefixes)}:"
    async with opened(shared_redis.url, prefix, timeout=1.0) as a, opened(shared_redis.url, prefix, timeout=1.0) as b:
        assert await a.bind_session("s", "alice-1", "alice", 60, max_per_subject=2) == "alice"
        assert await a.bind_session("s", "m-1", "mallory", 60, max_per_subject=2) == "mallory"
        assert await b.bind_session("s", "m-2", "mallory", 60, max_per_subject=2) == "mallory"
        with pytest.raises(SessionLimit) as refused:
            await a.bind_session("s", "m-3", "mallory", 60, max_per_subject=2)
        assert 50 < refused.value.retry_after <= 60
        assert [s.session_id for s in await a.sessions(subject="mallory")] != []
        assert "m-3" not in [s.session_id for s in await b.sessions(subject="mallory")]  # unbound again
        assert await b.bind_session("s", "m-3", "alice", 60, max_per_subject=2) == "alice"  # free for another
        assert await a.bind_session("s", "m-1", "mallory", 60, max_per_subject=2) == "mallory"  # a known one
        assert await b.end_session("s", "m-1")
        assert await a.bind_session("s", "m-4", "mallory", 60, max_per_subject=2) == "mallory"  # its place is free


async def test_session_counts_expire_with_their_sessions(shared_redis: Redis) -> None:
    prefix = f"t{next(_prefixes)}:"
    async with opened(shared_redis.url, prefix, timeout=1.0) as store:
        await store.bind_session("s", "short", "mallory", 0.3, max_per_subject=1)
        with pytest.raises(SessionLimit):
            await store.bind_session("s", "next", "mallory", 60, max_per_subject=1)
        await asyncio.sleep(0.4)
        assert await store.bind_session("s", "next", "mallory", 60, max_per_subject=1) == "mallory"


# ---------------------------------------------------------------- WAIT for revocations (issue 20)


async def test_revocation_replicas_waits_for_a_replica(shared_redis: Redis, tmp_path: Path) -> None:
    prefix = f"t{next(_prefixes)}:"
    async with opened(shared_redis.url, prefix, timeout=0.5, revocation_replicas=1, revocation_wait=0.2) as lonely:
        with pytest.raises(StoreError, match=r"0 of store\.revocation_replicas=1"):
            await lonely.revoke_token("unreplicated", time.time() + 600)
        assert lonely.is_revoked(None, "unreplicated", None)  # in force here all the same
    replica = start_redis(tmp_path, extra=["--replicaof", "127.0.0.1", str(shared_redis.port)])
    try:
        client = RedisClient.from_url(replica.url)
        try:
            await eventually(lambda: _replica_in_sync(client), "the replica caught up")
            async with opened(shared_redis.url, prefix, timeout=0.5, revocation_replicas=1) as store:
                await store.revoke_token("replicated", time.time() + 600)
                await store.revoke_subject("alice", time.time())
            assert await client.zscore(f"{{{prefix}rev}}:jti", "replicated") is not None
        finally:
            await client.aclose()
    finally:
        replica.proc.stop()


async def _replica_in_sync(client: RedisClient) -> bool:
    info = await client.info("replication")
    return info.get("master_link_status") == "up"
