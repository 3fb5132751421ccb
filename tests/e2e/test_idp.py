"""The test identity provider (tests/idp/server.js) issues what the end-to-end tests rely on."""

from __future__ import annotations

import secrets
from typing import Any

import httpx
import jwt
import pytest
from harness import (
    DEFAULT_REDIRECT_URI,
    Factory,
    IdP,
    InMemoryTokenStorage,
    LoginDriver,
    SampleServer,
    auth_code_provider,
    authorization_url,
    client_credentials_provider,
    complete_login,
    mcp_client,
    pkce_pair,
)

RESOURCE = "http://127.0.0.1:1234/mcp"


def verify(idp: IdP, token: str, audience: str) -> dict[str, Any]:
    """Check the signature against the identity provider's JWKS, and the RFC 9068 basics."""
    header = jwt.get_unverified_header(token)
    assert header["typ"] == "at+jwt"
    keys = {k.key_id: k for k in jwt.PyJWKSet.from_dict(idp.jwks()).keys}
    claims: dict[str, Any] = jwt.decode(
        token,
        keys[header["kid"]],
        algorithms=["RS256", "ES256"],
        audience=audience,
        issuer=idp.issuer,
        options={"require": ["iss", "sub", "aud", "exp", "iat", "jti", "client_id"]},
    )
    return claims


def test_jwks_has_an_rsa_and_an_ec_key(idp_server: IdP) -> None:
    keys = idp_server.jwks()["keys"]
    assert {(k["kty"], k.get("alg")) for k in keys} == {("RSA", "RS256"), ("EC", "ES256")}
    assert all("d" not in k for k in keys)


def test_discovery_names_the_issuer_and_endpoints(idp_server: IdP) -> None:
    meta = httpx.get(f"{idp_server.issuer}/.well-known/openid-configuration").json()
    assert meta["issuer"] == idp_server.issuer
    assert meta["token_endpoint"] == idp_server.token_endpoint
    assert meta["registration_endpoint"] == idp_server.registration_endpoint
    assert "client_credentials" in meta["grant_types_supported"]
    assert meta["code_challenge_methods_supported"] == ["S256"]


def test_client_credentials_token_is_an_rfc9068_jwt(idp_server: IdP) -> None:
    response = idp_server.client_credentials_token("m2m-reader", RESOURCE, scope="tools:read")
    assert response["token_type"] == "Bearer"
    assert response["scope"] == "tools:read"
    claims = verify(idp_server, response["access_token"], RESOURCE)
    assert jwt.get_unverified_header(response["access_token"])["alg"] == "RS256"
    assert claims["aud"] == RESOURCE
    assert claims["scope"] == "tools:read"
    assert claims["client_id"] == claims["sub"] == "m2m-reader"
    assert claims["exp"] > claims["iat"]
    assert "groups" not in claims


def test_a_client_gets_only_the_scopes_it_is_allowed(idp_server: IdP) -> None:
    reader = idp_server.client_credentials_token("m2m-reader", RESOURCE, scope="tools:read tools:write")
    assert reader["scope"] == "tools:read"
    writer = idp_server.client_credentials_token("m2m-writer", RESOURCE, scope="tools:read tools:write")
    assert verify(idp_server, writer["access_token"], RESOURCE)["scope"] == "tools:read tools:write"


def test_admin_client_tokens_carry_groups(idp_server: IdP) -> None:
    token = idp_server.access_token("m2m-admin", RESOURCE, scope="tools:read tools:write")
    claims = verify(idp_server, token, RESOURCE)
    assert claims["groups"] == ["admins"]


def test_es256_client_gets_ec_signed_tokens(idp_server: IdP) -> None:
    token = idp_server.access_token("m2m-es256", "http://localhost:9/mcp", scope="tools:read")
    assert jwt.get_unverified_header(token)["alg"] == "ES256"
    assert verify(idp_server, token, "http://localhost:9/mcp")["scope"] == "tools:read"


@pytest.mark.parametrize(
    ("resource", "reason"),
    [(None, "required"), ("https://example.com/mcp", "127.0.0.1"), ("http://127.0.0.1:1234/mcp#frag", "fragment")],
)
def test_the_resource_indicator_is_required_and_local(idp_server: IdP, resource: str | None, reason: str) -> None:
    data = {"grant_type": "client_credentials", "scope": "tools:read"}
    if resource is not None:
        data["resource"] = resource
    response = httpx.post(idp_server.token_endpoint, data=data, auth=("m2m-reader", "m2m-reader-secret"))
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_target"
    assert reason in response.json()["error_description"]


def test_wrong_client_secret_is_refused(idp_server: IdP) -> None:
    response = httpx.post(
        idp_server.token_endpoint,
        data={"grant_type": "client_credentials", "resource": RESOURCE},
        auth=("m2m-reader", "wrong"),
    )
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"


