"""Challenges name scopes as the server's IdP must be asked for them (Entra: `<Application ID URI>/<scope>`)."""

from __future__ import annotations

from support import issuer_spec, make_config, server_spec

from authz.errors import InsufficientScope, MissingToken
from authz.response import challenge
from discovery.rfc9728 import document

ENTRA = issuer_spec(jwks_uri="https://login.example/keys", profile="entra")


def test_an_entra_server_asks_for_scopes_under_its_resource() -> None:
    config = make_config([ENTRA], [server_spec(scopes_supported=["tools:read", "offline_access"])])
    server = config.servers["mcp"]
    assert server.scope_prefix == "https://mcp.test/mcp/"
    unauthenticated = challenge(MissingToken(), server) or ""
    assert 'scope="https://mcp.test/mcp/tools:read"' in unauthenticated  # never offline_access
    step_up = challenge(InsufficientScope(("tools:read", "tools:write")), server) or ""
    assert 'scope="https://mcp.test/mcp/tools:read https://mcp.test/mcp/tools:write"' in step_up
    assert document(server, config.issuers)["scopes_supported"] == ["https://mcp.test/mcp/tools:read", "offline_access"]


def test_an_explicit_prefix_wins_and_other_profiles_keep_short_names() -> None:
    explicit = make_config([{**ENTRA, "scope_prefix": "api://app-1/"}], [server_spec(scopes_supported=["a"])])
    assert explicit.servers["mcp"].asked_as(["a", "openid"]) == ["api://app-1/a", "openid"]
    generic = make_config(servers=[server_spec(scopes_supported=["a"])]).servers["mcp"]
    assert (generic.scope_prefix, generic.asked_as(["a"])) == ("", ["a"])
