"""First use of the command line, tried as a new user would (issue 21): a mistake gets one line on stderr naming
what to fix and exit status 2, never a traceback."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from authz.cli import main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "config.yaml"


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of ``mcp-authz ARGV`` in this process."""
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got: {err!r}"
    assert lines[0].startswith("mcp-authz: ") and "Traceback" not in err
    return lines[0]


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory holding a copy of the example config (its dev key is made there)."""
    shutil.copy(EXAMPLE, tmp_path / "config.yaml")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("argv", [["-c", "config.yaml"], ["--config", "config.yaml"], ["config.yaml"]])
def test_config_check_takes_the_file_as_every_command_does(
    repo: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    from authz.app import ensure_dev_keys

    ensure_dev_keys("config.yaml")
    code, out, err = run(["config", "check", *argv], capsys)
    assert (code, out, err) == (0, "config.yaml: ok (1 MCP servers, 1 issuers)\n", "")


def test_config_check_warns_when_an_issuer_does_not_check_typ(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (repo / "loose.yaml").write_text(
        "issuers:\n"
        "  - {name: corp, issuer: https://login.example.com, jwks_uri: https://login.example.com/jwks}\n"
        "  - {name: strict, issuer: https://sts.example.com, token_type: at+jwt}\n"
        "servers:\n"
        "  - {name: mcp, resource: https://mcp.example.com/mcp}\n",
        encoding="utf-8",
    )
    code, out, err = run(["config", "check", "loose.yaml"], capsys)
    assert (code, out) == (0, "loose.yaml: ok (1 MCP servers, 2 issuers)\n")
    assert err.splitlines() == [
        "mcp-authz: warning: issuers.0.token_type is unset: the JOSE typ header of its tokens is not checked "
        "(RFC 8725 §3.11); set at+jwt for RFC 9068 access tokens, or the typ your IdP sends (Entra ID: JWT), "
        "or a profile that knows it"
    ]


def test_config_check_without_a_file_or_with_two_says_how(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["config", "check"], capsys)
    assert code == 2 and "FILE or -c FILE" in one_line(err)
    code, _, err = run(["config", "check", "-c", "config.yaml", "other.yaml"], capsys)
    assert code == 2 and "two files given" in one_line(err)


def test_token_for_an_unknown_server_names_the_known_ones(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["token", "-c", "config.yaml", "--server", "nope"], capsys)
    line = one_line(err)
    assert code == 2 and out == ""
    assert "--server" in line and "'nope'" in line and "demo" in line


def test_token_for_a_known_server_still_mints(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["token", "-c", "config.yaml", "--server", "demo"], capsys)
    assert code == 0 and out.count(".") == 2


def test_token_outside_the_repository_says_where_the_default_config_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = run(["token"], capsys)
    line = one_line(err)
    assert code == 2
    assert "examples/config.yaml" in line and "-c" in line and "repository" in line


def test_token_with_a_missing_config_file_names_it(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["token", "-c", "missing.yaml"], capsys)
    assert code == 2 and "missing.yaml" in one_line(err)


@pytest.mark.parametrize(
    ("content", "expected"),
    [(None, "cannot read"), ("{not json", "not JSON"), ('{"jsonrpc": "2.0",', "not JSON")],
    ids=["missing", "not-json", "truncated"],
)
def test_policy_explain_with_a_bad_request_file(
    repo: Path, capsys: pytest.CaptureFixture[str], content: str | None, expected: str
) -> None:
    if content is not None:
        (repo / "req.json").write_text(content, encoding="utf-8")
    run(["token", "-c", "config.yaml"], capsys)  # makes the dev key the config names
    code, out, err = run(["policy", "explain", "-c", "config.yaml", "--request", "req.json"], capsys)
    line = one_line(err)
    assert code == 2 and out == ""
    assert "--request" in line and "req.json" in line and expected in line


def test_policy_explain_still_explains(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (repo / "req.json").write_text('{"jsonrpc": "2.0", "id": 1, "method": "ping"}', encoding="utf-8")
    run(["token", "-c", "config.yaml"], capsys)
    code, out, _ = run(["policy", "explain", "-c", "config.yaml", "--request", "req.json"], capsys)
    assert code == 1 and '"decision": "deny"' in out  # no token: strict mode refuses


@pytest.mark.parametrize("target", ["envoy", "kubernetes"])
def test_render_into_a_missing_directory(repo: Path, capsys: pytest.CaptureFixture[str], target: str) -> None:
    run(["token", "-c", "config.yaml"], capsys)
    code, _, err = run(["render", target, "-c", "config.yaml", "-o", "no/such/dir/out.yaml"], capsys)
    line = one_line(err)
    assert code == 2
    assert "-o" in line and "no/such/dir" in line and "does not exist" in line
    assert not (repo / "no").exists()


def test_render_istio_into_a_path_that_is_a_file(
    repo: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copy(EXAMPLE.parent / "production.yaml", repo / "production.yaml")  # a public host: it renders for Istio
    monkeypatch.setenv("REDIS_URL", "redis://redis:6379/0")
    monkeypatch.setenv("AUDIT_WEBHOOK_SECRET", "placeholder-webhook-secret")
    (repo / "taken").write_text("x", encoding="utf-8")
    code, _, err = run(["render", "istio", "-c", "production.yaml", "-o", "taken"], capsys)
    line = one_line(err)
    assert code == 2 and "-o" in line and "taken" in line


def test_render_into_an_existing_directory_still_writes(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(["token", "-c", "config.yaml"], capsys)
    (repo / "out").mkdir()
    assert run(["render", "envoy", "-c", "config.yaml", "-o", "out/envoy.yaml"], capsys)[0] == 0
    assert "ext_authz" in (repo / "out" / "envoy.yaml").read_text(encoding="utf-8")


# ---------------------------------------------------------------- serve on a busy port (a real process)


@pytest.fixture
def held() -> Iterator[socket.socket]:
    """A listening socket on a loopback port: what a running authorizer (or anything else) looks like."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("key", ["grpc", "http", "discovery"])