def test_clients_claims_and_lifetime_are_configurable(idp_factory: Factory[IdP]) -> None:
    custom = idp_factory(
        clients=[{"client_id": "robot", "client_secret": "s3", "scope": "prompts:read", "claims": {"team": "qa"}}],
        access_token_ttl=5,
    )
    response = custom.client_credentials_token("robot", RESOURCE, scope="prompts:read tools:read", client_secret="s3")
    claims = verify(custom, response["access_token"], RESOURCE)
    assert claims["scope"] == "prompts:read"
    assert claims["team"] == "qa"
    assert claims["exp"] - claims["iat"] == 5
    assert response["expires_in"] == 5
    custom.proc.stop()


def register_public_client(idp: IdP, redirect_uri: str) -> str:
    response = httpx.post(
        idp.registration_endpoint,
        json={
            "redirect_uris": [redirect_uri],
            "token_endpoint_auth_method": "none",
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "application_type": "native",
            "client_name": "hand-made",
            # The MCP SDK registers with resource scopes; the identity provider drops them.
            "scope": "tools:read tools:write",
        },
    )
    assert response.status_code == 201, response.text
    assert response.json()["token_endpoint_auth_method"] == "none"
    return str(response.json()["client_id"])


@pytest.mark.parametrize(("login", "groups"), [("alice", ["users"]), ("admin-bob", ["admins"])])
async def test_dcr_auth_code_pkce_flow_by_hand(idp_server: IdP, login: str, groups: list[str]) -> None:
    client_id = register_public_client(idp_server, DEFAULT_REDIRECT_URI)
    verifier, challenge = pkce_pair()
    state = secrets.token_urlsafe(16)
    # Loopback redirect URIs may use any port (RFC 8252 §7.3).
    redirect_uri = "http://127.0.0.1:40001/callback"
    url = authorization_url(
        idp_server,
        client_id,
        redirect_uri,
        resource=RESOURCE,
        scope="tools:read prompts:read",
        state=state,
        challenge=challenge,
    )
    redirect = await complete_login(url, login)
    assert redirect.startswith(redirect_uri + "?")
    query = dict(httpx.URL(redirect).params)
    assert query["state"] == state
    assert query["iss"] == idp_server.issuer
    response = httpx.post(
        idp_server.token_endpoint,
        data={
            "grant_type": "authorization_code",
            "code": query["code"],
            "redirect_uri": redirect_uri,
            "client_id": client_id,
            "code_verifier": verifier,
            "resource": RESOURCE,
        },
    )
    assert response.status_code == 200, response.text
    claims = verify(idp_server, response.json()["access_token"], RESOURCE)
    assert claims["sub"] == login
    assert claims["groups"] == groups
    assert claims["client_id"] == client_id
    assert claims["scope"] == "tools:read prompts:read"


async def test_auth_code_without_pkce_is_refused(idp_server: IdP) -> None:
    client_id = register_public_client(idp_server, DEFAULT_REDIRECT_URI)
    url = authorization_url(
        idp_server, client_id, DEFAULT_REDIRECT_URI, resource=RESOURCE, scope="tools:read", state="s", challenge="x"
    )
    url = url.replace("&code_challenge=x&code_challenge_method=S256", "")
    redirect = await complete_login(url, "alice")
    assert "error=invalid_request" in redirect


# The SDK's own OAuth providers against the SDK's own in-process resource server (the sample
# server with --auth-issuer): proves the providers, the identity provider and the login driver
# work together before any authorizer is involved.


@pytest.fixture(scope="module")
def protected_sample(sample_server: Factory[SampleServer], idp: str) -> SampleServer:
    return sample_server(auth_issuer=idp, auth_scopes=["tools:read"])


async def test_sdk_client_credentials_provider(protected_sample: SampleServer, idp_server: IdP) -> None:
    storage = InMemoryTokenStorage()
    provider = client_credentials_provider(
        protected_sample.url, "m2m-reader", issuer=idp_server.issuer, storage=storage
    )
    async with mcp_client(protected_sample.url, auth=provider) as client:
        result = await client.call_tool("search", {"query": "readme"})
    assert not result.is_error
    assert storage.tokens is not None
    claims = verify(idp_server, storage.tokens.access_token, protected_sample.url)
    assert claims["sub"] == "m2m-reader"
    assert claims["scope"] == "tools:read"


async def test_sdk_auth_code_provider_registers_and_logs_in(protected_sample: SampleServer, idp_server: IdP) -> None:
    storage = InMemoryTokenStorage()
    driver = LoginDriver("admin-carol")
    provider = auth_code_provider(protected_sample.url, driver, storage=storage)
    async with mcp_client(protected_sample.url, auth=provider) as client:
        tools = await client.list_tools()
    assert "search" in {t.name for t in tools.tools}
    assert storage.client_info is not None and storage.client_info.token_endpoint_auth_method == "none"
    params = driver.last_authorization_params()
    assert params["resource"] == protected_sample.url
    assert params["code_challenge_method"] == "S256"
    assert storage.tokens is not None
    claims = verify(idp_server, storage.tokens.access_token, protected_sample.url)
    assert claims["sub"] == "admin-carol"
    assert claims["groups"] == ["admins"]
    assert "tools:read" in claims["scope"].split()
