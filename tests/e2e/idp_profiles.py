"""Vendor-shaped configurations of the test identity provider (tests/idp/README.md), and the mcp-authz settings
each one needs: what the end-to-end profile tests (test_idp_profiles.py) run through real Envoy.

Each `IdpProfile` says what the vendor does that the standards-perfect IdP does not (the IdP's `IDP_OPTIONS`),
how its tokens look (so a test can check the IdP really issued that shape), and the `issuers[]` / `servers[]`
fields of the mcp-authz config that make the profile work. The MCP URL is known before anything starts (the
Envoy port is chosen first), because Entra's scopes and accepted resource are built from it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from harness import DEFAULT_REDIRECT_URI

PUBLIC_CLIENT_ID: Final = "mcp-preregistered"
"""The public auth-code client registered in the vendor's console (IdPs without a registration endpoint)."""

ENTRA_TENANT: Final = "8f2e5c1a-4b7d-4e39-9a61-0c3d2b1e7f45"
ENTRA_APP_ID: Final = "5b0d6a9e-3c1f-4f27-8d84-7a2e9c6b1d03"
AUTH0_API: Final = "https://mcp.example.com/api"
OKTA_AUDIENCE: Final = "api://default"
KEYCLOAK_AUDIENCE: Final = ("mcp-server", "account")


@dataclass(frozen=True)
class TokenShape:
    """What the IdP's access tokens look like (checked on the token the SDK got)."""

    typ: str | None
    scope_claim: str
    scope_array: bool
    audience: Callable[[str], str | list[str]]  # from the MCP URL
    client_id_claim: str
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class IdpProfile:
    name: str
    profile: str  # mcp-authz issuers[].profile
    options: Callable[[str], dict[str, Any]]  # IDP_OPTIONS from the MCP URL
    shape: TokenShape
    registration: bool  # whether the IdP offers dynamic client registration
    scope_form: Callable[[str, str], str] = lambda _url, scope: scope  # (MCP URL, scope) -> what the IdP is asked
    authz_issuer: Callable[[str], dict[str, Any]] = lambda _url: {}  # issuers[] fields besides name/issuer
    authz_server: Callable[[str], dict[str, Any]] = lambda _url: {}  # servers[] fields besides the stack's

    def idp_options(self, mcp_url: str) -> dict[str, Any]:
        options = self.options(mcp_url)
        if not self.registration:
            options["registration"] = False
            options["public_clients"] = [{"client_id": PUBLIC_CLIENT_ID, "redirect_uris": [DEFAULT_REDIRECT_URI]}]
        return options


def _entra_scope_prefix(mcp_url: str) -> str:
    # The app registration's Application ID URI is the MCP URL, so the `resource` the MCP SDK sends (the
    # MCP URL) is the one Entra accepts next to the app's scopes (AADSTS9010010 otherwise).
    return f"{mcp_url}/"


NO_DCR: Final = IdpProfile(
    name="generic-no-dcr",
    profile="generic",
    options=lambda _url: {},
    shape=TokenShape("at+jwt", "scope", False, lambda url: url, "client_id"),
    registration=False,
)
"""A standards-perfect IdP (RFC 8707, RFC 9068) without a registration endpoint: a pre-registered client id."""

OKTA: Final = IdpProfile(
    name="okta",
    profile="okta",
    options=lambda _url: {
        "issuer_path": "/oauth2/default",
        "resource_indicators": False,
        "audience": OKTA_AUDIENCE,
        "scope_claims": {"scp": "array"},
        "token_typ": None,
        "rename_claims": {"client_id": "cid"},
        "claims": {"ver": 1},
    },
    shape=TokenShape(None, "scp", True, lambda _url: OKTA_AUDIENCE, "cid", {"ver": 1}),
    registration=False,
    authz_server=lambda _url: {"audiences": [OKTA_AUDIENCE]},
)
"""Okta custom authorization server: own issuer path, `aud` the server's audience, `scp` array, `cid`, no typ,
DCR only with admin credentials (so: a pre-registered client)."""

AUTH0: Final = IdpProfile(
    name="auth0",
    profile="auth0",
    options=lambda _url: {
        "issuer_path": "/",
        "resource_indicators": False,
        "audience": AUTH0_API,
        "scope_claims": {"scope": "string", "permissions": "array"},
        "token_typ": "JWT",
        "rename_claims": {"client_id": "azp"},
    },
    shape=TokenShape("JWT", "permissions", True, lambda _url: AUTH0_API, "azp"),
    registration=True,
    authz_server=lambda _url: {"audiences": [AUTH0_API]},
)
"""Auth0: root issuer with its trailing slash, `aud` the API identifier (the tenant's default audience; no
RFC 8707), `scope` plus RBAC `permissions` array, `azp`, typ JWT, open DCR."""

KEYCLOAK: Final = IdpProfile(
    name="keycloak",
    profile="keycloak",
    options=lambda _url: {
        "issuer_path": "/realms/mcp",
        "resource_indicators": False,
        "audience": list(KEYCLOAK_AUDIENCE),
        "token_typ": "JWT",
        "rename_claims": {"client_id": "azp"},
        "claims": {"typ": "Bearer", "realm_access": {"roles": ["offline_access", "uma_authorization"]}},
    },
    shape=TokenShape("JWT", "scope", False, lambda _url: list(KEYCLOAK_AUDIENCE), "azp", {"typ": "Bearer"}),
    registration=True,
    authz_server=lambda _url: {"audiences": [KEYCLOAK_AUDIENCE[0]]},
)
"""Keycloak: realm-scoped issuer, `aud` from an audience mapper (plus `account`), `azp`, typ JWT with a payload
`typ: Bearer`, anonymous DCR."""

ENTRA: Final = IdpProfile(
    name="entra",
    profile="entra",
    options=lambda url: {
        "issuer_path": f"/{ENTRA_TENANT}/v2.0",
        "resource_indicators": False,
        "audience": ENTRA_APP_ID,
        "accepted_resource": url,
        "scope_prefix": _entra_scope_prefix(url),
        "scope_claims": {"scp": "string"},
        "token_typ": "JWT",
        "rename_claims": {"client_id": "azp", "jti": "uti"},
        "claims": {"tid": ENTRA_TENANT, "ver": "2.0"},
    },
    shape=TokenShape("JWT", "scp", False, lambda _url: ENTRA_APP_ID, "azp", {"tid": ENTRA_TENANT, "ver": "2.0"}),
    registration=False,
    scope_form=lambda url, scope: _entra_scope_prefix(url) + scope,
    authz_server=lambda _url: {"audiences": [ENTRA_APP_ID]},
)
"""Entra ID v2: per-tenant issuer `/{tid}/v2.0` with a `tid` claim, `aud` the application id (GUID), scopes asked
as `<Application ID URI>/<name>` and carried short in a space-separated `scp`, typ JWT, `azp`, `uti` instead of
`jti`, a `resource` other than the app's refused, no DCR."""

PROFILES: Final = (NO_DCR, OKTA, AUTH0, KEYCLOAK, ENTRA)
