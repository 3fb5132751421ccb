"""``mcp-authz dev up`` for real (Envoy, the authorizer, the sample MCP server) while a stack already runs: the
second one names the running stack (same directory) or the busy ports (another directory), prints no banner, and
the first keeps serving with its logs intact (issue 21)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from processes import free_port

ROOT = Path(__file__).resolve().parents[2]


def stack_config(directory: Path) -> tuple[Path, str]:
    """The example config on free ports, in ``directory``; and Envoy's address."""
    text = (ROOT / "examples" / "config.yaml").read_text(encoding="utf-8")
    for old in ("8080", "9191", "9192", "8000"):
        text = text.replace(f":{old}", f":{free_port()}")
    path = directory / "config.yaml"
    path.write_text(text, encoding="utf-8")
    envoy = next(line.split()[1] for line in text.splitlines() if line.startswith("  listen:"))
    return path, envoy


def dev_up(config: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "authz", "dev", "up", "-c", str(config)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_dev_up_while_a_stack_runs(tmp_path: Path) -> None:
    first_dir, other_dir = tmp_path / "first", tmp_path / "other"
    first_dir.mkdir()
    other_dir.mkdir()
    config, envoy = stack_config(first_dir)
    shutil.copy(config, other_dir / "config.yaml")
    first = subprocess.Popen(
        [sys.executable, "-m", "authz", "dev", "up", "-c", str(config)],
        cwd=first_dir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert first.stdout is not None
        deadline = time.monotonic() + 60
        for line in first.stdout:
            if "local stack is up" in line or time.monotonic() > deadline:
                break
        assert "local stack is up" in line, "the first stack did not start"
        logs = {p.name: p.read_bytes() for p in (first_dir / ".dev").glob("*.log")}
        assert logs["authorizer.log"]

        same = dev_up(config, first_dir)
        assert same.returncode == 2, same.stderr
        assert "stack is up" not in same.stdout
        assert same.stderr.count("\n") == 1 and f"already running here (pid {first.pid}" in same.stderr

        other = dev_up(other_dir / "config.yaml", other_dir)
        assert other.returncode == 2, other.stderr
        assert "stack is up" not in other.stdout
        assert other.stderr.count("\n") == 1 and f"envoy.listen {envoy}: address already in use" in other.stderr
        assert not (other_dir / ".dev" / "envoy.yaml").exists()

        for name, before in logs.items():
            assert (first_dir / ".dev" / name).read_bytes().startswith(before), f"{name} was wiped"
        url = f"http://{envoy}/.well-known/oauth-protected-resource/mcp"
        with urllib.request.urlopen(url, timeout=5) as answer:
            assert answer.status == 200
        assert first.poll() is None
    finally:
        first.send_signal(signal.SIGINT)
        try:
            first.wait(20)
        except subprocess.TimeoutExpired:
            first.kill()
            first.wait()
