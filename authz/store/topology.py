"""Where the Redis store's data lives, and redis-py's own clients for it.

Three topologies: one node (``redis://``, ``rediss://``, ``unix://``), Sentinel (a master found
through sentinels: ``redis+sentinel://`` / ``rediss+sentinel://`` or a list of sentinels) and Redis
Cluster (seed nodes; the client follows ``MOVED``/``ASK`` and fail-overs). ``Connections`` builds
the clients the store uses: ``data`` for Check-path calls (a bounded pool: waiting for a connection
counts against the deadline), ``watch`` for the background task (pub/sub, probes, reloads), so it
never queues behind Checks.

A sentinel URL: ``redis+sentinel://[[user]:password@]host:port[,host:port...]/master[/db]``; the
credentials are the data nodes'; ``sentinel_username`` / ``sentinel_password`` and the ``ssl_*``
names of redis-py (``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``) may follow as query.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff

from authz.config.compile import compile_store_url
from authz.config.runtime import HostPort, Store, StoreTls

Kind = Literal["single", "sentinel", "cluster"]


@dataclass(frozen=True)
class Tls:
    """TLS to the data nodes (and, with ``RedisTopology.sentinel_tls``, to the sentinels)."""

    ca_file: str | None = None  # a private CA; else the system's
    cert_file: str | None = None  # a client certificate, when the server requires one
    key_file: str | None = None
    check_hostname: bool = True

    def kwargs(self) -> dict[str, Any]:
        return {
            "ssl": True,
            "ssl_ca_certs": self.ca_file,
            "ssl_certfile": self.cert_file,
            "ssl_keyfile": self.key_file,
            "ssl_cert_reqs": "required",
            "ssl_check_hostname": self.check_hostname,
        }

    @classmethod
    def of(cls, tls: StoreTls | None) -> Tls | None:
        return None if tls is None else cls(tls.ca_file, tls.cert_file, tls.key_file, tls.check_hostname)


@dataclass(frozen=True)
class RedisTopology:
    kind: Kind
    url: str | None = field(default=None, repr=False)  # single: the URL, credentials and TLS in it
    nodes: tuple[tuple[str, int], ...] = ()  # sentinel: the sentinels; cluster: seed nodes
    master: str = ""  # sentinel: the master's name
    db: int = 0  # sentinel (a cluster has database 0 only)
    username: str | None = None  # data nodes
    password: str | None = field(default=None, repr=False)
    tls: Tls | None = None  # data nodes
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)
    sentinel_tls: Tls | None = None

    @classmethod
    def of(cls, store: Store) -> RedisTopology:
        """The topology the compiled ``store`` section names (not ``memory``)."""
        if store.topology == "memory":
            raise ValueError("the memory store has no Redis topology")
        return cls(
            store.topology,
            url=store.url,
            nodes=tuple((n.host, n.port) for n in store.nodes),
            master=store.master,
            db=store.db,
            username=store.username,
            password=store.password,
            tls=Tls.of(store.tls),
            sentinel_username=store.sentinel_username,
            sentinel_password=store.sentinel_password,
            sentinel_tls=Tls.of(store.sentinel_tls),
        )

    @classmethod
    def from_url(cls, url: str) -> RedisTopology:
        """A single-node URL as it is, or a ``redis+sentinel://`` URL taken apart (as the config does)."""
        return cls.of(compile_store_url(url))

    @classmethod
    def cluster(cls, nodes: list[str], **settings: Any) -> RedisTopology:
        """A Redis Cluster from ``host:port`` seed nodes."""
        return cls("cluster", nodes=tuple((n.host, n.port) for n in map(HostPort.parse, nodes)), **settings)


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """A sentinel-managed pool that waits (up to ``timeout``) for a free connection, as the single node's does."""


