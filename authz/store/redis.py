"""The Redis store: state shared by a fleet of replicas, through redis-py's asyncio clients.

One node, Sentinel or Redis Cluster (``topology.py``). Every call runs under a deadline
(``timeout``) and raises ``StoreError`` past it or on any Redis error. Writes that must be atomic
are Lua scripts or single commands, each on one key, so every one of them works in a cluster; the
revocation keys share one hash slot (``{<prefix>rev}``), so they are loaded together.

Revocations are kept in a local copy, so ``is_revoked`` makes no round trip: a background task
subscribes to the revocation channel, applies each change, and reloads after every (re)connect
and every ``resync`` seconds. A reload **merges**: what Redis lacks of this replica's copy is
written back (until each entry expires) and announced, so a Redis that lost its data (restarted
without persistence, failed over to a replica that lagged) gets every live revocation back from
the replicas that still hold it. An epoch key written at start tells a data loss apart: when it is
gone or changed, the loss is logged (``store_data_loss``) and counted
(``mcp_authz.store.data_loss``). The same task reads the epoch every second as its health probe;
``healthy`` follows, each transition logged once and reported to telemetry.

``revocation_replicas`` > 0 makes a revocation wait (``WAIT``) until that many Redis replicas
have it, or fail: then a fail-over cannot lose it.

A session owner's own uses are answered from a local cache for a few seconds (the owner of a
binding never changes while it lives); ending a session is published on the same channel, so
every replica drops its cached owner. With ``max_per_subject``, each subject's live sessions are
counted in a sorted set (session key → expiry); a new one beyond the limit is unbound again.

Keys (all under ``key_prefix``): ``{<prefix>rev}:jti`` (sorted set, jti scored by exp),
``{<prefix>rev}:sub`` (sorted set, ``[subject, cut-off]`` scored by when it may go),
``{<prefix>rev}:epoch``, ``sess:<sha256>`` (JSON [server, session id, subject], TTL),
``subj:<sha256>`` (sorted set of a subject's session keys), ``rl:<key>`` (GCRA theoretical arrival
time, TTL), ``val:<key>`` (opaque bytes, TTL); channel ``revocations``. Read once more while they
exist, for an upgrade from 0.1: ``rev:jti`` (sorted set) and ``rev:sub`` (hash subject → cut-off).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from authz.observe import telemetry
from authz.store.base import DEFAULT_SUBJECT_KEEP, SessionBinding, SessionLimit, StoreError
from authz.store.memory import revoked_by_cutoff
from authz.store.topology import Connections, RedisTopology

log = logging.getLogger("mcp_authz.store")
T = TypeVar("T")

PROBE_INTERVAL = 1.0  # seconds between health probes (and pub/sub polls)
SESSION_REFRESH = 5.0  # seconds an owner's own use of a session is answered from the local cache
SESSION_CACHE = 10_000  # sessions whose owner is cached locally
RECONNECT_DELAY = 0.5  # seconds before the background task reconnects after a failure
RESTORE_CHUNK = 500  # entries per write when a reload gives Redis back what it lost
WARM_CONNECTIONS = 16  # pooled connections opened on (re)connect, so a burst of Checks does not open them

# KEYS: session key. ARGV: channel, message. Returns the deleted value (nil if none); the delete is
# published, so every replica drops its cached owner.
_END_SESSION = """
local v = redis.call('GET', KEYS[1])
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[1], ARGV[2])
return v
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

# Bind if unbound, refresh the TTL either way; returns {stored [server, session id, owner] JSON, 1 if new}.
_BIND = """
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {ARGV[1], 1}
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {v, 0}
"""

