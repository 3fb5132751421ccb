"""The Redis store: state shared by a fleet of replicas, through redis-py's asyncio client.

Every call runs under a deadline (``timeout``) and raises ``StoreError`` past it or on any Redis
error. Writes that must be atomic are Lua scripts (rate limit, session bind, subject cut-off) or
single commands (GETDEL). Revocations are also kept in a local copy, so ``is_revoked`` makes no
round trip: a background task subscribes to the revocation channel, applies each change, and
reloads the whole copy after every (re)connect and every ``resync`` seconds. The same task pings
Redis every second; ``healthy`` follows, each transition logged once and reported to telemetry.

A session owner's own uses are answered from a local cache for a few seconds (the owner of a
binding never changes while it lives); ending a session is published on the same channel, so every
replica drops its cached owner.

Keys (all under ``key_prefix``): ``rev:jti`` (sorted set, jti scored by exp), ``rev:sub`` (hash,
subject → cut-off), ``sess:<sha256>`` (JSON [server, session id, subject], TTL), ``rl:<key>``
(GCRA theoretical arrival time, TTL), ``val:<key>`` (opaque bytes, TTL); channel ``revocations``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from authz.observe import telemetry
from authz.store.base import SessionBinding, StoreError
from authz.store.memory import revoked_by_cutoff

log = logging.getLogger("mcp_authz.store")
T = TypeVar("T")

PROBE_INTERVAL = 1.0  # seconds between health pings (and pub/sub polls)
SESSION_REFRESH = 5.0  # seconds an owner's own use of a session is answered from the local cache
SESSION_CACHE = 10_000  # sessions whose owner is cached locally
RECONNECT_DELAY = 0.5  # seconds before the background task reconnects after a failure

# KEYS: session key, channel. ARGV: message. Deleting publishes, so every replica drops its cached owner.
_END_SESSION = """
local n = redis.call('DEL', KEYS[1])
redis.call('PUBLISH', KEYS[2], ARGV[1])
return n
"""

# GCRA in Redis time: ARGV limit, window (s). Returns "0" if allowed, else seconds to wait (as a string:
# Lua numbers would be truncated to integers in the reply).
_HIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + window / limit
local allowed_at = new_tat - window
if allowed_at > now then return tostring(allowed_at - now) end
redis.call('SET', KEYS[1], string.format('%.6f', new_tat), 'PX', math.ceil((new_tat - now) * 1000))
return '0'
"""

# Bind if unbound, refresh the TTL either way; returns the stored [server, session id, owner] JSON.
_BIND = """
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return ARGV[1]
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return v
"""

# KEYS: rev:jti, channel. ARGV: jti, exp, now, message. Expired ids are dropped on the way.
_REVOKE_TOKEN = """
redis.call('ZADD', KEYS[1], 'GT', ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
redis.call('PUBLISH', KEYS[2], ARGV[4])
return 1
"""

# KEYS: rev:sub, channel. ARGV: subject, cut-off. A cut-off only moves forward; returns the one kept.
_REVOKE_SUBJECT = """
local c = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '-1')
local before = tonumber(ARGV[2])
if before > c then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  c = before
end
local msg = cjson.encode({t = 'sub', sub = ARGV[1], before = c})
redis.call('PUBLISH', KEYS[2], msg)
return tostring(c)
"""


