"""Shared state: ``open_store(spec)`` picks the implementation the ``store`` config section names."""

from __future__ import annotations

from authz.config.runtime import Store as StoreSettings
from authz.store.base import SessionBinding, Store, StoreError
from authz.store.memory import MemoryStore

__all__ = ["MemoryStore", "SessionBinding", "Store", "StoreError", "open_store"]


def open_store(spec: StoreSettings) -> Store:
    """The store for ``spec`` (not started yet): Redis (one node, Sentinel or Cluster), else in memory."""
    if spec.topology == "memory":
        return MemoryStore()
    from authz.store.redis import RedisStore  # redis-py is imported only when Redis is configured
    from authz.store.topology import RedisTopology

    return RedisStore(
        RedisTopology.of(spec),
        key_prefix=spec.key_prefix,
        timeout=spec.timeout,
        pool_size=spec.pool_size,
        resync=spec.resync,
        revocation_replicas=spec.revocation_replicas,
        revocation_wait=spec.revocation_wait,
    )
