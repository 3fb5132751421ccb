"""Server selection by host and path when Envoy sends no ``mcp_server`` context extension (Istio gRPC)."""

from __future__ import annotations

import pytest
from support import make_checker

from authz.config.load import parse_config
from authz.config.runtime import Config
from authz.errors import Forbidden
from authz.identity.rfc9068 import Verifier
from authz.model import HttpRequest
from authz.routing import by_host_and_path, select_server

CONFIG = """
issuers: [{name: idp, issuer: "https://idp.example", jwks_uri: "https://idp.example/jwks"}]
servers:
  - {name: github, resource: "https://mcp.example.com/github"}
  - {name: github-admin, resource: "https://mcp.example.com/github/admin"}
  - name: docs
    resource: "https://docs.example.com/mcp"
    hosts: ["docs.example.com", "docs.default.svc.cluster.local"]
  - {name: other, resource: "https://other.example.com/mcp"}
  - {name: twin, resource: "https://twin.example.com/mcp", hosts: ["other.example.com"]}
"""


@pytest.fixture(scope="module")
def config() -> Config:
    return parse_config(CONFIG)


def names(config: Config, authority: str, path: str) -> list[str]:
    return [s.name for s in by_host_and_path(config.servers.values(), authority, path)]


@pytest.mark.parametrize(
    ("authority", "path", "expected"),
    [
        ("mcp.example.com", "/github", ["github"]),
        ("MCP.example.com:443", "/github/?x=1", ["github"]),
        ("mcp.example.com", "/github/admin", ["github-admin"]),  # the longest prefix wins
        ("mcp.example.com", "/github/admin/x", ["github-admin"]),
        ("mcp.example.com", "/githubx", []),  # prefixes end on a segment boundary
        ("mcp.example.com", "/mcp", []),
        ("docs.default.svc.cluster.local:8080", "/mcp", ["docs"]),  # an extra in-mesh host name
        ("evil.example.com", "/github", []),  # another host selects nothing
        ("other.example.com", "/mcp", ["other", "twin"]),  # ambiguous: refused by the Checker
    ],
)
def test_selection(config: Config, authority: str, path: str, expected: list[str]) -> None:
    assert names(config, authority, path) == expected


def _request(authority: str, path: str) -> HttpRequest:
    return HttpRequest(method="POST", path=path, headers={":authority": authority}, body=b"{}")


def test_checker_selects_by_host_and_path_and_refuses_what_it_cannot_place(config: Config) -> None:
    checker = make_checker(config, Verifier(config.issuers, {}))
    assert checker.select_server(_request("mcp.example.com", "/github/admin")).name == "github-admin"
    for authority, path in [("other.example.com", "/mcp"), ("evil.example.com", "/github")]:
        with pytest.raises(Forbidden) as refused:
            checker.select_server(_request(authority, path))
        assert refused.value.reason == "server_unknown"
    # The context extension, when Envoy sends it, decides whatever the host and path say.
    named = HttpRequest(
        method="POST", path="/x", headers={":authority": "evil"}, body=b"{}", context={"mcp_server": "docs"}
    )
    assert checker.select_server(named).name == "docs"


def test_an_unknown_server_name_is_refused_and_a_single_server_needs_no_name(config: Config) -> None:
    named = HttpRequest(method="POST", path="/x", headers={}, body=b"{}", context={"mcp_server": "nope"})
    with pytest.raises(Forbidden) as refused:
        select_server(config, named)
    assert (refused.value.reason, "'nope' is not configured" in str(refused.value)) == ("server_unknown", True)
    only = parse_config(CONFIG.split("  - {name: github-admin")[0])
    assert select_server(only, _request("anything.example", "/elsewhere")).name == "github"
