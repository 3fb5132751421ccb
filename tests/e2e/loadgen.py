"""Load from a second process: MCP ``tools/call`` requests in a loop for a bounded time.

``python tests/e2e/loadgen.py SPEC.json OUT.jsonl``. The spec names the URL, the duration in seconds,
the concurrency, and request kinds taken in turn: ``{"name", "tool", "tokens": [...]}`` (a token is
sent as ``Bearer <token>``, cycling through the list; no tokens: no Authorization header). Every
request carries a unique marker (``<run: 8 hex digits><seq: 24 hex digits>``) as its ``query``
argument and as the trace id of its ``traceparent``, so a test can match the sample server's call log
and the authorizer's audit events against what was answered. One JSON line per request goes to OUT:
``{"seq", "kind", "marker", "status", "t0", "t1", "error"}`` (wall-clock times; status 0 when no
HTTP answer came). Prints ``LOAD STARTED`` when the first requests go out and ``LOAD DONE <n>``.
SIGTERM ends the load early (requests under way finish; the results are written as usual).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import sys
import time
from typing import Any

import aiohttp

META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}


def _request(kind: dict[str, Any], marker: str, turn: int) -> tuple[dict[str, str], bytes]:
    tool = kind["tool"]
    headers = {
        "content-type": "application/json",
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": "tools/call",
        "mcp-name": tool,
    }
    headers["traceparent"] = f"00-{marker}-{marker[:16]}-01"
    tokens = kind.get("tokens") or []
    if tokens:
        headers["authorization"] = f"Bearer {tokens[turn % len(tokens)]}"
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": tool, "arguments": {"query": marker}, "_meta": META},
    }
    return headers, json.dumps(body).encode()


async def run(spec: dict[str, Any]) -> list[dict[str, Any]]:
    kinds: list[dict[str, Any]] = spec["kinds"]
    run_id = str(spec["run"])  # 8 hex digits
    deadline = [time.monotonic() + float(spec["duration"])]
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, lambda: deadline.__setitem__(0, 0.0))
    seqs = itertools.count()
    results: list[dict[str, Any]] = []
    timeout = aiohttp.ClientTimeout(total=float(spec.get("timeout", 10.0)))
    connector = aiohttp.TCPConnector(limit=int(spec["concurrency"]))

    async def worker(session: aiohttp.ClientSession) -> None:
        while time.monotonic() < deadline[0]:
            seq = next(seqs)
            kind = kinds[seq % len(kinds)]
            marker = f"{run_id}{seq:024x}"
            headers, body = _request(kind, marker, seq // len(kinds))
            record: dict[str, Any] = {"seq": seq, "kind": kind["name"], "marker": marker, "t0": time.time()}
            try:
                async with session.post(spec["url"], data=body, headers=headers) as response:
                    await response.read()
                    record.update(status=response.status, error=None)
            except (aiohttp.ClientError, TimeoutError) as exc:
                record.update(status=0, error=f"{type(exc).__name__}: {exc}")
            record["t1"] = time.time()
            results.append(record)

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        print("LOAD STARTED", flush=True)
        await asyncio.gather(*(worker(session) for _ in range(int(spec["concurrency"]))))
    return results


def main(argv: list[str]) -> None:
    with open(argv[1], encoding="utf-8") as f:
        spec = json.load(f)
    results = asyncio.run(run(spec))
    with open(argv[2], "w", encoding="utf-8") as out:
        for record in sorted(results, key=lambda r: r["seq"]):
            out.write(json.dumps(record) + "\n")
    print(f"LOAD DONE {len(results)}", flush=True)


if __name__ == "__main__":
    main(sys.argv)