def test_serve_on_a_busy_port_names_the_listen_key(repo: Path, held: socket.socket, key: str) -> None:
    busy = f"127.0.0.1:{held.getsockname()[1]}"
    ports = {name: f"127.0.0.1:{free_port()}" for name in ("grpc", "http", "discovery")}
    ports[key] = busy
    text = (repo / "config.yaml").read_text(encoding="utf-8")
    listen = "listen:\n" + "".join(f"  {name}: {address}\n" for name, address in ports.items())
    start = text.index("listen:\n")
    end = text.index("\n\n", start) + 1
    (repo / "config.yaml").write_text(text[:start] + listen + text[end:], encoding="utf-8")
    subprocess.run([sys.executable, "-m", "authz", "token", "-c", "config.yaml"], cwd=repo, check=True, timeout=60)
    done = subprocess.run(
        [sys.executable, "-m", "authz", "serve", "-c", "config.yaml"],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    line = one_line(done.stderr)
    assert f"listen.{key} {busy}" in line and "already in use" in line


def test_config_check_says_what_a_profile_sets_and_warns_on_a_shared_audience(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (repo / "entra.yaml").write_text(
        "issuers:\n"
        "  - name: entra\n"
        "    issuer: https://login.microsoftonline.com/{tenantid}/v2.0\n"
        "    jwks_uri: https://login.microsoftonline.com/common/discovery/v2.0/keys\n"
        "    profile: entra\n"
        "    tenants: [t1]\n"
        "    token_type: at+jwt\n"
        "servers:\n"
        "  - {name: a, resource: https://mcp.example.com/a, audiences: [api://shared]}\n"
        "  - {name: b, resource: https://mcp.example.com/b, audiences: [api://shared]}\n",
        encoding="utf-8",
    )
    code, out, err = run(["config", "check", "entra.yaml"], capsys)
    lines = out.splitlines()
    assert code == 0 and lines[-1] == "entra.yaml: ok (2 MCP servers, 1 issuers)"
    assert "issuers.0 (entra, profile entra): scopes from claim(s) scp" in lines
    assert "issuers.0 (entra, profile entra): token_type jwt (explicit setting wins)" in lines
    assert "issuers.0 (entra, profile entra): the tid claim must match the issuer's tenant" in lines
    assert err.splitlines() == [
        "mcp-authz: warning: servers.0.audiences: 'api://shared' is accepted by both 'a' and 'b': a token issued "
        "for one is accepted by the other (audience binding is weaker); give each its own"
    ]