class Connections:
    """The store's clients for one topology; ``close()`` releases them all."""

    def __init__(self, topology: RedisTopology, *, pool_size: int, timeout: float, slow_timeout: float) -> None:
        self.topology = topology
        self.kind = topology.kind
        retry = Retry(NoBackoff(), 1)  # one immediate retry: a pooled connection may predate a restart
        common: dict[str, Any] = {"socket_connect_timeout": slow_timeout, "retry": retry}
        self._sentinel: Sentinel | None = None
        self.data: Any
        self.watch: Any
        if topology.kind == "single":
            assert topology.url is not None
            pool = BlockingConnectionPool.from_url(topology.url, max_connections=pool_size, timeout=timeout, **common)
            self.data = Redis(connection_pool=pool)
            self.watch = Redis.from_url(topology.url, **common)
        elif topology.kind == "sentinel":
            self._sentinel = Sentinel(  # type: ignore[no-untyped-call]
                list(topology.nodes),
                sentinel_kwargs={
                    "socket_timeout": slow_timeout / 2,  # a paused sentinel is skipped, not waited for
                    "socket_connect_timeout": slow_timeout / 2,
                    "username": topology.sentinel_username,
                    "password": topology.sentinel_password,
                    **(topology.sentinel_tls.kwargs() if topology.sentinel_tls else {}),
                },
            )
            node = self._node_kwargs() | {"db": topology.db}
            self.data = self._sentinel.master_for(
                topology.master,
                connection_pool_class=_BlockingSentinelPool,
                max_connections=pool_size,
                timeout=timeout,
                **node,
                **common,
            )
            self.watch = self._sentinel.master_for(topology.master, **node, **common)
        else:
            seeds = [ClusterNode(host, port) for host, port in topology.nodes]
            cluster: dict[str, Any] = {
                "require_full_coverage": False,  # the slots still served answer while one shard fails over
                "socket_timeout": slow_timeout / 2,  # a paused node errs (and the slot map is refreshed)
                **self._node_kwargs(),
                **common,
            }
            self.data = RedisCluster(startup_nodes=seeds, max_connections=pool_size, **cluster)
            self.watch = RedisCluster(startup_nodes=list(seeds), **cluster)

    def _node_kwargs(self) -> dict[str, Any]:
        top = self.topology
        return {"username": top.username, "password": top.password, **(top.tls.kwargs() if top.tls else {})}

    async def ready(self, warm: int, scripts: Sequence[str]) -> None:
        """Connect in the background, not in a Check under its deadline: a cluster client learns the slot
        map, the Lua ``scripts`` are loaded (on every master), and ``warm`` pooled connections (per master,
        in a cluster) are opened by concurrent pings."""
        if self.kind == "cluster":
            await self.data.initialize()
            await self.watch.initialize()
            everywhere = {"target_nodes": RedisCluster.PRIMARIES}
        else:
            everywhere = {}
        for script in scripts:
            await self.data.script_load(script)  # a cluster client sends it to every master
        await asyncio.gather(*(self.data.ping(**everywhere) for _ in range(warm)))

    def pubsub(self) -> PubSub:
        """A pub/sub connection on the watch client (in a cluster, on the node of the channel's slot)."""
        return self.watch.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-any-return]

    @contextlib.asynccontextmanager
    async def pinned(self, key: str) -> AsyncIterator[Redis]:
        """One connection to the master holding ``key`` (for a write followed by ``WAIT`` on it)."""
        if self.kind != "cluster":
            client = self.data.client()
            try:
                yield client
            finally:
                await client.aclose()
            return
        await self.data.initialize()
        await self.data.nodes_manager.initialize()  # a fresh slot map: a revocation is rare, a MOVED would fail it
        node = self.data.get_node_from_key(key)
        client = Redis(host=node.host, port=node.port, db=0, **self._node_kwargs())
        try:
            yield client
        finally:
            await client.aclose()

    async def refresh(self) -> None:
        """After a fail-over: a cluster client learns the slot map anew (a paused node gives no MOVED)."""
        if self.kind == "cluster":
            await self.data.nodes_manager.initialize()

    async def close(self) -> None:
        for client in (self.data, self.watch):
            with contextlib.suppress(Exception):
                await client.aclose()
        if self.kind == "single":
            with contextlib.suppress(Exception):
                await self.data.connection_pool.disconnect()
        if self._sentinel is not None:
            with contextlib.suppress(Exception):
                await self._sentinel.aclose()
