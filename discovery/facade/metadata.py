"""The facade's RFC 8414 metadata: one issuer identifier, used for the well-known URL, ``issuer`` and ``iss``.

RFC 8414 §3.1/§3.3: for issuer ``https://host/path`` the document lives at
``https://host/.well-known/oauth-authorization-server/path`` and its ``issuer`` must equal the identifier
exactly; RFC 9207: the ``iss`` the facade puts on its authorization responses is that same value.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

WELL_KNOWN = "/.well-known/oauth-authorization-server"


def well_known_url(issuer: str) -> str:
    """The RFC 8414 metadata URL built from an issuer identifier (path inserted after the well-known prefix)."""
    parts = urlsplit(issuer)
    if parts.scheme not in ("https", "http") or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(f"facade issuer {issuer!r} must be an absolute URL without query or fragment")
    path = parts.path.rstrip("/")
    return urlunsplit((parts.scheme, parts.netloc, WELL_KNOWN + path, "", ""))


def document(issuer: str, scopes: list[str]) -> dict[str, Any]:
    """The metadata the facade publishes; every endpoint sits under the issuer's path."""
    base = issuer.rstrip("/")
    return {
        "issuer": issuer,
        "authorization_endpoint": f"{base}/authorize",
        "token_endpoint": f"{base}/token",
        "registration_endpoint": f"{base}/register",
        "jwks_uri": f"{base}/jwks.json",
        "response_types_supported": ["code"],
        "grant_types_supported": ["authorization_code"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["none"],
        "scopes_supported": scopes,
        "client_id_metadata_document_supported": True,
        "authorization_response_iss_parameter_supported": True,
    }
