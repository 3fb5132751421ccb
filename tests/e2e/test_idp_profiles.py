"""Acceptance, issuer profiles with real parts (issue 18): the test IdP run as each vendor's IdP (idp_profiles.py:
Okta, Auth0, Keycloak, Entra ID, and a standards-perfect IdP without a registration endpoint), real Envoy +
mcp-authz (`issuers[].profile`, `servers[].audiences`) in front of the sample MCP server, and the `mcp` SDK's
OAuth client given nothing but the MCP URL (plus, where the IdP has no registration endpoint, the client id
registered in the vendor's console: the first registration option of the MCP spec).

Per configuration (one IdP + Envoy + authorizer for the module's tests of that configuration):
- the SDK finds the IdP from the MCP URL (401 → RFC 9728 → the IdP's metadata at its vendor's well-known
  location), logs in through the IdP's login form (browserless), lists tools and calls a read tool, with a token
  of the vendor's shape (typ, scope claim, audience, issuer, client-id claim: checked on the token itself);
- a write tool gets 403 `insufficient_scope` naming exactly the scope it needs, in the form that IdP is asked
  for (Entra: `<Application ID URI>/tools:write`);
- the SDK steps up (a second login asking for the union of scopes) and the call runs exactly once at the server.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
from harness import (
    DEFAULT_REDIRECT_URI,
    Authorizer,
    Envoy,
    Factory,
    IdP,
    InMemoryTokenStorage,
    LoginDriver,
    SampleServer,
    auth_code_provider,
    free_port,
    mcp_client,
    start_idp,
)
from idp_profiles import PROFILES, PUBLIC_CLIENT_ID, IdpProfile
from mcp.client.auth.exceptions import OAuthRegistrationError
from mcp.shared.auth import OAuthClientInformationFull
from pydantic import AnyUrl
from stack import Stack, challenge_params, post_call, start_stack

from authz.config.schema import IssuerSpec, ServerSpec

PROFILES_READY = "profile" in IssuerSpec.model_fields and "audiences" in ServerSpec.model_fields
"""The profile fields of the config (issue 18 items 1-2) are in the schema."""


@dataclass(frozen=True)
class Deployment:
    profile: IdpProfile
    idp: IdP
    stack: Stack

    @property
    def url(self) -> str:
        return self.stack.url

    def asked(self, scope: str) -> str:
        """A scope in the form the IdP is asked for it (and the challenge names it)."""
        return self.profile.scope_form(self.url, scope)


@pytest.fixture(scope="module", params=PROFILES, ids=lambda p: p.name)
def deployment(
    request: pytest.FixtureRequest,
    e2e_log_dir: Path,
    sample_server: Factory[SampleServer],
    authorizer: Factory[Authorizer],
    envoy: Factory[Envoy],
) -> Iterator[Deployment]:
    if not PROFILES_READY:
        pytest.skip("issuers[].profile and servers[].audiences are not in the config schema yet (issue 18 items 1-2)")
    profile: IdpProfile = request.param
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    idp = start_idp(e2e_log_dir, options=profile.idp_options(url))
    try:
        stack = start_stack(
            e2e_log_dir,
            name=f"profile-{profile.name}",
            idp=idp,
            sample_server=sample_server,
            authorizer=authorizer,
            envoy=envoy,
            port=port,
            # The profile decides the token type; the least-privileged scope first, the rest by step-up.
            issuer={"profile": profile.profile, "token_type": None, **profile.authz_issuer(url)},
            server={"scopes_supported": ["tools:read"], **profile.authz_server(url)},
        )
    except BaseException:
        idp.proc.stop()
        raise
    yield Deployment(profile, idp, stack)
    stack.stop()
    idp.proc.stop()


def preregistered_client() -> OAuthClientInformationFull:
    """The client id from the vendor's console, as the SDK keeps it (it then registers nothing)."""
    return OAuthClientInformationFull(
        client_id=PUBLIC_CLIENT_ID,
        redirect_uris=[AnyUrl(DEFAULT_REDIRECT_URI)],
        token_endpoint_auth_method="none",
        grant_types=["authorization_code", "refresh_token"],
        response_types=["code"],
    )


def leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaves(inner)]
    return [exc]


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def without_offline(scope: str) -> set[str]:
    return set(scope.split()) - {"offline_access"}


def verified_claims(dep: Deployment, token: str) -> dict[str, Any]:
    """The token's claims, its signature checked against the IdP's JWKS (audience and typ checked by the caller)."""
    header = jwt.get_unverified_header(token)
    keys = {k.key_id: k for k in jwt.PyJWKSet.from_dict(dep.idp.jwks()).keys}
    claims: dict[str, Any] = jwt.decode(
        token, keys[header["kid"]], algorithms=["RS256"], issuer=dep.idp.issuer, options={"verify_aud": False}
    )
    return claims


