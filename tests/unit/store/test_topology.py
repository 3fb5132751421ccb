"""The store section's topologies: one node, Sentinel (URL or section), Cluster; what `config check` says on
each mistake (the key, never a password); the redis-py clients built for each (nothing connects here)."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from support import make_config

from authz.config.errors import ConfigError
from authz.config.runtime import HostPort
from authz.store import MemoryStore, open_store
from authz.store.redis import RedisStore
from authz.store.topology import Connections, RedisTopology, Tls


def store_of(section: dict[str, Any]) -> RedisTopology:
    return RedisTopology.of(make_config(store=section).store)


def refusal(section: dict[str, object]) -> str:
    with pytest.raises(ConfigError) as info:
        make_config(store=section)
    return str(info.value)


def test_no_section_is_the_memory_store() -> None:
    config = make_config()
    assert config.store.topology == "memory" and isinstance(open_store(config.store), MemoryStore)


def test_a_single_node_url_is_kept_as_it_is() -> None:
    top = store_of({"url": "rediss://:pw@redis.internal:6380/2?ssl_ca_certs=/ca.pem"})
    assert (top.kind, top.url) == ("single", "rediss://:pw@redis.internal:6380/2?ssl_ca_certs=/ca.pem")


def test_a_sentinel_url_names_sentinels_master_database_and_credentials() -> None:
    url = "rediss+sentinel://app:s3cret@10.0.0.1:26379,[::1]:26380/mymaster/3?sentinel_password=sp&ssl_ca_certs=/ca.pem"
    top = store_of({"url": url})
    assert top.kind == "sentinel" and top.nodes == (("10.0.0.1", 26379), ("::1", 26380))
    assert (top.master, top.db, top.username, top.password, top.sentinel_password) == (
        "mymaster",
        3,
        "app",
        "s3cret",
        "sp",
    )
    assert top.tls == top.sentinel_tls == Tls("/ca.pem", None, None, True)
    assert "s3cret" not in repr(top) and "sp" not in repr(make_config(store={"url": url}).store)


def test_a_sentinel_section_with_tls_to_both() -> None:
    section = {
        "sentinel": {"nodes": ["s1:26379", "s2:26379"], "master": "m", "password": "sentinel-pw"},
        "password": "data-pw",
        "tls": {"ca_file": "/ca.pem", "cert_file": "/c.pem", "key_file": "/k.pem"},
    }
    top = store_of(section)
    assert (top.kind, top.master, top.password, top.sentinel_password) == ("sentinel", "m", "data-pw", "sentinel-pw")
    assert top.tls == top.sentinel_tls == Tls("/ca.pem", "/c.pem", "/k.pem", True)
    plain = store_of({**section, "sentinel": {**section["sentinel"], "tls": False}})  # type: ignore[dict-item]
    assert plain.tls is not None and plain.sentinel_tls is None


def test_a_cluster_section() -> None:
    top = store_of({"cluster": {"nodes": ["127.0.0.1:7000", "127.0.0.1:7001"]}, "username": "u", "password": "p"})
    assert (top.kind, top.nodes, top.username, top.password) == (
        "cluster",
        (("127.0.0.1", 7000), ("127.0.0.1", 7001)),
        "u",
        "p",
    )


def test_durability_and_bounds_are_compiled() -> None:
    store = make_config(store={"url": "redis://r:6379/0", "revocation_replicas": 1, "revocation_wait_ms": 250}).store
    assert (store.revocation_replicas, store.revocation_wait, store.max_sessions_per_subject) == (1, 0.25, 100)
    assert make_config(store={"max_sessions_per_subject": 5}).store.max_sessions_per_subject == 5


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        (
            {"url": "redis://r/0", "cluster": {"nodes": ["r:1"]}},
            "store: set one of url, sentinel, cluster (found url and cluster)",
        ),
        (
            {"sentinel": {"nodes": ["s:1", "nope"], "master": "m"}},
            "store.sentinel.nodes: entry 1: expected host:port, got 'nope'",
        ),
        ({"sentinel": {"nodes": ["s:1"]}}, "store.sentinel.master: Field required"),
        ({"sentinel": {"nodes": [], "master": "m"}}, "store.sentinel.nodes: List should have at least 1 item"),
        ({"cluster": {"nodes": ["r:99999"]}}, "store.cluster.nodes: entry 0: expected host:port"),
        ({"cluster": {"seeds": ["r:1"]}}, "store.cluster.seeds: unknown key; the keys here are 'nodes'"),
        ({"url": "redis+sentinel://:pw@s:26379"}, "store.url: a sentinel URL is redis+sentinel://"),
        ({"url": "redis+sentinel://:pw@s:26379/m/zero"}, "store.url: the database of a sentinel URL"),
        ({"url": "redis+sentinel://:pw@s:1,bad/m"}, "store.url: sentinel 1 of the URL is not host:port"),
        ({"url": "memcached://:pw@m:1"}, "store.url: expected a redis://, rediss://, unix://"),
        ({"url": "redis://r/0", "password": "pw"}, "store.password: only with sentinel or cluster"),
        ({"key_prefix": "{app}:"}, "store.key_prefix: must not contain { or }"),
        ({"revocation_replicas": 1}, "store: revocation_replicas needs Redis"),
        (
            {"revocation_replicas": 17, "url": "redis://r/0"},
            "store.revocation_replicas: Input should be less than or equal to 16",
        ),
    ],
)
def test_every_mistake_names_its_key_and_never_the_password(section: dict[str, object], expected: str) -> None:
    said = refusal(section)
    assert expected in said and "pw@" not in said and ":pw" not in said


def test_clients_per_topology() -> None:
    single = Connections(RedisTopology.from_url("redis://127.0.0.1:1/0"), pool_size=4, timeout=0.05, slow_timeout=1.0)
    assert isinstance(single.data, Redis) and single.data.connection_pool.max_connections == 4
    sentinel = Connections(
        RedisTopology.from_url("redis+sentinel://127.0.0.1:1,127.0.0.1:2/m"),
        pool_size=4,
        timeout=0.05,
        slow_timeout=1.0,
    )
    assert isinstance(sentinel.data, Redis) and sentinel.data.connection_pool.max_connections == 4
    assert getattr(sentinel.data.connection_pool, "service_name", None) == "m"
    cluster = Connections(RedisTopology.cluster(["127.0.0.1:1"]), pool_size=4, timeout=0.05, slow_timeout=1.0)
    assert isinstance(cluster.data, RedisCluster) and isinstance(cluster.watch, RedisCluster)
    assert cluster.data is not cluster.watch


def test_open_store_passes_the_topology_and_durability() -> None:
    config = make_config(store={"cluster": {"nodes": ["127.0.0.1:1"]}, "revocation_replicas": 1})
    store = open_store(config.store)
    assert isinstance(store, RedisStore) and store.topology == "cluster"
    assert HostPort.parse("127.0.0.1:1") in config.store.nodes
