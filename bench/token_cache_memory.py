"""Memory of the verified-token cache: RSS per 10k cached tokens (issue 21 item 6).

.venv/bin/python bench/token_cache_memory.py [--tokens 100000] [--step 10000] [--claims] [--extra-claims 6] [--serve]

In-process (default): the authorizer's modules imported (``authz.app``: grpcio, aiohttp, CEL, OpenTelemetry),
a ``Verifier`` with a local ES256 issuer and ``token_cache_size`` = ``--tokens``. ``--serve``: a real
``mcp-authz serve`` process instead, each token sent once to its HTTP ext_authz front (a 2025-11-25
``tools/list`` as Envoy would pass it on), the RSS read from ``/proc/<pid>/status``. Tokens are minted the way an
IdP issues RFC 9068 access tokens (iss, aud, sub, client_id, scope, iat, nbf, exp, jti and
``--extra-claims`` more, ~0.8 KB each), every one distinct, verified once (so cached). After each
``--step`` tokens it prints the process RSS and the bytes per cached token so far. ``--claims`` keeps
every claim with the cached caller, as a policy with CEL conditions needs (``jwt.*``); without it the
cache keeps only what the Check needs. The figure to read is the last line's RSS: the goal is
≤ 150 MB with 100k cached tokens.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import http.client as http_client
import json
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import authz.app  # noqa: F401  (the authorizer's import footprint is part of its RSS)
from authz.config.load import parse_config
from authz.identity import devkey
from authz.identity.jwks import KeySet
from authz.identity.rfc9068 import Verifier

ISSUER = "https://idp.example.test/realms/corp"
RESOURCE = "https://mcp.example.test/mcp"


def rss_kb(pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def _no_http() -> Any:
    raise AssertionError("a local key set never fetches")


def config_text(key: Path, size: int) -> str:
    return json.dumps(
        {
            "token_cache_size": size,
            "issuers": [{"name": "idp", "issuer": ISSUER, "local_key_file": str(key), "token_type": "at+jwt"}],
            "servers": [{"name": "mcp", "resource": RESOURCE, "upstream": "127.0.0.1:1"}],
        }
    )


def mint(key: Path, first: int, count: int, extra_claims: int) -> list[str]:
    """Tokens ``first`` .. ``first + count``, all distinct, from 1,000 users of 20 clients with 4 scope sets
    (as a real IdP's traffic)."""
    scopes = [["tools:read"], ["tools:read", "tools:write"], ["tools:read", "prompts:read"], ["openid", "tools:read"]]
    extra: dict[str, Any] = {f"claim_{i}": f"value-{i}-{'x' * 12}" for i in range(extra_claims)}
    tokens = []
    for i in range(first, first + count):
        user = i % 1000
        claims = {**extra, "client_id": f"client-{user % 20}", "jti": uuid.uuid4().hex, "email": f"u{user}@corp.test"}
        subject = str(uuid.UUID(int=user))
        scope = scopes[i % len(scopes)]
        tokens.append(
            devkey.mint(
                key, issuer=ISSUER, audience=RESOURCE, subject=subject, scopes=scope, lifetime=3600, extra=claims
            )
        )
    return tokens


async def fill(verifier: Verifier, server: Any, key: Path, args: argparse.Namespace, base: int) -> None:
    """Mint and verify ``args.step`` tokens at a time (the tokens' text is dropped: only the cache stays)."""
    sizes = 0
    for first in range(0, args.tokens, args.step):
        tokens = mint(key, first, min(args.step, args.tokens - first), args.extra_claims)
        sizes += sum(len(t) for t in tokens)
        for token in tokens:
            await verifier.verify(token, server)
        del tokens
        gc.collect()
        cached = len(verifier.cache)
        grown = rss_kb() - base
        print(
            f"{cached:>8,} tokens ({sizes / cached:.0f} B each)  RSS {rss_kb() / 1024:6.1f} MB  "
            f"+{grown / 1024:6.1f} MB  {grown * 1024 / cached:5.0f} B/token"
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve(key: Path, args: argparse.Namespace, tmp: Path) -> None:
    """The same fill against a real ``mcp-authz serve`` (HTTP front), its RSS read from /proc."""
    spec = json.loads(config_text(key, args.tokens))
    http, discovery = free_port(), free_port()
    spec["listen"] = {
        "grpc": f"127.0.0.1:{free_port()}",
        "http": f"127.0.0.1:{http}",
        "discovery": f"127.0.0.1:{discovery}",
    }
    if args.claims:  # a CEL condition reads the claims: the cache keeps them
        spec["servers"][0]["policy"] = {
            "default": "allow",
            "rules": [{"name": "cel", "methods": ["x"], "when": "true"}],
        }
    path = tmp / "authz.json"
    path.write_text(json.dumps(spec), encoding="utf-8")
    cli = Path(sys.executable).parent / "mcp-authz"
    proc = subprocess.Popen([str(cli), "serve", "-c", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                ready = http_client.HTTPConnection("127.0.0.1", discovery, timeout=2)
                ready.request("GET", "/readyz")
                if ready.getresponse().status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("mcp-authz serve did not become ready")
            time.sleep(0.2)
        base = rss_kb(proc.pid)
        print(f"mcp-authz serve ready, cache empty: RSS {base / 1024:.1f} MB")
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        conn = http_client.HTTPConnection("127.0.0.1", http, timeout=10)
        sizes = 0
        for first in range(0, args.tokens, args.step):
            tokens = mint(key, first, min(args.step, args.tokens - first), args.extra_claims)
            sizes += sum(len(t) for t in tokens)
            for token in tokens:
                headers = {
                    "host": "mcp.example.test",
                    "authorization": f"Bearer {token}",
                    "content-type": "application/json",
                    "mcp-protocol-version": "2025-11-25",
                }
                conn.request("POST", "/mcp", body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                if response.status != 200:
                    raise SystemExit(f"the authorizer answered {response.status}")
            done = first + len(tokens)
            grown = rss_kb(proc.pid) - base
            print(
                f"{done:>8,} tokens ({sizes / done:.0f} B each)  RSS {rss_kb(proc.pid) / 1024:6.1f} MB  "
                f"+{grown / 1024:6.1f} MB  {grown * 1024 / done:5.0f} B/token"
            )
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=100_000)
    parser.add_argument("--step", type=int, default=10_000)
    parser.add_argument("--extra-claims", type=int, default=6, help="claims beyond the RFC 9068 ones")
    parser.add_argument("--claims", action="store_true", help="keep every claim (as CEL conditions need)")
    parser.add_argument("--serve", action="store_true", help="measure a real `mcp-authz serve` process")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        key = devkey.ensure_key(Path(tmp) / "key.pem")
        if args.serve:
            serve(key, args, Path(tmp))
            return
        config = parse_config(config_text(key, args.tokens), "bench.json")
        keys = {name: KeySet(issuer, _no_http) for name, issuer in config.key_issuers.items()}
        verifier = Verifier(config.issuers, keys, config.token_cache_size, keep_claims=args.claims)
        gc.collect()
        base = rss_kb()
        print(f"the authorizer's modules loaded, cache empty: RSS {base / 1024:.1f} MB")
        started = time.perf_counter()
        asyncio.run(fill(verifier, config.servers["mcp"], key, args, base))
        print(f"({time.perf_counter() - started:.0f} s; claims kept: {args.claims})")


if __name__ == "__main__":
    main()