# KEYS: the subject's session set. ARGV: session key, now (ms), expiry (ms), limit. Admits the session
# unless the subject holds `limit` live ones; returns "0", else ms until its first one expires.
_ADMIT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return tostring(tonumber(first[2]) - tonumber(ARGV[2]))
end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
local keep = tonumber(ARGV[3]) - tonumber(ARGV[2])
if redis.call('PTTL', KEYS[1]) < keep then redis.call('PEXPIRE', KEYS[1], keep) end
return '0'
"""

# KEYS: session key. ARGV: the value bound. Undo a binding refused by _ADMIT (only if still ours).
_UNBIND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: a revocation set. ARGV: member, score (when it may go), now, channel, message. A score only
# grows; expired members are dropped on the way; the change is published.
_REVOKE = """
redis.call('ZADD', KEYS[1], 'GT', ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
"""


_SCRIPTS = (_HIT, _BIND, _ADMIT, _UNBIND, _REVOKE, _END_SESSION)


class RedisStore:
    """The ``Store`` for replicas sharing one Redis topology. ``start()`` before use, ``close()`` after."""

    kind = "redis"

    def __init__(
        self,
        target: str | RedisTopology,
        *,
        key_prefix: str = "mcp-authz:",
        timeout: float = 0.05,
        pool_size: int = 32,
        resync: float = 30.0,
        revocation_replicas: int = 0,
        revocation_wait: float = 0.5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        topology = target if isinstance(target, RedisTopology) else RedisTopology.from_url(target)
        self._timeout = timeout
        self._slow_timeout = max(1.0, timeout * 20)  # listing sessions, full reloads, connecting
        self._resync = resync
        self._clock = clock
        self._warm = min(pool_size, WARM_CONNECTIONS)
        self._wait_replicas = revocation_replicas
        self._wait = revocation_wait
        self._conn = Connections(topology, pool_size=pool_size, timeout=timeout, slow_timeout=self._slow_timeout)
        self._redis = self._conn.data
        self._watch = self._conn.watch
        self.topology = topology.kind
        self._prefix = key_prefix
        self._channel = f"{key_prefix}revocations"
        rev = f"{{{key_prefix}rev}}"  # one hash slot for every revocation key
        self._jti_key, self._sub_key, self._epoch_key = f"{rev}:jti", f"{rev}:sub", f"{rev}:epoch"
        self._legacy_jti_key, self._legacy_sub_key = f"{key_prefix}rev:jti", f"{key_prefix}rev:sub"
        self._hit = self._redis.register_script(_HIT)
        self._bind = self._redis.register_script(_BIND)
        self._admit = self._redis.register_script(_ADMIT)
        self._unbind = self._redis.register_script(_UNBIND)
        self._revoke = self._redis.register_script(_REVOKE)
        self._end_session = self._redis.register_script(_END_SESSION)
        self._owners: dict[str, tuple[str, float]] = {}  # session key → (owner, monotonic time confirmed)
        self._jtis: dict[str, float] = {}  # local copy: jti → exp
        self._subjects: dict[str, tuple[float, float]] = {}  # local copy: subject → (cut-off, until)
        self._epoch: bytes | None = None  # the epoch this replica's copy was merged with
        self._resync_now = False
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
            async with asyncio.timeout(self._slow_timeout * 2):
                await self._synced.wait()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._conn.close()

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
        the pool busy, while Redis is fine); the background task's connection and probe decide that.
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
        now = self._clock()
        if jti is not None:
            exp = self._jtis.get(jti)
            if exp is not None and exp > now:
                return True
        if subject is None:
            return False
        entry = self._subjects.get(subject)
        return entry is not None and entry[1] > now and revoked_by_cutoff(entry[0], issued_at)

    async def revoke_token(self, jti: str, expires_at: float) -> None:
        change = {"t": "jti", "jti": jti, "exp": expires_at}
        await self._revoked(self._jti_key, jti, expires_at, change)

    async def revoke_subject(self, subject: str, before: float, *, until: float | None = None) -> None:
        keep = before + DEFAULT_SUBJECT_KEEP if until is None else until
        change = {"t": "sub", "sub": subject, "before": before, "until": keep}
        await self._revoked(self._sub_key, json.dumps([subject, before]), keep, change)

    async def _revoked(self, key: str, member: str, score: float, change: dict[str, Any]) -> None:
        """Write one revocation (and wait for replicas, if asked), publish it, apply it here.

        Applied locally whatever Redis answers: a revocation made here holds here, and the next
        reload gives it to Redis if the write was lost."""
        self._apply(change)
        args = [member, score, self._clock(), self._channel, json.dumps(change)]
        if self._wait_replicas <= 0:
            await self._call("revocation", self._revoke(keys=[key], args=args))
            return
        acked = await self._call(
            "revocation", self._revoke_and_wait(key, args), timeout=self._wait + self._slow_timeout
        )
        if acked < self._wait_replicas:
            telemetry.count_store_error("revocation")
            raise StoreError(
                f"revocation: {acked} of store.revocation_replicas={self._wait_replicas} Redis replicas "
                f"acknowledged it within {self._wait * 1000:.0f} ms (in force here; a fail-over now could lose it)"
            )

    async def _revoke_and_wait(self, key: str, args: list[Any]) -> int:
        async with self._conn.pinned(key) as client:  # WAIT counts the writes of its own connection
            await self._revoke(keys=[key], args=args, client=client)
            return int(await client.wait(self._wait_replicas, max(1, int(self._wait * 1000))))

    def _apply(self, change: Any) -> None:
        """One change from the channel (or made here) applied to the local copy; junk is ignored."""
        if not isinstance(change, dict):
            return
        kind = change.get("t")
        if kind == "jti" and isinstance(change.get("jti"), str) and _is_number(change.get("exp")):
            self._merge_jti(change["jti"], float(change["exp"]))
        elif kind == "sub" and isinstance(change.get("sub"), str) and _is_number(change.get("before")):
            before = float(change["before"])
            until = float(change["until"]) if _is_number(change.get("until")) else before + DEFAULT_SUBJECT_KEEP
            self._merge_subject(change["sub"], before, until)
        elif kind == "end" and isinstance(change.get("key"), str):
            self._owners.pop(change["key"], None)
        elif kind == "resync":
            self._resync_now = True

    def _merge_jti(self, jti: str, exp: float) -> None:
        self._jtis[jti] = max(exp, self._jtis.get(jti, 0.0))

    def _merge_subject(self, subject: str, cutoff: float, until: float) -> None:
        old = self._subjects.get(subject)
        self._subjects[subject] = (cutoff, until) if old is None else (max(old[0], cutoff), max(old[1], until))

    async def _reload(self) -> None:
        """Merge what Redis holds into the local copy, give Redis back what it lacks, watch the epoch."""
        now = self._clock()
        loaded = await self._call("revocation", self._load(now), timeout=self._slow_timeout)
        remote_jtis, remote_subjects, epoch = loaded
        self._jtis = {jti: exp for jti, exp in self._jtis.items() if exp > now}
        self._subjects = {s: entry for s, entry in self._subjects.items() if entry[1] > now}
        await self._check_epoch(epoch)
        for jti, exp in remote_jtis.items():
            self._merge_jti(jti, exp)
        for (subject, cutoff), until in remote_subjects.items():
            self._merge_subject(subject, cutoff, until)
        missing_jtis = {j: exp for j, exp in self._jtis.items() if remote_jtis.get(j, 0.0) < exp}
        missing_subjects = {
            json.dumps([s, cut]): until
            for s, (cut, until) in self._subjects.items()
            if remote_subjects.get((s, cut), 0.0) < until
        }
        if missing_jtis or missing_subjects:
            await self._call("revocation", self._restore(missing_jtis, missing_subjects), timeout=self._slow_timeout)
            log.warning(
                "store lacked revocations this replica holds: written back",
                extra={
                    "store": self.kind,
                    "reason": "store_revocations_restored",
                    "tokens": len(missing_jtis),
                    "subjects": len(missing_subjects),
                },
            )
        self._owners.clear()  # session ends may have been missed too

    async def _check_epoch(self, epoch: bytes | None) -> None:
        """Adopt the epoch (writing one if there is none); a gone or changed one is a data loss."""
        if epoch is not None and epoch == self._epoch:
            return
        if self._epoch is not None:
            telemetry.count_store_data_loss(self.kind)
            log.error(
                "store lost its data (epoch key %s): revocations held here are written back",
                "changed" if epoch is not None else "gone",
                extra={"store": self.kind, "reason": "store_data_loss", "topology": self.topology},
            )
        if epoch is None:
            await self._call("revocation", self._watch.set(self._epoch_key, secrets.token_hex(8), nx=True))
            epoch = await self._call("revocation", self._watch.get(self._epoch_key))
        self._epoch = epoch

    async def _load(self, now: float) -> tuple[dict[str, float], dict[tuple[str, float], float], bytes | None]:
        async with self._watch.pipeline(transaction=False) as pipe:
            pipe.zrangebyscore(self._jti_key, now, "+inf", withscores=True)
            pipe.zrangebyscore(self._sub_key, now, "+inf", withscores=True)
            pipe.get(self._epoch_key)
            pipe.zrangebyscore(self._legacy_jti_key, now, "+inf", withscores=True)
            pipe.hgetall(self._legacy_sub_key)
            jtis, subjects, epoch, legacy_jtis, legacy_subjects = await pipe.execute()
        found = {m.decode(errors="replace"): float(score) for m, score in [*legacy_jtis, *jtis]}
        cutoffs: dict[tuple[str, float], float] = {}
        for member, until in subjects:
            entry = _subject_member(member)
            if entry is not None:
                cutoffs[entry] = max(float(until), cutoffs.get(entry, 0.0))
        for subject, value in legacy_subjects.items():  # 0.1 kept cut-offs for ever: they get the default time
            cut = _number(value)
            if cut is not None:
                key = (subject.decode(errors="replace"), cut)
                cutoffs.setdefault(key, max(cut, now) + DEFAULT_SUBJECT_KEEP)
        return found, cutoffs, epoch if isinstance(epoch, bytes) else None

    async def _restore(self, jtis: dict[str, float], subjects: dict[str, float]) -> None:
        """Write entries back (a score only grows), then tell every replica to reload now."""
        for key, entries in ((self._jti_key, list(jtis.items())), (self._sub_key, list(subjects.items()))):
            for start in range(0, len(entries), RESTORE_CHUNK):
                await self._watch.zadd(key, dict(entries[start : start + RESTORE_CHUNK]), gt=True)
        await self._watch.publish(self._channel, json.dumps({"t": "resync"}))

    async def _sync_forever(self) -> None:
        while True:
            pubsub: PubSub | None = None
            try:
                await self._call("revocation", self._conn.ready(self._warm, _SCRIPTS), timeout=self._slow_timeout)
                pubsub = self._conn.pubsub()
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
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        async with asyncio.timeout(self._timeout):
                            await pubsub.aclose()  # type: ignore[no-untyped-call]
            self._synced.set()  # start() stops waiting once the first attempt is over, good or bad
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self._slow_timeout):
                    await self._conn.refresh()  # a cluster relearns its slot map after a fail-over
            await asyncio.sleep(RECONNECT_DELAY)

    async def _follow(self, pubsub: PubSub) -> None:
        """Apply channel messages; probe the epoch every second; reload every ``resync`` seconds."""
        next_resync = time.monotonic() + self._resync
        next_probe = time.monotonic() + PROBE_INTERVAL
        while True:
            message = await pubsub.get_message(timeout=PROBE_INTERVAL)
            if message is not None and message.get("type") == "message":
                with contextlib.suppress(ValueError):
                    self._apply(json.loads(message["data"]))
            now = time.monotonic()
            if now >= next_probe:
                # A paused or cut-off Redis may keep the sockets open and silent: an unanswered probe
                # (StoreError) ends this connection, and the caller subscribes and reloads afresh.
                epoch = await self._call("revocation", self._watch.get(self._epoch_key), timeout=self._slow_timeout)
                if epoch != self._epoch:
                    self._resync_now = True  # flushed or failed over to a replica without it
                next_probe = time.monotonic() + PROBE_INTERVAL
            if now >= next_resync or self._resync_now:
                self._resync_now = False
                await self._reload()
                next_resync = time.monotonic() + self._resync

    # --- sessions

    def _session_key(self, server: str, session_id: str) -> str:
        digest = hashlib.sha256(f"{server}\x00{session_id}".encode()).hexdigest()
        return f"{self._prefix}sess:{digest}"

    def _subject_key(self, subject: str) -> str:
        return f"{self._prefix}subj:{hashlib.sha256(subject.encode()).hexdigest()}"

    async def bind_session(
        self, server: str, session_id: str, subject: str, ttl: float, *, max_per_subject: int | None = None
    ) -> str:
        """Atomic in Redis; the owner's own uses are answered locally for a few seconds (an owner never
        changes while the binding lives, an end is published), so the TTL is refreshed at most that often."""
        key = self._session_key(server, session_id)
        now = time.monotonic()
        cached = self._owners.get(key)
        fresh = cached is not None and now - cached[1] < min(ttl / 10, SESSION_REFRESH)
        if fresh and self._healthy and cached is not None and cached[0] == subject:
            return subject
        value = json.dumps([server, session_id, subject])
        ttl_ms = max(1, int(ttl * 1000))
        bind = self._bind(keys=[key], args=[value, ttl_ms])
        if max_per_subject is None:
            stored, created = await self._call("sessions", bind)
        else:  # the owner's use also refreshes the session's place in its subject's count (a no-op for others)
            now_ms = int(self._clock() * 1000)
            count = self._redis.zadd(self._subject_key(subject), {key: now_ms + ttl_ms}, xx=True)
            (stored, created), _ = await self._call("sessions", _both(bind, count))
        owner = str(json.loads(stored)[2])
        if created and max_per_subject is not None:
            await self._admit_session(key, value, subject, ttl_ms, max_per_subject)
        if len(self._owners) >= SESSION_CACHE:
            self._owners.pop(next(iter(self._owners)))
        self._owners.pop(key, None)
        self._owners[key] = (owner, now)
        return owner

    async def _admit_session(self, key: str, value: str, subject: str, ttl_ms: int, limit: int) -> None:
        """Count a new binding against its subject's limit; over it, unbind it again and refuse."""
        now_ms = int(self._clock() * 1000)
        args = [key, now_ms, now_ms + ttl_ms, limit]
        wait = float(await self._call("sessions", self._admit(keys=[self._subject_key(subject)], args=args)))
        if wait > 0:
            await self._call("sessions", self._unbind(keys=[key], args=[value]))
            raise SessionLimit(subject, limit, wait / 1000)

    async def end_session(self, server: str, session_id: str) -> bool:
        key = self._session_key(server, session_id)
        message = json.dumps({"t": "end", "key": key})
        deleted = await self._call("sessions", self._end_session(keys=[key], args=[self._channel, message]))
        self._owners.pop(key, None)
        if deleted is None:
            return False
        binding = _binding(deleted, 0, 0.0)
        if binding is not None:  # its place in the owner's count is free again
            await self._call("sessions", self._redis.zrem(self._subject_key(binding.subject), key))
        return True

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


async def _both(first: Awaitable[Any], second: Awaitable[Any]) -> tuple[Any, Any]:
    """Two calls on two connections, one round trip of waiting."""
    a, b = await asyncio.gather(first, second)
    return a, b


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


def _subject_member(member: bytes) -> tuple[str, float] | None:
    """A ``[subject, cut-off]`` member of the subject set; None for one not written by this store."""
    try:
        fields = json.loads(member)
    except ValueError:
        return None
    if isinstance(fields, list) and len(fields) == 2 and isinstance(fields[0], str) and _is_number(fields[1]):
        return fields[0], float(fields[1])
    return None


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number(value: bytes) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None  # not written by this store: ignored
