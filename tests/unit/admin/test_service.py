"""The admin API in process: a real gRPC server (token or mTLS) over a MemoryStore, called through the CLI.

The CLI and its blocking client run in a worker thread, so the server on the test's event loop can answer.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from support import DevStack, dev_stack, make_config, policy, server_spec, tool_call

from authz.admin.server import start_admin
from authz.admin.service import AdminService
from authz.cli import main
from authz.config.compile import compile_admin
from authz.config.errors import ConfigError
from authz.config.schema import AdminSpec
from authz.explain.offline import REDACTED
from authz.store.base import SessionBinding, StoreError
from authz.store.memory import MemoryStore

TOKEN = "admin-token-0123456789abcdef"


@dataclass
class Admin:
    address: str
    store: MemoryStore
    stack: DevStack


async def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    """Run ``mcp-authz`` in a thread; (exit code, parsed stdout or None, stderr)."""
    code = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip() else None), err


def _stack(tmp_path: Path) -> DevStack:
    rules = policy(
        {"name": "protocol", "methods": ["initialize", "notifications/*", "tools/list"]},
        {"name": "read", "tools": ["search"], "scopes": ["tools:read"]},
        {"name": "write", "tools": ["delete_repo"], "scopes": ["tools:write"]},
    )
    limits = [{"name": "search", "per": "subject_tool", "tools": ["search"], "limit": 2, "window": 60}]
    return dev_stack(tmp_path, [server_spec(policy=rules, rate_limits=limits)])


@pytest.fixture
async def admin(tmp_path: Path) -> AsyncIterator[Admin]:
    stack = _stack(tmp_path)
    store = MemoryStore()
    spec = compile_admin(AdminSpec.model_validate({"listen": "127.0.0.1:0", "token": TOKEN}))
    server, port = await start_admin(spec, AdminService(lambda: stack.checker, lambda: store))
    try:
        yield Admin(f"127.0.0.1:{port}", store, stack)
    finally:
        await server.stop(None)


def with_token(admin: Admin, *argv: str, token: str = TOKEN) -> list[str]:
    return ["admin", "--address", admin.address, "--token", token, *argv]


# ---------------------------------------------------------------- revocation


async def test_revoke_token_then_the_store_refuses_it(admin: Admin, capsys: pytest.CaptureFixture[str]) -> None:
    exp = time.time() + 600
    assert not admin.store.is_revoked("alice", "jti-1", time.time())
    code, out, _ = await cli(capsys, *with_token(admin, "revoke-token", "jti-1", "--exp", str(exp)))
    assert (code, out["revoked"]) == (0, "jti-1")
    assert admin.store.is_revoked("alice", "jti-1", time.time())
    assert not admin.store.is_revoked("alice", "jti-2", time.time())


async def test_revoke_token_refuses_bad_arguments_and_changes_nothing(
    admin: Admin, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = await cli(capsys, *with_token(admin, "revoke-token", "jti-old", "--exp", str(time.time() - 5)))
    assert (code, out) == (2, None)
    assert "refused: expires_at is in the past" in err
    code, _, err = await cli(capsys, *with_token(admin, "revoke-token", "", "--exp", str(time.time() + 60)))
    assert code == 2 and "jti is required" in err
    assert not admin.store.is_revoked(None, "jti-old", None)
    assert not admin.store.is_revoked(None, "", None)


async def test_revoke_subject_cuts_off_tokens_issued_before(admin: Admin, capsys: pytest.CaptureFixture[str]) -> None:
    cutoff = time.time() - 100
    code, out, _ = await cli(capsys, *with_token(admin, "revoke-subject", "bob", "--before", str(cutoff)))
    assert code == 0 and out["before"] == pytest.approx(cutoff)
    assert admin.store.is_revoked("bob", None, cutoff - 1)
    assert not admin.store.is_revoked("bob", None, cutoff + 1)
    assert not admin.store.is_revoked("alice", None, cutoff - 1)


async def test_revoke_subject_defaults_to_now_and_takes_iso_times(
    admin: Admin, capsys: pytest.CaptureFixture[str]
) -> None:
    before = time.time()
    code, out, _ = await cli(capsys, *with_token(admin, "revoke-subject", "carol"))
    assert code == 0 and before <= out["before"] <= time.time()
    assert admin.store.is_revoked("carol", None, before - 1)
    code, out, _ = await cli(capsys, *with_token(admin, "revoke-subject", "dave", "--before", "2030-01-02T03:04:05Z"))
    assert code == 0 and out["before"] == datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.UTC).timestamp()


# ---------------------------------------------------------------- sessions


async def test_sessions_list_filter_and_end(admin: Admin, capsys: pytest.CaptureFixture[str]) -> None:
    await admin.store.bind_session("mcp", "s-1", "alice", 300)
    await admin.store.bind_session("mcp", "s-2", "bob", 300)
    await admin.store.bind_session("other", "s-3", "alice", 300)
    code, out, _ = await cli(capsys, *with_token(admin, "sessions"))
    assert code == 0
    assert {(s["server"], s["session_id"], s["subject"]) for s in out} == {
        ("mcp", "s-1", "alice"),
        ("mcp", "s-2", "bob"),
        ("other", "s-3", "alice"),
    }
    assert all(s["expires_at"] > time.time() for s in out)
    _, out, _ = await cli(capsys, *with_token(admin, "sessions", "--server", "mcp", "--subject", "alice"))
    assert [s["session_id"] for s in out] == ["s-1"]

    code, out, _ = await cli(capsys, *with_token(admin, "end-session", "mcp", "s-1"))
    assert (code, out) == (0, {"ended": True})
    assert [b.session_id for b in await admin.store.sessions(server="mcp")] == ["s-2"]
    # the ended session binds afresh to whoever uses it next
    assert await admin.store.bind_session("mcp", "s-1", "bob", 300) == "bob"
    code, out, _ = await cli(capsys, *with_token(admin, "end-session", "mcp", "nope"))
    assert (code, out) == (1, {"ended": False})


# ---------------------------------------------------------------- explain


def _request_file(tmp_path: Path, body: Any, **extra: Any) -> str:
    path = tmp_path / f"req-{time.monotonic_ns()}.json"
    path.write_text(json.dumps({"body": body, **extra} if extra else body), encoding="utf-8")
    return str(path)


async def test_explain_runs_the_live_check(admin: Admin, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    request = _request_file(tmp_path, tool_call("delete_repo"))
    reader = admin.stack.token(scopes=["tools:read"])
    code, out, _ = await cli(capsys, *with_token(admin, "explain", "--request", request, "--bearer", reader))
    assert code == 1
    assert (out["decision"], out["status"], out["reason"], out["rule"]) == ("deny", 403, "insufficient_scope", "write")
    assert "insufficient_scope" in out["headers"]["www-authenticate"]

    writer = admin.stack.token(scopes=["tools:write"])
    code, out, _ = await cli(capsys, *with_token(admin, "explain", "--request", request, "--bearer", writer))
    assert (code, out["decision"], out["status"], out["rule"], out["server"]) == (0, "allow", 200, "write", "mcp")
    assert out["headers"]["x-mcp-subject"] == "alice"

    code, out, _ = await cli(capsys, *with_token(admin, "explain", "--request", request))
    assert (code, out["status"], out["reason"]) == (1, 401, "token_missing")


async def test_explain_sees_the_store_and_changes_nothing(
    admin: Admin, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Explain reads revocations and session owners from the live store, binds nothing, spends no limit."""
    token = admin.stack.token(scopes=["tools:read"])
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    search = _request_file(tmp_path, tool_call("search"))
    code, out, _ = await cli(capsys, *with_token(admin, "explain", "--request", search, "--bearer", token))
    assert (code, out["decision"], out["rule"]) == (0, "allow", "read")

    await admin.store.revoke_token(jti, time.time() + 600)
    code, out, _ = await cli(capsys, *with_token(admin, "explain", "--request", search, "--bearer", token))
    assert (code, out["status"], out["reason"]) == (1, 401, "token_revoked")

    fresh = admin.stack.token(scopes=["tools:read"])
    handshake = {"mcp-protocol-version": "2025-11-25"}
    await admin.store.bind_session("mcp", "sess-bob", "bob", 300)
    taken = _request_file(tmp_path, tool_call("search"), headers={**handshake, "mcp-session-id": "sess-bob"})
    code, out, _ = await cli(capsys, *with_token(admin, "explain", "--request", taken, "--bearer", fresh))
    assert (code, out["status"], out["reason"]) == (1, 404, "session_hijack")

    new = _request_file(tmp_path, tool_call("search"), headers={**handshake, "mcp-session-id": "sess-new"})
    for _ in range(3):  # over the limit of 2 if explain counted
        code, out, _ = await cli(capsys, *with_token(admin, "explain", "--request", new, "--bearer", fresh))
        assert (code, out["decision"]) == (0, "allow")
    assert [b.session_id for b in await admin.store.sessions()] == ["sess-bob"]  # sess-new was not bound


