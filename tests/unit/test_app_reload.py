"""Reloading the running authorizer (authz/app.py): one reload at a time, coalesced; the file watcher
reloads a change once; discovery swaps its config without a restart."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from authz import app as app_module
from authz.app import Authorizer, serve
from authz.config.load import load_config
from authz.config.runtime import Config
from authz.identity import devkey

CONFIG = """
listen: {{grpc: "127.0.0.1:{grpc}", discovery: "{discovery}"}}
issuers:
  - {{name: dev, issuer: "https://dev.example", local_key_file: "{key}", algorithms: [ES256]}}
servers:
  - name: demo
    resource: https://mcp.example/mcp
    scopes_supported: [{scopes}]
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write(path: Path, key: Path, *, scopes: str = "tools:read", discovery: str = "", grpc: int = 0) -> None:
    path.write_text(CONFIG.format(key=key, scopes=scopes, discovery=discovery, grpc=grpc), encoding="utf-8")


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    key = devkey.ensure_key(tmp_path / "k.pem")
    config = tmp_path / "config.yaml"
    write(config, key, grpc=free_port())
    return config, key


class CountingLoads:
    """Stands in for ``authz.app.load_config``: counts the loads; from the second on, takes ``delay`` seconds
    (blocking, as a slow disk would) and then raises ``fail`` if set."""

    def __init__(self, delay: float = 0.0, fail: BaseException | None = None) -> None:
        self.calls = 0
        self.delay = delay
        self.fail = fail

    def __call__(self, path: str | os.PathLike[str]) -> Config:
        self.calls += 1
        if self.calls > 1:
            time.sleep(self.delay)
            if self.fail is not None:
                raise self.fail
        return load_config(path)


async def test_a_sighup_storm_reloads_at_most_twice_and_leaves_no_task_exception(
    files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """180 SIGHUPs used to start 180 reloads, each a task whose exception nobody retrieved."""
    config, _ = files
    loads = CountingLoads(delay=0.02, fail=RuntimeError("disk on fire"))
    monkeypatch.setattr(app_module, "load_config", loads)
    loop = asyncio.get_running_loop()
    unhandled: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: unhandled.append(context))
    server = asyncio.create_task(serve(str(config)))
    try:
        for _ in range(100):  # started: the initial load is done and SIGHUP is ours
            await asyncio.sleep(0.02)
            if loads.calls:
                break
        await asyncio.sleep(0.2)
        for _ in range(60):
            os.kill(os.getpid(), signal.SIGHUP)
        await asyncio.sleep(1.5)
        reloads = loads.calls - 1
    finally:
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(server, 10)
    gc.collect()
    await asyncio.sleep(0)
    loop.set_exception_handler(None)
    assert 1 <= reloads <= 2, reloads
    assert not [c for c in unhandled if "never retrieved" in str(c.get("message", ""))], unhandled


async def test_the_watcher_reloads_a_change_once(files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """A change already reloaded (SIGHUP) is not reloaded again by the watcher; a rewrite with the same
    content is no change; a change nobody signalled is picked up."""
    config, key = files
    loads = CountingLoads()
    monkeypatch.setattr(app_module, "load_config", loads)
    authorizer = Authorizer(load_config(config), str(config))
    watcher = asyncio.create_task(authorizer.watch(interval=0.05))
    try:
        write(config, key, scopes="tools:read, tools:write", grpc=authorizer.config.listen.grpc.port)
        assert await authorizer.reload()
        assert loads.calls == 1
        await asyncio.sleep(0.4)
        assert loads.calls == 1  # the watcher saw the new mtime of a change already in force

        config.write_text(config.read_text(encoding="utf-8"), encoding="utf-8")  # touched, same bytes
        await asyncio.sleep(0.4)
        assert loads.calls == 1

        write(config, key, scopes="tools:admin", grpc=authorizer.config.listen.grpc.port)
        for _ in range(40):
            await asyncio.sleep(0.05)
            if loads.calls == 2:
                break
        await asyncio.sleep(0.3)
        assert loads.calls == 2
        assert authorizer.config.servers["demo"].scopes_supported == ("tools:admin",)
    finally:
        watcher.cancel()
        await authorizer.stop()


async def test_discovery_keeps_answering_during_reloads(tmp_path: Path) -> None:
    """Every reload used to stop and restart the discovery server: requests in between failed."""
    key = devkey.ensure_key(tmp_path / "k.pem")
    config = tmp_path / "config.yaml"
    port = free_port()
    grpc = free_port()
    write(config, key, discovery=f"127.0.0.1:{port}", grpc=grpc)
    authorizer = Authorizer(load_config(config), str(config))
    await authorizer.start()
    url = f"http://127.0.0.1:{port}/.well-known/oauth-protected-resource/mcp"
    answers: list[object] = []
    done = asyncio.Event()

    async def poll() -> None:
        async with aiohttp.ClientSession() as session:
            while not done.is_set():
                try:
                    async with session.get(url) as response:
                        answers.append(response.status if response.status != 200 else (await response.json()))
                except aiohttp.ClientError as exc:
                    answers.append(type(exc).__name__)
                await asyncio.sleep(0)

    poller = asyncio.create_task(poll())
    try:
        for i in range(6):
            await asyncio.sleep(0.05)
            write(config, key, scopes=f"tools:v{i}", discovery=f"127.0.0.1:{port}", grpc=grpc)
            assert await authorizer.reload()
        await asyncio.sleep(0.1)
    finally:
        done.set()
        await poller
        await authorizer.stop()
    failures = [a for a in answers if not isinstance(a, dict)]
    assert not failures, failures[:5]
    assert len(answers) > 20
    last = answers[-1]
    assert isinstance(last, dict) and last["scopes_supported"] == ["tools:v5"]  # the new config is served
