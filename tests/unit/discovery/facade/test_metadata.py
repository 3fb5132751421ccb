"""Facade metadata: issuer equals the identifier its well-known URL is built from (RFC 8414 §3.3)."""

from __future__ import annotations

import pytest

from discovery.facade.metadata import document, well_known_url


@pytest.mark.parametrize(
    ("issuer", "url"),
    [
        (
            "https://mcp.example.com/facade/github",
            "https://mcp.example.com/.well-known/oauth-authorization-server/facade/github",
        ),
        ("https://mcp.example.com", "https://mcp.example.com/.well-known/oauth-authorization-server"),
    ],
)
def test_well_known_url_inserts_issuer_path(issuer: str, url: str) -> None:
    assert well_known_url(issuer) == url


def test_document_issuer_is_the_identifier_and_cimd_first() -> None:
    doc = document("https://mcp.example.com/facade/github", ["read"])
    assert doc["issuer"] == "https://mcp.example.com/facade/github"
    assert doc["authorization_response_iss_parameter_supported"] is True
    assert doc["client_id_metadata_document_supported"] is True
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert doc["authorization_endpoint"].startswith(doc["issuer"] + "/")


def test_issuer_with_query_refused() -> None:
    with pytest.raises(ValueError, match="without query"):
        well_known_url("https://mcp.example.com/f?x=1")
