"""Which issuers are mirrored, and at which paths (pure)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from authz.config.load import parse_config
from authz.config.runtime import Config
from authz.identity.devkey import ensure_key
from discovery import rfc8414

OAUTH = "/.well-known/oauth-authorization-server"
OIDC = "/.well-known/openid-configuration"


def make_config(issuers: list[dict[str, Any]], servers: list[dict[str, Any]] | None = None) -> Config:
    servers = servers or [{"name": "s", "resource": "https://mcp.example/mcp"}]
    return parse_config(json.dumps({"issuers": issuers, "servers": servers}))


def test_issuer_paths() -> None:
    assert rfc8414.issuer_paths("https://as.example") == [OAUTH, OIDC]
    assert rfc8414.issuer_paths("https://as.example/") == [OAUTH, OIDC]
    assert rfc8414.issuer_paths("https://as.example/realms/x/") == [
        f"{OAUTH}/realms/x",
        f"{OIDC}/realms/x",
        "/realms/x/.well-known/openid-configuration",
    ]


def test_local_issuers_are_not_mirrored(tmp_path: Path) -> None:
    key = ensure_key(tmp_path / "k.pem")
    config = make_config(
        [
            {"name": "dev", "issuer": "http://127.0.0.1:8080/dev", "local_key_file": str(key)},
            {"name": "corp", "issuer": "https://as.example/corp"},
        ]
    )
    assert [i.name for i in rfc8414.mirrored_issuers(config)] == ["corp"]
    table = rfc8414.routes(config)
    assert set(table.values()) == {"corp"}
    assert not any("dev" in path for path in table)
    # corp is the only mirrored issuer: it also has the root forms
    assert table[OAUTH] == table[OIDC] == table[f"{OAUTH}/corp"] == table["/corp/.well-known/openid-configuration"]


def test_root_is_the_first_path_less_issuer_in_server_order() -> None:
    config = make_config(
        [
            {"name": "a", "issuer": "https://a.example"},
            {"name": "b", "issuer": "https://b.example/"},
            {"name": "c", "issuer": "https://c.example/t"},
        ],
        [
            {"name": "s", "resource": "https://mcp.example/s", "issuers": ["c"]},
            {"name": "t", "resource": "https://mcp.example/t", "issuers": ["c", "b", "a"]},
        ],
    )
    root = rfc8414.root_issuer(config)
    assert root is not None and root.name == "b"
    table = rfc8414.routes(config)
    assert table[OAUTH] == table[OIDC] == "b"
    assert table[f"{OAUTH}/t"] == "c"


def test_no_root_when_several_issuers_all_have_paths() -> None:
    config = make_config(
        [
            {"name": "a", "issuer": "https://a.example/one"},
            {"name": "b", "issuer": "https://b.example/two"},
        ]
    )
    assert rfc8414.root_issuer(config) is None
    table = rfc8414.routes(config)
    assert OAUTH not in table and OIDC not in table
    assert table[f"{OIDC}/one"] == "a" and table["/two/.well-known/openid-configuration"] == "b"


def test_first_configured_issuer_keeps_a_shared_path() -> None:
    config = make_config(
        [
            {"name": "a", "issuer": "https://a.example/t"},
            {"name": "b", "issuer": "https://b.example/t"},
        ]
    )
    assert set(rfc8414.routes(config).values()) == {"a"}


def test_jwks_path() -> None:
    assert rfc8414.jwks_path("dev") == "/jwks/dev.json"
