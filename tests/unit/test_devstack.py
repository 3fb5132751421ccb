"""``mcp-authz dev up`` while a stack already runs (issue 21): it says so before starting anything, prints no
"stack is up" banner and leaves the running stack's logs alone."""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from authz import devstack

ROOT = Path(__file__).resolve().parents[2]
LOG = "the running stack's log\n"


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the example config and a .dev/ holding a running stack's logs."""
    shutil.copy(ROOT / "examples" / "config.yaml", tmp_path / "config.yaml")
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".dev").mkdir()
    for name in ("authorizer", "envoy", "sample-server"):
        (tmp_path / ".dev" / f"{name}.log").write_text(LOG, encoding="utf-8")
    return tmp_path


def logs_untouched(workdir: Path) -> bool:
    return all(p.read_text(encoding="utf-8") == LOG for p in (workdir / ".dev").glob("*.log"))


def test_a_running_stack_in_this_directory_is_named(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with (workdir / ".dev" / "dev-up.lock").open("w") as held:  # what a running `dev up` holds
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("4242\n")
        held.flush()
        code = devstack.up("config.yaml")
    out, err = capsys.readouterr()
    assert code == 2
    assert "stack is up" not in out
    assert err.count("\n") == 1 and err.startswith("mcp-authz: dev up: ")
    assert "already running" in err and "pid 4242" in err
    assert logs_untouched(workdir)


@pytest.fixture
def envoy_port_taken(workdir: Path) -> Iterator[str]:
    """Envoy's listen port held by someone else (a stack started elsewhere, another program)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        address = f"127.0.0.1:{sock.getsockname()[1]}"
        text = (workdir / "config.yaml").read_text(encoding="utf-8")
        (workdir / "config.yaml").write_text(text.replace("listen: 127.0.0.1:8080", f"listen: {address}"), "utf-8")
        yield address


def test_busy_ports_are_named_before_anything_starts(
    workdir: Path, envoy_port_taken: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = devstack.up("config.yaml")
    out, err = capsys.readouterr()
    assert code == 2
    assert "stack is up" not in out
    assert err.count("\n") == 1 and err.startswith("mcp-authz: dev up: ")
    assert f"envoy.listen {envoy_port_taken}: address already in use" in err
    assert logs_untouched(workdir)
    assert not (workdir / ".dev" / "envoy.yaml").exists()  # nothing of the new stack was written


def test_no_config_here_says_where_it_was_looked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    code = devstack.up("examples/config.yaml")
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "examples/config.yaml" in err and "repository root" in err and "-c" in err
    assert os.listdir(tmp_path) == []
