"""Redis topologies on loopback for end-to-end tests: Sentinel (a primary, two replicas, three sentinels) and
Redis Cluster (six nodes: three masters, three replicas, made with ``redis-cli --cluster create``).

Every process is a `Proc` (its own log, stopped with its process group). Timeouts are short so a fail-over
takes a few seconds: sentinels call a master down after 1 s (``down-after-milliseconds``), cluster nodes
after 1 s (``cluster-node-timeout``). Data nodes keep nothing on disk unless ``durable`` asks for an
append-only file fsynced at every write.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import redis
from components import Redis, start_redis
from processes import Proc, StartupError, free_port

MASTER = "mcp-authz"  # the master's name the sentinels monitor
FAILOVER_TIMEOUT = 30.0  # seconds a fixture waits for a fail-over before it fails (never a speed assertion)

DURABLE = ("--appendonly", "yes", "--appendfsync", "always")


def _wait(what: str, ready: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(redis.RedisError, OSError):
            if ready():
                return
        if time.monotonic() > deadline:
            raise StartupError(f"not ready after {timeout:.0f}s: {what}")
        time.sleep(0.1)


def _in_sync(replica: int) -> bool:
    return _info(replica, "replication").get("master_link_status") == "up"


def _client(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=1.0, socket_connect_timeout=1.0)


def _info(port: int, section: str) -> dict[str, object]:
    with _client(port) as client:
        return dict(client.info(section))


# ---------------------------------------------------------------------------------------------- Sentinel


@dataclass
class SentinelSet:
    """A primary, its replicas and the sentinels watching them."""

    log_dir: Path
    nodes: dict[int, Redis]  # data nodes by port
    sentinels: dict[int, Proc]  # by port
    stopped: list[int] = field(default_factory=list)

    @property
    def url(self) -> str:
        """The store URL: every sentinel, the master's name."""
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinels)
        return f"redis+sentinel://{hosts}/{MASTER}"

    def master_port(self) -> int:
        """The master's port as the sentinels see it now."""
        for port in self.sentinels:
            with contextlib.suppress(redis.RedisError, OSError), _client(port) as client:
                _, master = client.sentinel_get_master_addr_by_name(MASTER)
                return int(master)
        raise AssertionError("no sentinel answers")

    def kill_master(self) -> int:
        """SIGKILL the current master; its port."""
        port = self.master_port()
        proc = self.nodes[port].proc
        assert proc.pid is not None
        os.kill(proc.pid, signal.SIGKILL)
        proc.stop()
        self.stopped.append(port)
        return port

    def wait_failover(self, old: int, timeout: float = FAILOVER_TIMEOUT) -> int:
        """Wait until the sentinels name a new master that answers as one; its port."""
        found: list[int] = []

        def promoted() -> bool:
            port = self.master_port()
            if port == old or _info(port, "replication").get("role") != "master":
                return False
            found.append(port)
            return True

        _wait("a replica promoted to master", promoted, timeout)
        return found[-1]

    def wait_master(self, timeout: float = FAILOVER_TIMEOUT) -> int:
        """Wait until the master the sentinels name answers as a master (the old one or a new one); its port."""
        found: list[int] = []

        def answering() -> bool:
            port = self.master_port()
            if _info(port, "replication").get("role") != "master":
                return False
            found.append(port)
            return True

        _wait("a master answering", answering, timeout)
        return found[-1]

    def stop(self) -> None:
        for proc in self.sentinels.values():
            proc.stop()
        for node in self.nodes.values():
            if node.proc.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(node.proc.pid, signal.SIGCONT)
            node.proc.stop()


def start_sentinel_set(log_dir: Path, *, replicas: int = 2, sentinels: int = 3, durable: bool = False) -> SentinelSet:
    """A primary with ``replicas`` replicas and ``sentinels`` sentinels (quorum: a majority), all in sync."""
    sentinel = shutil.which("redis-sentinel")
    if sentinel is None:
        raise StartupError("redis-sentinel not on PATH: apt-get install -y redis-sentinel")
    extra = DURABLE if durable else ()
    primary = start_redis(log_dir, extra=extra)
    nodes = {primary.port: primary}
    for _ in range(replicas):
        replica = start_redis(log_dir, extra=[*extra, "--replicaof", "127.0.0.1", str(primary.port)])
        nodes[replica.port] = replica
    replica_ports = [port for port in nodes if port != primary.port]
    _wait("the replicas in sync", lambda: all(_in_sync(port) for port in replica_ports))
    quorum = sentinels // 2 + 1
    procs: dict[int, Proc] = {}
    for _ in range(sentinels):
        port = free_port()
        conf = log_dir / f"sentinel-{port}.conf"  # sentinels rewrite their config: one file each
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {log_dir}\n"
            f"sentinel monitor {MASTER} 127.0.0.1 {primary.port} {quorum}\n"
            f"sentinel down-after-milliseconds {MASTER} 1000\n"
            f"sentinel failover-timeout {MASTER} 5000\n"
            f"sentinel parallel-syncs {MASTER} 1\n",
            encoding="utf-8",
        )
        proc = Proc("sentinel", [sentinel, str(conf)], log_dir=log_dir).start()
        proc.wait_port(port)
        procs[port] = proc
    found = SentinelSet(log_dir, nodes, procs)

    def known() -> bool:
        for port in procs:
            with _client(port) as client:
                state = client.sentinel_master(MASTER)
            if int(state["num-other-sentinels"]) < sentinels - 1 or int(state["num-slaves"]) < replicas:
                return False
        return True

    try:
        _wait("every sentinel knows the others and the replicas", known)
    except StartupError:
        found.stop()
        raise
    return found


