"""Issuer profiles: each sets what its IdP does, and an explicit setting always wins."""

from __future__ import annotations

import pytest
from support import issuer_spec, make_config

from authz.config.profiles import PROFILES, describe
from authz.config.runtime import Issuer


def issuer(**fields: object) -> Issuer:
    return make_config([issuer_spec(jwks_uri="https://issuer.test/jwks", **fields)]).issuers["main"]


@pytest.mark.parametrize(
    ("profile", "typ", "scopes", "client_id", "token_id"),
    [
        ("generic", None, ("scope", "scp"), ("client_id", "azp"), "jti"),
        ("entra", "jwt", ("scp",), ("azp", "appid"), "uti"),
        ("okta", None, ("scp",), ("cid", "client_id"), "jti"),
        ("auth0", "jwt", ("scope", "permissions"), ("azp", "client_id"), "jti"),
        ("keycloak", "jwt", ("scope",), ("azp", "client_id"), "jti"),
        ("google", "jwt", ("scope",), ("azp", "client_id"), "jti"),
    ],
)
def test_a_profile_sets_its_idps_claims_and_typ(
    profile: str, typ: str | None, scopes: tuple[str, ...], client_id: tuple[str, ...], token_id: str
) -> None:
    compiled = issuer(profile=profile)
    assert (compiled.profile, compiled.token_type, compiled.scope_claims) == (profile, typ, scopes)
    assert (compiled.client_id_claims, compiled.token_id_claim, compiled.tenant_claim) == (client_id, token_id, None)


def test_explicit_settings_win_over_the_profile() -> None:
    assert issuer(profile="entra", token_type="at+jwt").token_type == "at+jwt"
    assert issuer(profile="entra", token_type=None).token_type is None  # written as null: not checked
    assert issuer(profile="auth0", scope_claims=["roles"]).scope_claims == ("roles",)


def test_a_multi_tenant_issuer_accepts_each_listed_tenant() -> None:
    compiled = issuer(issuer="https://login.microsoftonline.com/{tenantid}/v2.0", profile="entra", tenants=["a", "b"])
    assert compiled.tenant_claim == "tid"
    assert dict(compiled.accepted_issuers) == {
        "https://login.microsoftonline.com/a/v2.0": "a",
        "https://login.microsoftonline.com/b/v2.0": "b",
    }
    assert issuer(profile="entra").tenant_claim is None  # a single-tenant issuer: iss alone decides
    assert dict(issuer().accepted_issuers) == {"https://issuer.test": None}


def test_describe_marks_what_the_entry_overrides() -> None:
    lines = describe(PROFILES["entra"], {"token_type"})
    assert "token_type jwt (explicit setting wins)" in lines
    assert "scopes from claim(s) scp" in describe(PROFILES["entra"], set())
