"""Every validation error the config file can raise: one case each, asserting the key path and the message."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from support import issuer_spec, server_spec

from authz.config.errors import ConfigError
from authz.config.load import load_config, parse_config
from authz.identity.devkey import ensure_key


def errors(
    issuers: list[dict[str, Any]] | None = None, servers: list[dict[str, Any]] | None = None, **top: Any
) -> list[str]:
    """The ConfigError lines of a document (issuers and servers default to one valid each)."""
    doc = {
        "issuers": issuers if issuers is not None else [issuer_spec(jwks_uri="http://127.0.0.1:9/jwks")],
        "servers": servers if servers is not None else [server_spec()],
        **top,
    }
    with pytest.raises(ConfigError) as refused:
        parse_config(json.dumps(doc), "<test>")
    return refused.value.errors


def test_a_yaml_syntax_error_names_the_file_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("issuers:\n  - name: a\n   issuer: x\n", encoding="utf-8")
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert refused.value.errors == [
        f"{path}:3:4: not valid YAML: expected <block end>, but found '<block mapping start>' "
        "(while parsing a block collection at line 2, column 3)"
    ]
    assert "<unicode string>" not in str(refused.value)


def test_relative_paths_are_taken_from_the_config_files_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "conf" / "keys").mkdir(parents=True)
    ensure_key(tmp_path / "conf" / "keys" / "dev.pem")
    (tmp_path / "conf" / "secret.key").write_text("k" * 32, encoding="utf-8")
    doc = {
        "issuers": [issuer_spec(local_key_file="keys/dev.pem")],
        "servers": [server_spec()],
        "secrets": {"key_files": ["secret.key"]},
        "admin": {"listen": "127.0.0.1:0", "token": "t" * 16, "tls_cert": "tls/cert.pem", "tls_key": "/abs/key.pem"},
    }
    (tmp_path / "conf" / "config.yaml").write_text(json.dumps(doc), encoding="utf-8")
    monkeypatch.chdir(tmp_path)  # anywhere but the config's directory
    config = load_config("conf/config.yaml")
    assert config.issuers["main"].local_key_file == str(Path("conf/keys/dev.pem"))
    assert config.secret_keys == (b"k" * 32,)
    assert (config.admin.tls_cert, config.admin.tls_key) == (str(Path("conf/tls/cert.pem")), "/abs/key.pem")


def test_a_typo_is_refused_with_the_nearest_key() -> None:
    found = errors(servers=[server_spec(scope_supported=["a"], proxy={"user_hedaer": "x"})], telemtry={})
    assert sorted(found) == [
        "servers.0.proxy.user_hedaer: unknown key; did you mean 'user_header'?",
        "servers.0.scope_supported: unknown key; did you mean 'scopes_supported'?",
        "telemtry: unknown key; did you mean 'telemetry'?",
    ]


def test_an_unknown_key_without_a_near_one_lists_the_keys_of_its_section() -> None:
    assert errors(servers=[server_spec(sessions={"zzz": 1})]) == [
        "servers.0.sessions.zzz: unknown key; the keys here are 'bind', 'ttl', 'hijack_status'"
    ]


def test_a_condition_reading_an_undeclared_variable_is_refused_naming_the_rule() -> None:
    rules = [
        {
            "name": "fine",
            "tools": ["*"],
            "when": 'jwt.sub != "" && [1, 2].exists(x, x > 0) && request.method == "POST"',
        },
        {"name": "typo", "tools": ["*"], "when": '"admins" in jtw.groups'},
    ]
    assert errors(servers=[server_spec(policy={"rules": rules})]) == [
        "servers.0.policy.rules.1.when: rule 'typo': undeclared variable 'jtw' in '\"admins\" in jtw.groups'; "
        "a condition reads jwt, mcp, request"
    ]


@pytest.mark.parametrize("key", ["webhook_secret", "callback_secret"])
def test_an_approval_secret_needs_16_bytes_even_from_an_empty_variable(
    monkeypatch: pytest.MonkeyPatch, key: str
) -> None:
    monkeypatch.setenv("EMPTY_SECRET", "")
    section = {"webhook_url": "https://approve.test/hook", "webhook_secret": "w" * 16, "callback_secret": "c" * 16}
    assert errors(approvals={**section, key: "${EMPTY_SECRET}"}) == [
        f"approvals.{key}: at least 16 bytes are needed to sign with it, this one has 0"
    ]
    assert errors(approvals={**section, key: "x" * 15}) == [
        f"approvals.{key}: at least 16 bytes are needed to sign with it, this one has 15"
    ]


def test_plain_http_off_loopback_is_refused_unless_allowed(caplog: pytest.LogCaptureFixture) -> None:
    issuers = [
        issuer_spec("idp", "http://idp.example", jwks_uri="http://idp.example/jwks"),
        issuer_spec("local", "http://127.0.0.1:8080/dev", jwks_uri="http://localhost:8080/jwks"),
    ]
    exchange = {"token_endpoint": "http://sts.example/token", "client_id": "c", "client_secret": "s", "audience": "a"}
    servers = [server_spec(token_exchange=exchange)]
    hooks = {
        "audit": {"webhook": {"url": "http://hooks.example/audit", "secret": "s" * 16}},
        "approvals": {
            "webhook_url": "http://approve.example/",
            "webhook_secret": "w" * 16,
            "callback_secret": "c" * 16,
        },
    }
    fix = (
        "(not loopback) sends keys, tokens or signed events unencrypted; use https://, or set allow_insecure_http: true"
    )
    assert errors(issuers, servers, **hooks) == [
        f"issuers.0.issuer: plain http to http://idp.example {fix}",
        f"issuers.0.jwks_uri: plain http to http://idp.example {fix}",
        f"servers.0.token_exchange.token_endpoint: plain http to http://sts.example {fix}",
        f"audit.webhook.url: plain http to http://hooks.example {fix}",
        f"approvals.webhook_url: plain http to http://approve.example {fix}",
    ]
    doc = {"issuers": issuers, "servers": servers, **hooks, "allow_insecure_http": True}
    with caplog.at_level("WARNING", "mcp_authz.config"):
        parse_config(json.dumps(doc), "<test>")
    assert [(r.key, r.url) for r in caplog.records] == [  # type: ignore[attr-defined]
        ("issuers.0.issuer", "http://idp.example"),
        ("issuers.0.jwks_uri", "http://idp.example"),
        ("servers.0.token_exchange.token_endpoint", "http://sts.example"),
        ("audit.webhook.url", "http://hooks.example"),
        ("approvals.webhook_url", "http://approve.example"),
    ]


def test_an_unknown_issuer_is_reported_at_the_server_with_the_valid_names() -> None:
    found = errors(
        [
            issuer_spec("dev", jwks_uri="http://127.0.0.1:9/a"),
            issuer_spec("prod", "https://b.test", jwks_uri="http://127.0.0.1:9/b"),
        ],
        [server_spec("one"), server_spec("two", "https://two.test/mcp", issuers=["dev", "staging"])],
    )
    assert found == ["servers.1.issuers: unknown issuer 'staging'; the issuers are 'dev', 'prod'"]