def token_scopes(dep: Deployment, token: str) -> set[str]:
    """The scopes in the vendor's scope claim (a string or an array, as the shape says)."""
    shape = dep.profile.shape
    value = verified_claims(dep, token)[shape.scope_claim]
    assert isinstance(value, list) == shape.scope_array, f"{shape.scope_claim}: {value!r}"
    return set(value) if isinstance(value, list) else set(value.split())


def assert_vendor_shape(dep: Deployment, token: str, client_id: str) -> None:
    shape = dep.profile.shape
    assert jwt.get_unverified_header(token).get("typ") == shape.typ
    claims = verified_claims(dep, token)
    assert claims["iss"] == dep.idp.issuer
    assert claims["aud"] == shape.audience(dep.url)
    assert claims[shape.client_id_claim] == client_id
    if shape.client_id_claim != "client_id":
        assert "client_id" not in claims
    for name, value in shape.extra.items():
        assert claims[name] == value, name


async def test_sdk_logs_in_from_the_mcp_url_calls_and_steps_up_once(deployment: Deployment) -> None:
    dep, stack = deployment, deployment.stack
    stack.clear()
    storage = InMemoryTokenStorage()
    if not dep.profile.registration:
        storage.client_info = preregistered_client()
    driver = LoginDriver("alice")
    provider = auth_code_provider(stack.url, driver, storage=storage)
    async with mcp_client(stack.url, auth=provider) as client:
        tools = await client.list_tools()
        assert {"search", "delete_repo"} <= {t.name for t in tools.tools}
        searched = await client.call_tool("search", {"query": "readme"})
        assert not searched.is_error

        # The first login: the SDK found the IdP from the MCP URL and asked for the least-privileged scope.
        assert storage.client_info is not None
        client_id = storage.client_info.client_id
        assert client_id is not None
        if not dep.profile.registration:
            assert client_id == PUBLIC_CLIENT_ID
        assert len(driver.authorization_urls) == 1
        first = driver.last_authorization_params()
        assert driver.authorization_urls[0].startswith(f"{dep.idp.base}/auth?")
        assert (first["client_id"], first["resource"]) == (client_id, stack.resource)
        assert without_offline(first["scope"]) == {dep.asked("tools:read")}
        assert storage.tokens is not None
        read_token = storage.tokens.access_token
        assert_vendor_shape(dep, read_token, client_id)
        assert token_scopes(dep, read_token) == {"tools:read"}

        # A write tool: 403 naming exactly the scope it needs, in the form the IdP is asked for.
        refused = post_call(
            stack, "delete_repo", {"repo": "sample"}, headers=[("authorization", f"Bearer {read_token}")]
        )
        assert refused.status_code == 403, refused.text
        challenge = challenge_params(refused.headers["www-authenticate"])
        assert challenge["error"] == "insufficient_scope"
        assert challenge["scope"].split() == [dep.asked("tools:write")]
        assert stack.sample.tool_calls() == ["search"]

        before = len(stack.decisions())
        deleted = await client.call_tool("delete_repo", {"repo": "sample"})
        assert not deleted.is_error
        assert deleted.content[0].text == "deleted sample"  # type: ignore[union-attr]

    # The SDK met one 403 insufficient_scope, logged in again for the union of scopes, and the call ran once.
    denials = [d for d in stack.decisions()[before:] if d["message"] == "deny"]
    assert [(d["status"], d["reason"], d.get("mcp_name")) for d in denials] == [
        (403, "insufficient_scope", "delete_repo")
    ]
    assert len(driver.authorization_urls) == 2
    second = query(driver.authorization_urls[1])
    assert without_offline(second["scope"]) == {dep.asked("tools:read"), dep.asked("tools:write")}
    assert storage.tokens is not None
    assert token_scopes(dep, storage.tokens.access_token) == {"tools:read", "tools:write"}
    assert stack.sample.tool_calls() == ["search", "delete_repo"]
    deletes = [r["headers"] for r in stack.sample.requests() if r["headers"].get("mcp-name") == "delete_repo"]
    assert len(deletes) == 1
    assert deletes[0]["x-mcp-subject"] == "alice"
    assert "authorization" not in deletes[0]


async def test_without_registration_only_a_known_client_gets_in(deployment: Deployment) -> None:
    """An IdP without a registration endpoint: a client with no pre-registered id fails from the MCP URL alone
    (the SDK finds nowhere to register). Only the authorization facade (issue 18 item 4: the discovery service
    as the authorization server, with CIMD and DCR in front of a static upstream client) lets it in."""
    if deployment.profile.registration:
        pytest.skip(f"{deployment.profile.name} offers dynamic client registration")
    stack = deployment.stack
    stack.clear()
    driver = LoginDriver("alice")
    provider = auth_code_provider(stack.url, driver)
    with pytest.raises(BaseException) as raised:  # the SDK's task group wraps it: checked below
        async with mcp_client(stack.url, auth=provider) as client:
            await client.list_tools()
    assert any(isinstance(e, OAuthRegistrationError) for e in leaves(raised.value)), raised.value
    assert driver.authorization_urls == []
    assert stack.sample.tool_calls() == []
