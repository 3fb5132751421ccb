"""``mcp-authz dev up``: the local stack on embedded defaults (in-memory state, dev signing key).

Starts the sample MCP server, the authorizer and Envoy as child processes, prints how to mint a
token and call a tool, and stops them all on Ctrl-C. A stack already running (this directory's
``.dev/dev-up.lock`` is held, or the ports it needs are taken) is named before anything starts.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import TextIO

import yaml

from authz import ports
from authz.app import ensure_dev_keys
from authz.config.errors import ConfigError
from authz.config.load import load_config
from authz.config.runtime import Config, HostPort
from authz.render.envoy import render_envoy_yaml

STATE = Path(".dev")
LOCK = STATE / "dev-up.lock"  # held (flock) by the running stack, which writes its pid in it
SAMPLE_SERVER = Path(__file__).resolve().parents[1] / "examples" / "sample_server.py"


def _wait(url: str, what: str, procs: list[subprocess.Popen[bytes]], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise RuntimeError(f"a process exited while waiting for {what}; see {STATE}/*.log")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{what} not ready at {url} after {timeout:.0f}s; see {STATE}/*.log")


def _fail(message: str) -> int:
    print(f"mcp-authz: dev up: {message}", file=sys.stderr)
    return 2


def _listeners(config: Config) -> dict[str, str | HostPort | None]:
    """Every address the stack listens on, by the config key that sets it."""
    envoy = config.envoy
    found = {
        "envoy.listen": str(envoy.listen),
        "envoy.admin_port": f"127.0.0.1:{envoy.admin_port}" if envoy.admin_port else "",
        **config.listeners(),
    }
    server = next(iter(config.servers.values()))
    found[f"servers[{server.name}].upstream"] = str(server.upstream)
    return found


def up(config_path: str) -> int:
    if not Path(config_path).is_file():
        return _fail(
            f"no {config_path} here (relative to the working directory {Path.cwd()}): "
            "run from the repository root or pass -c CONFIG"
        )
    STATE.mkdir(exist_ok=True)
    with LOCK.open("a+", encoding="utf-8") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            pid = lock.read().strip() or "?"
            return _fail(
                f"a local stack is already running here (pid {pid}, logs in {STATE}/): "
                "use it, or stop it (Ctrl-C where it runs) first"
            )
        return _up_locked(config_path, lock)


def _up_locked(config_path: str, lock: TextIO) -> int:
    """``up`` once this directory's lock is held: check the ports, then start the stack."""
    with contextlib.suppress(OSError, yaml.YAMLError):  # the loader names what is wrong with such a file
        ensure_dev_keys(config_path)
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print(f"mcp-authz: {exc}", file=sys.stderr)
        return 2
    taken = ports.unavailable(_listeners(config))
    if taken:
        return _fail(
            "cannot start: "
            + "; ".join(str(t) for t in taken)
            + f" (another stack or program has them: stop it, or change them in {config_path})"
        )
    lock.truncate(0)
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    envoy = shutil.which("envoy") or str(Path(sys.executable).with_name("envoy"))
    envoy_yaml = STATE / "envoy.yaml"
    envoy_yaml.write_text(render_envoy_yaml(config), encoding="utf-8")
    server = next(iter(config.servers.values()))
    up_host, up_port = server.upstream.host, str(server.upstream.port)
    commands = {
        "sample-server": [sys.executable, str(SAMPLE_SERVER), "--host", up_host, "--port", up_port],
        "authorizer": [sys.executable, "-m", "authz", "serve", "-c", config_path],
        "envoy": [envoy, "-c", str(envoy_yaml), "--concurrency", "1", "--use-dynamic-base-id", "--log-level", "warn"],
    }
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for name, argv in commands.items():
            log = (STATE / f"{name}.log").open("wb")
            procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT))
        _wait(f"http://{config.listen.discovery}/readyz", "the authorizer", procs)
        _wait(f"http://{config.envoy.listen}/.well-known/oauth-protected-resource{server.path}", "Envoy", procs)
        if any(p.poll() is not None for p in procs):  # answered by something else: no banner for a dead stack
            raise RuntimeError(f"a process exited while starting; see {STATE}/*.log")
        _banner(config_path, server.resource)
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        print(f"a process exited; see {STATE}/*.log", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    except RuntimeError as exc:
        print(f"mcp-authz: {exc}", file=sys.stderr)
        return 1
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()


def _banner(config_path: str, resource: str) -> None:
    print(
        f"""
mcp-authz local stack is up (logs in {STATE}/). MCP endpoint: {resource}

  # mint a development token (dev signing key, audience = the MCP server)
  TOKEN=$(.venv/bin/mcp-authz token -c {config_path} --sub alice --scope "tools:read")

  # call a tool through Envoy
  curl -s {resource} -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \\
       -H 'Accept: application/json, text/event-stream' -H 'MCP-Protocol-Version: 2026-07-28' \\
       -H 'Mcp-Method: tools/call' -H 'Mcp-Name: search' \\
       -d '{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"search","arguments":{{"query":"mcp"}},
            "_meta":{{"io.modelcontextprotocol/protocolVersion":"2026-07-28",
                      "io.modelcontextprotocol/clientCapabilities":{{}}}}}}}}'

  # without a token: 401 with WWW-Authenticate: Bearer resource_metadata="..."
  curl -si {resource} -H 'Content-Type: application/json' -d '{{"jsonrpc":"2.0","id":1,"method":"ping"}}'

Ctrl-C stops everything.
""",
        flush=True,
    )
