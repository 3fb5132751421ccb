"""RFC 9728 documents and paths (pure)."""

from __future__ import annotations

import json
from typing import Any

from authz.config.load import parse_config
from authz.config.runtime import Config
from discovery import rfc9728

ROOT = "/.well-known/oauth-protected-resource"


def make_config(servers: list[dict[str, Any]]) -> Config:
    issuers = [
        {"name": "a", "issuer": "https://a.example/tenant"},
        {"name": "b", "issuer": "https://b.example"},
    ]
    return parse_config(json.dumps({"issuers": issuers, "servers": servers}))


def test_document_lists_issuer_urls_in_server_order() -> None:
    config = make_config(
        [
            {
                "name": "s",
                "resource": "https://mcp.example/mcp",
                "issuers": ["b", "a"],
                "scopes_supported": ["tools:read", "tools:write"],
                "resource_name": "Demo",
            }
        ]
    )
    assert rfc9728.document(config.servers["s"], config.issuers) == {
        "resource": "https://mcp.example/mcp",
        "authorization_servers": ["https://b.example", "https://a.example/tenant"],
        "bearer_methods_supported": ["header"],
        "scopes_supported": ["tools:read", "tools:write"],
        "resource_name": "Demo",
    }


def test_document_omits_empty_scopes_and_name_and_defaults_to_all_issuers() -> None:
    config = make_config([{"name": "s", "resource": "https://mcp.example/mcp/"}])
    assert rfc9728.document(config.servers["s"], config.issuers) == {
        "resource": "https://mcp.example/mcp/",  # exactly as configured
        "authorization_servers": ["https://a.example/tenant", "https://b.example"],
        "bearer_methods_supported": ["header"],
    }


def test_path_is_the_challenge_url_path() -> None:
    config = make_config(
        [
            {"name": "s", "resource": "https://mcp.example/mcp/"},
            {"name": "t", "resource": "https://mcp.example/a/b"},
            {"name": "u", "resource": "https://mcp.example"},
        ]
    )
    assert rfc9728.well_known_path(config.servers["s"]) == f"{ROOT}/mcp"
    assert rfc9728.well_known_path(config.servers["t"]) == f"{ROOT}/a/b"
    assert rfc9728.well_known_path(config.servers["u"]) == ROOT
    for server in config.servers.values():
        assert server.metadata_url.endswith(rfc9728.well_known_path(server))


def test_single_server_is_also_at_the_root() -> None:
    config = make_config([{"name": "s", "resource": "https://mcp.example/mcp"}])
    table = rfc9728.routes(config)
    assert set(table) == {ROOT, f"{ROOT}/mcp"}
    assert table[ROOT] == table[f"{ROOT}/mcp"]
    assert table[ROOT][0].document["resource"] == "https://mcp.example/mcp"


def test_two_servers_root_only_for_the_path_less_one() -> None:
    config = make_config(
        [
            {"name": "s", "resource": "https://mcp.example/mcp"},
            {"name": "r", "resource": "https://mcp.example/"},
        ]
    )
    table = rfc9728.routes(config)
    assert set(table) == {ROOT, f"{ROOT}/mcp"}
    assert [p.document["resource"] for p in table[ROOT]] == ["https://mcp.example/"]


def test_two_servers_with_paths_leave_the_root_empty() -> None:
    config = make_config(
        [
            {"name": "s", "resource": "https://mcp.example/one"},
            {"name": "t", "resource": "https://mcp.example/two"},
        ]
    )
    assert set(rfc9728.routes(config)) == {f"{ROOT}/one", f"{ROOT}/two"}


def test_same_path_on_two_hosts_is_told_apart_by_host() -> None:
    config = make_config(
        [
            {"name": "s", "resource": "https://one.example/mcp"},
            {"name": "t", "resource": "http://Two.example:8080/mcp"},
        ]
    )
    candidates = rfc9728.routes(config)[f"{ROOT}/mcp"]
    assert len(candidates) == 2

    def resource(host: str | None) -> object:
        document = rfc9728.select(candidates, host)
        return None if document is None else document["resource"]

    assert resource("one.example") == "https://one.example/mcp"
    assert resource("ONE.example:443") == "https://one.example/mcp"
    assert resource("two.example:8080") == "http://Two.example:8080/mcp"
    assert resource("two.example") is None
    assert resource(None) is None


def test_a_single_candidate_is_served_whatever_the_host() -> None:
    config = make_config([{"name": "s", "resource": "https://mcp.example/mcp"}])
    candidates = rfc9728.routes(config)[f"{ROOT}/mcp"]
    document = rfc9728.select(candidates, "internal:9192")
    assert document is not None
    assert document["resource"] == "https://mcp.example/mcp"