async def test_explain_never_shows_a_credential(tmp_path: Path) -> None:
    """Headers set upstream other than the identity headers are redacted in the answer."""
    from authz.explain.offline import shown_headers
    from authz.model import Decision

    config = make_config()
    decision = Decision(
        allowed=True,
        status=200,
        reason="allowed",
        server="mcp",
        set_headers=(("x-mcp-subject", "alice"), ("authorization", "Bearer upstream-secret")),
    )
    assert shown_headers(config, decision) == {"x-mcp-subject": "alice", "authorization": REDACTED}


# ---------------------------------------------------------------- the guard


async def test_calls_without_or_with_a_wrong_token_are_refused(
    admin: Admin, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MCP_AUTHZ_ADMIN_TOKEN", raising=False)
    exp = str(time.time() + 600)
    for argv in (
        ["admin", "--address", admin.address, "revoke-token", "jti-x", "--exp", exp],
        with_token(admin, "revoke-token", "jti-x", "--exp", exp, token=TOKEN[:-1] + "X"),
        with_token(admin, "revoke-token", "jti-x", "--exp", exp, token=TOKEN + "more"),
    ):
        code, out, err = await cli(capsys, *argv)
        assert (code, out) == (2, None)
        assert "refused the credentials" in err and TOKEN not in err
    assert not admin.store.is_revoked(None, "jti-x", None)
    # the token from the environment is accepted
    monkeypatch.setenv("MCP_AUTHZ_ADMIN_TOKEN", TOKEN)
    code, _, _ = await cli(capsys, "admin", "--address", admin.address, "revoke-token", "jti-x", "--exp", exp)
    assert code == 0 and admin.store.is_revoked(None, "jti-x", None)


async def test_unreachable_admin_port_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"  # closed again: nothing listens there
    code, out, err = await cli(capsys, "admin", "--address", address, "--token", TOKEN, "sessions")
    assert (code, out) == (2, None)
    assert f"cannot reach the admin API at {address}" in err


def test_config_refuses_an_unguarded_admin_api() -> None:
    with pytest.raises(ConfigError) as err:
        make_config(admin={"listen": "127.0.0.1:0"})
    assert "neither token nor client_ca" in str(err.value)
    with pytest.raises(ConfigError, match="at least 16"):
        make_config(admin={"listen": "127.0.0.1:0", "token": "short"})
    with pytest.raises(ConfigError, match="client_ca"):
        make_config(admin={"listen": "127.0.0.1:0", "client_ca": "/ca.pem"})
    assert make_config().admin.listen is None  # off by default


async def test_server_refuses_to_start_unguarded() -> None:
    spec = compile_admin(
        AdminSpec.model_construct(listen="127.0.0.1:0", token=None, tls_cert=None, tls_key=None, client_ca=None)
    )
    with pytest.raises(ValueError, match="refused to start"):
        await start_admin(spec, AdminService(lambda: None, MemoryStore))  # type: ignore[arg-type,return-value]


# ---------------------------------------------------------------- mTLS


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path
    rogue_key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _issue(
    subject: str, issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None, *, ca: bool = False, server: bool = False
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    issuer_name, issuer_key = issuer if issuer is not None else (_name(subject), key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        san = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(issuer_key, hashes.SHA256()), key


def _write_pair(directory: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Path:
    (directory / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / f"{name}.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return directory / f"{name}.pem"


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca_cert, ca_key = _issue("admin-ca", None, ca=True)
    rogue_ca, rogue_ca_key = _issue("rogue-ca", None, ca=True)
    pairs: dict[str, tuple[x509.Certificate, ec.EllipticCurvePrivateKey]] = {
        "ca": (ca_cert, ca_key),
        "server": _issue("authorizer", (ca_cert.subject, ca_key), server=True),
        "client": _issue("operator", (ca_cert.subject, ca_key)),
        "rogue": _issue("operator", (rogue_ca.subject, rogue_ca_key)),
    }
    for name, (cert, key) in pairs.items():
        _write_pair(tmp_path, name, cert, key)
    p: Callable[[str], Path] = lambda name: tmp_path / name  # noqa: E731
    return Pki(
        p("ca.pem"),
        p("server.pem"),
        p("server.key"),
        p("client.pem"),
        p("client.key"),
        p("rogue.pem"),
        p("rogue.key"),
    )


async def test_mtls_requires_a_client_certificate_from_the_ca(
    pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = MemoryStore()
    spec = compile_admin(
        AdminSpec.model_validate(
            {
                "listen": "127.0.0.1:0",
                "tls_cert": str(pki.server_cert),
                "tls_key": str(pki.server_key),
                "client_ca": str(pki.ca),
            }
        )
    )
    stack = _stack(tmp_path)
    server, port = await start_admin(spec, AdminService(lambda: stack.checker, lambda: store))
    base = ["admin", "--address", f"localhost:{port}", "--ca", str(pki.ca), "--timeout", "3"]
    exp = str(time.time() + 600)
    try:
        # no client certificate, a certificate from another CA, plain text: refused, nothing changes
        for extra in (
            [],
            ["--cert", str(pki.rogue_cert), "--key", str(pki.rogue_key)],
        ):
            code, out, err = await cli(capsys, *base, *extra, "revoke-token", "jti-m", "--exp", exp)
            assert (code, out) == (2, None), err
            assert "cannot reach the admin API" in err and "TLS:" in err
        code, _, err = await cli(
            capsys, "admin", "--address", f"127.0.0.1:{port}", "--timeout", "3", "revoke-token", "jti-m", "--exp", exp
        )
        assert code == 2
        assert not store.is_revoked(None, "jti-m", None)

        mine = ["--cert", str(pki.client_cert), "--key", str(pki.client_key)]
        code, out, err = await cli(capsys, *base, *mine, "revoke-token", "jti-m", "--exp", exp)
        assert (code, out["revoked"]) == (0, "jti-m"), err
        assert store.is_revoked(None, "jti-m", None)
    finally:
        await server.stop(None)


def test_token_guard_compares_the_whole_value() -> None:
    from authz.admin.server import TokenGuard

    guard = TokenGuard(TOKEN)
    assert guard.allows((("authorization", f"Bearer {TOKEN}"),))
    assert not guard.allows((("authorization", f"bearer {TOKEN}x"),))
    assert not guard.allows((("authorization", TOKEN),))
    assert not guard.allows((("x-other", f"Bearer {TOKEN}"),))
    assert not guard.allows(None)


async def test_mtls_and_token_together_need_both(pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = MemoryStore()
    spec = compile_admin(
        AdminSpec.model_validate(
            {
                "listen": "127.0.0.1:0",
                "token": TOKEN,
                "tls_cert": str(pki.server_cert),
                "tls_key": str(pki.server_key),
                "client_ca": str(pki.ca),
            }
        )
    )
    stack = _stack(tmp_path)
    server, port = await start_admin(spec, AdminService(lambda: stack.checker, lambda: store))
    base = ["admin", "--address", f"localhost:{port}", "--ca", str(pki.ca)]
    mine = ["--cert", str(pki.client_cert), "--key", str(pki.client_key)]
    try:
        code, _, err = await cli(capsys, *base, *mine, "revoke-subject", "mallory")
        assert code == 2 and "refused the credentials" in err
        code, _, err = await cli(capsys, *base, "--token", TOKEN, "revoke-subject", "mallory")
        assert code == 2 and "cannot reach" in err
        assert not store.is_revoked("mallory", None, 1.0)
        code, _, err = await cli(capsys, *base, *mine, "--token", TOKEN, "revoke-subject", "mallory")
        assert code == 0, err
        assert store.is_revoked("mallory", None, 1.0)
    finally:
        await server.stop(None)


class DownStore(MemoryStore):
    """A store whose backend does not answer."""

    async def revoke_token(self, jti: str, expires_at: float) -> None:
        raise StoreError("deadline of 50 ms passed")

    async def sessions(self, server: str | None = None, subject: str | None = None) -> list[SessionBinding]:
        raise StoreError("deadline of 50 ms passed")


async def test_store_down_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = DownStore()
    stack = _stack(tmp_path)
    spec = compile_admin(AdminSpec.model_validate({"listen": "127.0.0.1:0", "token": TOKEN}))
    server, port = await start_admin(spec, AdminService(lambda: stack.checker, lambda: store))
    base = ["admin", "--address", f"127.0.0.1:{port}", "--token", TOKEN]
    try:
        code, out, err = await cli(capsys, *base, "revoke-token", "j", "--exp", str(time.time() + 60))
        assert (code, out) == (2, None)
        assert "store unavailable: deadline of 50 ms passed" in err
        code, _, err = await cli(capsys, *base, "sessions")
        assert code == 2 and "store unavailable" in err
    finally:
        await server.stop(None)


async def test_explain_reports_a_call_waiting_for_approval_without_asking(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = policy({"name": "guarded", "tools": ["delete_repo"], "scopes": ["tools:write"], "approval": True})
    approvals = {"webhook_url": "http://127.0.0.1:9/approve", "webhook_secret": "w" * 32, "callback_secret": "c" * 32}
    stack = dev_stack(tmp_path, [server_spec(policy=rules)], approvals=approvals)
    store = MemoryStore()
    spec = compile_admin(AdminSpec.model_validate({"listen": "127.0.0.1:0", "token": TOKEN}))
    server, port = await start_admin(spec, AdminService(lambda: stack.checker, lambda: store))
    request = _request_file(tmp_path, tool_call("delete_repo"))
    base = ["admin", "--address", f"127.0.0.1:{port}", "--token", TOKEN]
    try:
        argv = [*base, "explain", "--request", request, "--bearer", stack.token(scopes=["tools:write"])]
        code, out, _ = await cli(capsys, *argv)
    finally:
        await server.stop(None)
    assert (code, out["decision"], out["reason"]) == (1, "deny", "approval_pending")
    assert "rule 'guarded' waits" in out["detail"]
    assert len(store._values) == 0  # no pending approval was recorded


async def test_explain_names_upstream_credentials_without_revealing_or_exchanging(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = server_spec(
        policy=policy({"name": "read", "tools": ["search"], "scopes": ["tools:read"]}),
        credentials={"header": "X-Api-Key", "value_secret": "integration-secret-value"},
        token_exchange={
            "token_endpoint": "http://127.0.0.1:9/token",  # nothing listens: an exchange would fail the call
            "audience": "downstream-api",
            "client_id": "authorizer",
            "client_secret": "exchange-client-secret",
        },
    )
    stack = dev_stack(tmp_path, [server])
    spec = compile_admin(AdminSpec.model_validate({"listen": "127.0.0.1:0", "token": TOKEN}))
    admin_server, port = await start_admin(spec, AdminService(lambda: stack.checker, MemoryStore))
    request = _request_file(tmp_path, tool_call("search"))
    try:
        argv = ["admin", "--address", f"127.0.0.1:{port}", "--token", TOKEN, "explain", "--request", request]
        code, out, _ = await cli(capsys, *argv, "--bearer", stack.token(scopes=["tools:read"]))
    finally:
        await admin_server.stop(None)
    assert (code, out["decision"], out["rule"]) == (0, "allow", "read")
    headers = {k.lower(): v for k, v in out["headers"].items()}
    assert headers["x-api-key"] == headers["authorization"] == REDACTED
    assert "secret" not in json.dumps(out)
