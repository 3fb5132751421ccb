"""The in-memory store under a session flood: new sessions per second at 1k and at 100k stored entries.

A caller sending a new ``Mcp-Session-Id`` on every request makes the store insert one binding per request
(issue 21 item 2). The figure that matters is the ratio: per-insert cost must not grow with the table
(today's tables evict in O(1)), so inserts/s at 100k entries should be about those at 1k. Also printed:
the same with ``max_sessions_per_subject`` refusing a single flooding subject, and a bystander's own
session use (a refresh) while the table is full.

    .venv/bin/python bench/memory_store.py [--inserts 50000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from authz.store.base import SessionLimit
from authz.store.memory import MemoryStore


async def fill(entries: int) -> MemoryStore:
    """A store whose session table is full: ``entries`` live bindings of 1,000 subjects."""
    store = MemoryStore(max_entries=entries)
    for i in range(entries):
        await store.bind_session("bench", f"old-{i}", f"user-{i % 1000}", 3600)
    return store


async def flood(store: MemoryStore, inserts: int, *, one_subject: bool) -> float:
    """New sessions per second: many flooding subjects (each insert stored, one evicted), or one (refused)."""
    start = time.perf_counter()
    for i in range(inserts):
        subject = "mallory" if one_subject else f"flooder-{i % 5000}"
        with contextlib.suppress(SessionLimit):
            await store.bind_session("bench", f"flood-{i}", subject, 3600, max_per_subject=100)
    return inserts / (time.perf_counter() - start)


async def bystander(store: MemoryStore, uses: int = 20_000) -> float:
    """Uses per second of one session already bound (the owner's refresh) in the full table."""
    await store.bind_session("bench", "alice-session", "alice", 3600)
    start = time.perf_counter()
    for _ in range(uses):
        await store.bind_session("bench", "alice-session", "alice", 3600, max_per_subject=100)
    return uses / (time.perf_counter() - start)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inserts", type=int, default=50_000, help="new sessions per measurement")
    args = parser.parse_args()
    rows = []
    for entries in (1_000, 100_000):
        many = await flood(await fill(entries), args.inserts, one_subject=False)
        one = await flood(await fill(entries), args.inserts, one_subject=True)
        use = await bystander(await fill(entries))
        rows.append((entries, many, one, use))
    print(f"{'entries':>8} {'new sessions/s':>15} {'one subject/s':>14} {'bystander uses/s':>17}")
    for entries, many, one, use in rows:
        print(f"{entries:>8} {many:>15,.0f} {one:>14,.0f} {use:>17,.0f}")
    small, large = rows
    print(f"100k / 1k new sessions/s: {large[1] / small[1]:.2f}x (flat: per-insert cost does not grow with the table)")


if __name__ == "__main__":
    asyncio.run(main())