# ---------------------------------------------------------------------------------------------- Cluster


@dataclass
class RedisClusterSet:
    """A Redis Cluster of masters, each with one replica."""

    log_dir: Path
    nodes: dict[int, Redis]  # by port
    stopped: list[int] = field(default_factory=list)

    @property
    def seeds(self) -> list[str]:
        return [f"127.0.0.1:{port}" for port in self.nodes]

    def master_of(self, key: str) -> int:
        """The port of the master serving ``key``'s slot now."""
        for port in self.nodes:
            if port in self.stopped:
                continue
            with contextlib.suppress(redis.RedisError, OSError), _client(port) as client:
                slot = int(client.execute_command("CLUSTER", "KEYSLOT", key))
                for start, end, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
                    if int(start) <= slot <= int(end):
                        return int(master[1])
        raise AssertionError("no cluster node answers")

    def kill(self, port: int) -> None:
        proc = self.nodes[port].proc
        assert proc.pid is not None
        os.kill(proc.pid, signal.SIGKILL)
        proc.stop()
        self.stopped.append(port)

    def wait_failover(self, key: str, old: int, timeout: float = FAILOVER_TIMEOUT) -> int:
        """Wait until another node serves ``key``'s slot as master and the cluster says ok; its port."""
        found: list[int] = []

        def moved() -> bool:
            port = self.master_of(key)
            if port == old or not self.ok(port):
                return False
            found.append(port)
            return True

        _wait(f"the slot of {key!r} served by a new master", moved, timeout)
        return found[-1]

    def wait_slot_master(self, key: str, timeout: float = FAILOVER_TIMEOUT) -> int:
        """Wait until ``key``'s slot has a master that answers and the cluster says ok; its port."""
        found: list[int] = []

        def answering() -> bool:
            port = self.master_of(key)
            if not self.ok(port) or _info(port, "replication").get("role") != "master":
                return False
            found.append(port)
            return True

        _wait(f"a master for the slot of {key!r}", answering, timeout)
        return found[-1]

    @staticmethod
    def ok(port: int) -> bool:
        with _client(port) as client:
            return "cluster_state:ok" in str(client.execute_command("CLUSTER", "INFO"))

    def stop(self) -> None:
        for node in self.nodes.values():
            if node.proc.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(node.proc.pid, signal.SIGCONT)
            node.proc.stop()


def _cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free and valid too."""
    for _ in range(200):
        port = free_port()
        if port <= 55535 and _free(port + 10000):
            return port
    raise StartupError("no free port pair for a cluster node")


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def start_redis_cluster(log_dir: Path, *, masters: int = 3, durable: bool = False) -> RedisClusterSet:
    """``masters`` masters with one replica each, created by ``redis-cli --cluster create``; all slots ok."""
    cli = shutil.which("redis-cli")
    if cli is None:
        raise StartupError("redis-cli not on PATH: apt-get install -y redis-server")
    nodes: dict[int, Redis] = {}
    for _ in range(masters * 2):
        port = _cluster_port()
        extra: Sequence[str] = (
            *(DURABLE if durable else ()),
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            str(log_dir / f"nodes-{port}.conf"),
            "--cluster-node-timeout",
            "1000",
            "--cluster-require-full-coverage",
            "no",  # the other shards keep answering while one fails over
        )
        nodes[port] = start_redis(log_dir, port=port, extra=extra)
    found = RedisClusterSet(log_dir, nodes)
    argv = [cli, "--cluster", "create", *found.seeds, "--cluster-replicas", "1", "--cluster-yes"]
    created = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if created.returncode != 0:
        found.stop()
        raise StartupError(f"redis-cli --cluster create failed:\n{created.stdout}\n{created.stderr}")

    def settled() -> bool:
        if not all(found.ok(port) for port in nodes):
            return False
        roles = [_info(port, "replication") for port in nodes]
        replicas = [r for r in roles if r.get("role") == "slave"]
        return len(replicas) == masters and all(r.get("master_link_status") == "up" for r in replicas)

    try:
        _wait("every cluster node ok, every replica in sync", settled, 60.0)
    except StartupError:
        found.stop()
        raise
    return found
