"""Config reload in the real process: SIGHUP with an invalid file keeps the old config serving;
a valid file is swapped in without a restart."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from pathlib import Path

from harness import Authorizer, free_port

from authz.identity.devkey import ensure_key

CONFIG = """
listen: {{grpc: "127.0.0.1:{grpc}", discovery: "127.0.0.1:{discovery}"}}
issuers:
  - {{name: dev, issuer: "http://127.0.0.1:{discovery}/dev", local_key_file: "{key}", algorithms: [ES256]}}
servers:
  - {{name: demo, resource: "http://127.0.0.1:9/mcp", resource_name: "{name}"}}
"""


def _get(url: str) -> tuple[int, dict[str, object]]:
    with urllib.request.urlopen(url, timeout=2) as resp:
        return resp.status, json.loads(resp.read())


def _wait_for(predicate: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():  # type: ignore[operator]
                return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


def test_sighup_reload(authorizer: object, tmp_path: Path) -> None:
    key = ensure_key(tmp_path / "k.pem")
    ports = {"grpc": free_port(), "discovery": free_port()}
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG.format(key=key, name="first", **ports), encoding="utf-8")
    proc: Authorizer = authorizer(path)  # type: ignore[operator]
    prm = f"http://127.0.0.1:{ports['discovery']}/.well-known/oauth-protected-resource/mcp"
    assert _get(prm)[1]["resource_name"] == "first"
    pid = proc.proc.pid
    assert pid is not None

    path.write_text("servers: [this is: not valid", encoding="utf-8")
    os.kill(pid, signal.SIGHUP)
    time.sleep(1.0)
    assert proc.proc.alive, "an invalid reload must not stop the process"
    assert "config reload refused" in proc.proc.log_text()
    assert _get(prm)[1]["resource_name"] == "first"

    path.write_text(CONFIG.format(key=key, name="second", **ports), encoding="utf-8")
    os.kill(pid, signal.SIGHUP)
    assert _wait_for(lambda: _get(prm)[1]["resource_name"] == "second"), "the valid config was not swapped in"