class RedisStore:
    """The ``Store`` for replicas sharing one Redis. ``start()`` before use, ``close()`` after."""

    kind = "redis"

    def __init__(
        self,
        url: str,
        *,
        key_prefix: str = "mcp-authz:",
        timeout: float = 0.05,
        pool_size: int = 32,
        resync: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._timeout = timeout
        self._slow_timeout = max(1.0, timeout * 20)  # listing sessions, full reloads, connecting
        self._resync = resync
        self._clock = clock
        self._pool = BlockingConnectionPool.from_url(
            url,
            max_connections=pool_size,
            timeout=timeout,  # waiting for a free connection counts against the deadline too
            socket_connect_timeout=self._slow_timeout,
            retry=Retry(NoBackoff(), 1),  # one immediate retry: a pooled connection may predate a restart
        )
        self._redis = Redis(connection_pool=self._pool)
        # The background task's own connections (pub/sub, ping, reloads): never queued behind Checks.
        self._watch = Redis.from_url(url, socket_connect_timeout=self._slow_timeout, retry=Retry(NoBackoff(), 1))
        self._prefix = key_prefix
        self._channel = f"{key_prefix}revocations"
        self._jti_key = f"{key_prefix}rev:jti"
        self._sub_key = f"{key_prefix}rev:sub"
        self._hit = self._redis.register_script(_HIT)
        self._bind = self._redis.register_script(_BIND)
        self._revoke_token = self._redis.register_script(_REVOKE_TOKEN)
        self._revoke_subject = self._redis.register_script(_REVOKE_SUBJECT)
        self._end_session = self._redis.register_script(_END_SESSION)
        self._owners: dict[str, tuple[str, float]] = {}  # session key → (owner, monotonic time confirmed)
        self._jtis: dict[str, float] = {}  # local copy: jti → exp
        self._subjects: dict[str, float] = {}  # local copy: subject → cut-off
        self._healthy: bool | None = None  # None until the first answer (or failure)
        self._task: asyncio.Task[None] | None = None
        self._synced = asyncio.Event()

    # --- lifecycle and health

    @property
    def healthy(self) -> bool:
        return self._healthy is True

    async def start(self) -> None:
        """Start the background task and wait (up to the slow deadline) for the first full load.

        An unreachable Redis does not fail the start: the store reports unhealthy and keeps trying.
        """
        if self._task is None:
            self._task = asyncio.create_task(self._sync_forever(), name="store-sync")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._slow_timeout):
                await self._synced.wait()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._redis.aclose()
        await self._watch.aclose()
        await self._pool.disconnect()

    def _mark(self, healthy: bool, why: str = "") -> None:
        if self._healthy is healthy:
            return
        self._healthy = healthy
        telemetry.set_store_state(self.kind, healthy)
        if healthy:
            log.info("store reachable", extra={"store": self.kind, "reason": "store_up"})
        else:
            log.warning("store unreachable: %s", why, extra={"store": self.kind, "reason": "store_down"})

    async def _call(self, feature: str, call: Awaitable[T], timeout: float | None = None) -> T:
        """Await one Redis call under the deadline; any failure is counted and becomes ``StoreError``.

        One failed call does not change ``healthy`` (under load a call may miss its deadline, or find
        the pool busy, while Redis is fine); the background task's connection and ping decide that.
        """
        try:
            async with asyncio.timeout(timeout or self._timeout):
                return await call
        except (RedisError, OSError, TimeoutError) as exc:
            why = f"{type(exc).__name__}: {exc}"[:200] if str(exc) else type(exc).__name__
            telemetry.count_store_error(feature)
            raise StoreError(f"{feature}: {why}") from None

    # --- revocation: the local copy

    def is_revoked(self, subject: str | None, jti: str | None, issued_at: float | None) -> bool:
        if jti is not None:
            exp = self._jtis.get(jti)
            if exp is not None and exp > self._clock():
                return True
        if subject is None:
            return False
        return revoked_by_cutoff(self._subjects.get(subject), issued_at)

    async def revoke_token(self, jti: str, expires_at: float) -> None:
        message = json.dumps({"t": "jti", "jti": jti, "exp": expires_at})
        keys = [self._jti_key, self._channel]
        await self._call("revocation", self._revoke_token(keys=keys, args=[jti, expires_at, self._clock(), message]))
        self._apply({"t": "jti", "jti": jti, "exp": expires_at})

    async def revoke_subject(self, subject: str, before: float) -> None:
        keys = [self._sub_key, self._channel]
        kept = await self._call("revocation", self._revoke_subject(keys=keys, args=[subject, before]))
        self._apply({"t": "sub", "sub": subject, "before": float(kept)})

    def _apply(self, change: Any) -> None:
        """One change from the channel (or made here) applied to the local copy; junk is ignored."""
        if not isinstance(change, dict):
            return
        kind = change.get("t")
        if kind == "jti" and isinstance(change.get("jti"), str) and isinstance(change.get("exp"), (int, float)):
            self._jtis[change["jti"]] = max(float(change["exp"]), self._jtis.get(change["jti"], 0.0))
        elif kind == "sub" and isinstance(change.get("sub"), str) and isinstance(change.get("before"), (int, float)):
            self._subjects[change["sub"]] = max(float(change["before"]), self._subjects.get(change["sub"], 0.0))
        elif kind == "end" and isinstance(change.get("key"), str):
            self._owners.pop(change["key"], None)

    async def _reload(self) -> None:
        """Replace the local copy with what Redis holds (expired token ids left out)."""
        now = self._clock()
        jtis, subjects = await self._call("revocation", self._load(now), timeout=self._slow_timeout)
        self._jtis = {m.decode(errors="replace"): float(score) for m, score in jtis}
        self._subjects = {
            k.decode(errors="replace"): cut for k, v in subjects.items() if (cut := _number(v)) is not None
        }
        self._owners.clear()  # session ends may have been missed too

    async def _load(self, now: float) -> tuple[list[tuple[bytes, float]], dict[bytes, bytes]]:
        async with self._watch.pipeline(transaction=False) as pipe:
            pipe.zrangebyscore(self._jti_key, now, "+inf", withscores=True)
            pipe.hgetall(self._sub_key)
            jtis, subjects = await pipe.execute()
        return jtis, subjects

    async def _sync_forever(self) -> None:
        while True:
            pubsub = self._watch.pubsub(ignore_subscribe_messages=True)
            try:
                await self._call("revocation", pubsub.subscribe(self._channel), timeout=self._slow_timeout)
                await self._reload()  # after subscribing: no change falls between the two
                self._mark(True)
                self._synced.set()
                await self._follow(pubsub)
            except StoreError as exc:
                self._mark(False, str(exc))  # try again shortly
            except Exception as exc:  # the connection dropped (RedisError, OSError) or Redis held junk
                if not isinstance(exc, RedisError | OSError):
                    log.exception("store background task failed; reconnecting", extra={"store": self.kind})
                telemetry.count_store_error("revocation")
                self._mark(False, f"{type(exc).__name__}: {exc}"[:200])
            finally:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(self._timeout):
                        await pubsub.aclose()  # type: ignore[no-untyped-call]
            self._synced.set()  # start() stops waiting once the first attempt is over, good or bad
            await asyncio.sleep(RECONNECT_DELAY)

    async def _follow(self, pubsub: PubSub) -> None:
        """Apply channel messages; ping every second; reload every ``resync`` seconds."""
        next_resync = time.monotonic() + self._resync
        next_probe = time.monotonic() + PROBE_INTERVAL
        while True:
            message = await pubsub.get_message(timeout=PROBE_INTERVAL)
            if message is not None and message.get("type") == "message":
                with contextlib.suppress(ValueError):
                    self._apply(json.loads(message["data"]))
            now = time.monotonic()
            if now >= next_probe:
                # A paused or cut-off Redis may keep the sockets open and silent: an unanswered ping
                # (StoreError) ends this connection, and the caller subscribes and reloads afresh.
                await self._call("revocation", self._watch.ping(), timeout=self._slow_timeout)
                next_probe = time.monotonic() + PROBE_INTERVAL
            if now >= next_resync:
                await self._reload()
                next_resync = time.monotonic() + self._resync

    # --- sessions

    def _session_key(self, server: str, session_id: str) -> str:
        digest = hashlib.sha256(f"{server}\x00{session_id}".encode()).hexdigest()
        return f"{self._prefix}sess:{digest}"

    async def bind_session(self, server: str, session_id: str, subject: str, ttl: float) -> str:
        """Atomic in Redis; the owner's own uses are answered locally for a few seconds (an owner never
        changes while the binding lives, an end is published), so the TTL is refreshed at most that often."""
        key = self._session_key(server, session_id)
        now = time.monotonic()
        cached = self._owners.get(key)
        fresh = cached is not None and now - cached[1] < min(ttl / 10, SESSION_REFRESH)
        if fresh and self._healthy and cached is not None and cached[0] == subject:
            return subject
        value = json.dumps([server, session_id, subject])
        stored = await self._call("sessions", self._bind(keys=[key], args=[value, max(1, int(ttl * 1000))]))
        owner = str(json.loads(stored)[2])
        if len(self._owners) >= SESSION_CACHE:
            self._owners.pop(next(iter(self._owners)))
        self._owners.pop(key, None)
        self._owners[key] = (owner, now)
        return owner

    async def end_session(self, server: str, session_id: str) -> bool:
        key = self._session_key(server, session_id)
        message = json.dumps({"t": "end", "key": key})
        deleted = await self._call("sessions", self._end_session(keys=[key, self._channel], args=[message]))
        self._owners.pop(key, None)
        return bool(deleted)

    async def sessions(self, server: str | None = None, subject: str | None = None) -> list[SessionBinding]:
        return await self._call("sessions", self._list_sessions(server, subject), timeout=self._slow_timeout)

    async def _list_sessions(self, server: str | None, subject: str | None) -> list[SessionBinding]:
        keys = [k async for k in self._redis.scan_iter(match=f"{self._prefix}sess:*", count=500)]
        if not keys:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.get(key)
                pipe.pttl(key)
            replies = await pipe.execute()
        now = self._clock()
        found = []
        for value, ttl in zip(replies[::2], replies[1::2], strict=True):
            binding = _binding(value, ttl, now)
            if binding is None:
                continue
            if (server is None or binding.server == server) and (subject is None or binding.subject == subject):
                found.append(binding)
        return found

    # --- rate limits

    async def hit(self, key: str, limit: int, window: float) -> float:
        wait = await self._call("rate_limits", self._hit(keys=[f"{self._prefix}rl:{key}"], args=[limit, window]))
        return float(wait)

    # --- opaque values

    async def get(self, key: str) -> bytes | None:
        value = await self._call("values", self._redis.get(f"{self._prefix}val:{key}"))
        return value if isinstance(value, bytes) else None

    async def put(self, key: str, value: bytes, ttl: float) -> None:
        await self._call("values", self._redis.set(f"{self._prefix}val:{key}", value, px=max(1, int(ttl * 1000))))

    async def take(self, key: str) -> bytes | None:
        value = await self._call("values", self._redis.getdel(f"{self._prefix}val:{key}"))
        return value if isinstance(value, bytes) else None


def _binding(value: bytes | None, ttl_ms: int, now: float) -> SessionBinding | None:
    """A stored [server, session id, owner] as a binding; None for a vanished key or a value not ours."""
    if value is None or ttl_ms < 0:
        return None
    try:
        fields = json.loads(value)
    except ValueError:
        return None
    if not (isinstance(fields, list) and len(fields) == 3 and all(isinstance(f, str) for f in fields)):
        return None
    return SessionBinding(fields[0], fields[1], fields[2], now + ttl_ms / 1000)


def _number(value: bytes) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None  # not written by this store: ignored
