"""A JWKS endpoint for fault tests: a real HTTP server process whose answers a test switches.

Run as ``python tests/e2e/jwks_server.py PORT``; it prints ``JWKS READY`` once listening.

- ``GET /jwks``: the current mode's answer: ``ok`` (the key set), ``slow`` (the key set after
  ``delay`` seconds), ``garbage`` (200 with a body that is no key set), ``error`` (HTTP 500).
- ``POST /control`` with ``{"mode": ..., "jwks": {...}, "delay": s, "garbage": "..."}`` (each optional).
- ``GET /stats``: ``{"fetches": <GETs of /jwks so far>}``.
- ``GET /.well-known/oauth-authorization-server/<path>``: RFC 8414 metadata for the issuer
  ``http://<host>/<path>`` (the discovery service mirrors it; always served).

"Down" is the process itself stopped (connection refused); `start_jwks_server` brings it back on
the same port. `JwksControl` is the test side.
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web

MODES = ("ok", "slow", "garbage", "error")


class _State:
    def __init__(self) -> None:
        self.mode = "ok"
        self.jwks: dict[str, Any] = {"keys": []}
        self.delay = 0.0
        self.garbage = "<html>maintenance</html>"
        self.fetches = 0


def build_app() -> web.Application:
    state = _State()

    async def jwks(request: web.Request) -> web.Response:
        state.fetches += 1
        if state.mode == "error":
            return web.Response(status=500, text="internal error")
        if state.mode == "garbage":
            return web.Response(body=state.garbage.encode(), content_type="application/json")
        if state.mode == "slow":
            await asyncio.sleep(state.delay)
        return web.json_response(state.jwks)

    async def control(request: web.Request) -> web.Response:
        body = await request.json()
        mode = body.get("mode", state.mode)
        if mode not in MODES:
            return web.Response(status=400, text=f"mode must be one of {MODES}")
        state.mode = mode
        state.jwks = body.get("jwks", state.jwks)
        state.delay = float(body.get("delay", state.delay))
        state.garbage = str(body.get("garbage", state.garbage))
        return web.Response(status=204)

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({"fetches": state.fetches, "mode": state.mode})

    async def metadata(request: web.Request) -> web.Response:
        base = f"http://{request.host}"
        return web.json_response(
            {
                "issuer": f"{base}/{request.match_info['path']}",
                "jwks_uri": f"{base}/jwks",
                "token_endpoint": f"{base}/token",
                "response_types_supported": ["code"],
            }
        )

    app = web.Application()
    app.router.add_get("/.well-known/oauth-authorization-server/{path:.+}", metadata)
    app.router.add_get("/jwks", jwks)
    app.router.add_post("/control", control)
    app.router.add_get("/stats", stats)
    return app


def main(argv: list[str]) -> None:
    def ready(*_: object) -> None:
        print("JWKS READY", flush=True)

    web.run_app(build_app(), host="127.0.0.1", port=int(argv[1]), print=ready, access_log=None)


# ---------------------------------------------------------------------------------------------- test side


@dataclass(frozen=True)
class JwksControl:
    """The test's handle on a running jwks_server process."""

    port: int

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def jwks_uri(self) -> str:
        return f"{self.base}/jwks"

    def set(self, mode: str = "ok", **fields: Any) -> None:
        response = httpx.post(f"{self.base}/control", content=json.dumps({"mode": mode, **fields}), timeout=5.0)
        response.raise_for_status()

    def fetches(self) -> int:
        return int(httpx.get(f"{self.base}/stats", timeout=5.0).json()["fetches"])


def start_jwks_server(log_dir: Path, port: int) -> Any:
    """Start (or restart, on the same port) the JWKS server process; returns its harness `Proc`."""
    from harness import Proc  # the harness is importable from tests/e2e only

    proc = Proc("jwks-server", [sys.executable, Path(__file__), str(port)], log_dir=log_dir)
    proc.start()
    try:
        proc.wait_log("JWKS READY", timeout=20.0)
    except BaseException:
        proc.stop()
        raise
    return proc


if __name__ == "__main__":
    main(sys.argv)
