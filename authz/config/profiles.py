"""Issuer profiles (``issuers[].profile``): what each identity provider really puts in its access tokens.

A profile only supplies defaults; a setting written in the issuer's entry always wins. ``generic`` is a
standards IdP (RFC 9068 claims, ``typ`` unchecked unless ``token_type`` says so). Sources: each vendor's
token reference (docs/idp/*.md names them); check yours before relying on a profile.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ProfileName = Literal["generic", "entra", "okta", "auth0", "keycloak", "google"]
TENANT = "{tenantid}"  # the placeholder of a multi-tenant issuer template (Entra ID)


@dataclass(frozen=True, slots=True)
class Profile:
    """Defaults for one IdP's access tokens."""

    name: ProfileName
    scope_claims: tuple[str, ...]  # claims whose values are scopes (space-separated string or array), merged
    token_type: str | None  # the JOSE typ its access tokens carry (checked by default), lower-case
    client_id_claims: tuple[str, ...]  # the first present names the OAuth client
    token_id_claim: str  # the claim revocation by id reads
    tenant_claim: str | None  # multi-tenant issuers: the claim that must equal the issuer's tenant
    groups: str  # where group / role claims are, for CEL (documentation only: CEL reads jwt.* as it is)
    # how clients must ask for a scope ("{resource}": the MCP server's resource URL); tokens carry the short name
    scope_prefix: str = ""


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile("generic", ("scope", "scp"), None, ("client_id", "azp"), "jti", None, "jwt.groups (RFC 9068 §7.2)"),
        Profile(
            "entra", ("scp",), "jwt", ("azp", "appid"), "uti", "tid", "jwt.roles (app roles), jwt.groups", "{resource}/"
        ),
        Profile("okta", ("scp",), None, ("cid", "client_id"), "jti", None, "jwt.groups (a claim you add)"),
        Profile("auth0", ("scope", "permissions"), "jwt", ("azp", "client_id"), "jti", None, "jwt.permissions"),
        Profile("keycloak", ("scope",), "jwt", ("azp", "client_id"), "jti", None, "jwt.realm_access.roles"),
        Profile("google", ("scope",), "jwt", ("azp", "client_id"), "jti", None, "jwt.hd (Workspace domain)"),
    )
}


def describe(profile: Profile, explicit: set[str]) -> list[str]:
    """What a profile sets, one line per setting, ``(explicit)`` where the issuer's own entry overrides it."""

    def mark(key: str) -> str:
        return " (explicit setting wins)" if key in explicit else ""

    return [
        f"scopes from claim(s) {', '.join(profile.scope_claims)}",
        f"token_type {profile.token_type or 'not checked'}{mark('token_type')}",
        f"client id from {', '.join(profile.client_id_claims)}",
        *([f"scopes asked for as {profile.scope_prefix}<scope>{mark('scope_prefix')}"] if profile.scope_prefix else []),
        f"token id (revocation) from {profile.token_id_claim}",
        *([f"the {profile.tenant_claim} claim must match the issuer's tenant"] if profile.tenant_claim else []),
        f"groups/roles for CEL: {profile.groups}",
    ]
