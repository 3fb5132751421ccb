"""Cloudflare Access as the trusted proxy (authz/identity/cloudflare.py, proxy.identify, config): assertions
signed by our own keys, the team's keys served by a loopback JWKS server and fetched by a KeySet."""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from support import (
    REMOVE,
    JwksServer,
    build_verifier,
    http_request,
    issuer_spec,
    jwks,
    keys,
    make_checker,
    make_config,
    policy,
    server_spec,
    sign,
    tool_call,
)

from authz.check import Checker
from authz.config.errors import ConfigError
from authz.config.runtime import Config
from authz.identity import cloudflare
from authz.model import Decision, HttpRequest
from authz.render.envoy import render_envoy

TEAM = "https://myteam.cloudflareaccess.com"
AUD = "4714c1358e65fe4b408ad6d432a5f878f08194bdb4752441fd56faefa9b2b6f2"
CERTS = "/cdn-cgi/access/certs"
ASSERTION = "cf-access-jwt-assertion"
EMAIL_HEADER = "cf-access-authenticated-user-email"
PROXY = "spiffe://cluster.local/ns/edge/sa/cloudflared"


def assertion(*, key: Any = None, header: dict[str, Any] | None = None, **overrides: Any) -> str:
    """An Access application token for alice, signed by keys().rsa unless ``key`` is given."""
    signer = key or keys().rsa
    now = int(time.time())
    claims: dict[str, Any] = {
        "aud": [AUD],
        "email": "alice@example.org",
        "exp": now + 600,
        "iat": now,
        "nbf": now,
        "iss": TEAM,
        "type": "app",
        "identity_nonce": "6ei69kawdKzMIAPF",
        "sub": "7335d417-61da-459d-899c-0a01c76a2f94",
        "country": "US",
        "custom": {"groups": ["admins", "dev"]},
    }
    for name, value in overrides.items():
        if value is REMOVE:
            claims.pop(name, None)
        else:
            claims[name] = value
    head = {"alg": signer.alg, "kid": signer.kid, "typ": "JWT", **(header or {})}
    return sign(head, claims, signer.private, head["alg"])


def cloudflare_config(server: JwksServer, *, proxy: dict[str, Any] | None = None, **server_fields: Any) -> Config:
    settings: dict[str, Any] = {
        "preset": "cloudflare",
        "cloudflare": {
            "team_domain": TEAM + "/",
            "audience": AUD,
            "jwks_uri": server.url(CERTS),
            "groups_claim": "custom.groups",
            "jwks_min_refetch": 0,
        },
        **(proxy or {}),
    }
    fields = {"identity": ["proxy"], "proxy": settings, **server_fields}
    return make_config([issuer_spec(jwks_uri="http://127.0.0.1:9/jwks")], [server_spec(**fields)])


def checker(config: Config, session: aiohttp.ClientSession) -> Checker:
    verifier, _ = build_verifier(config, session)
    return make_checker(config, verifier)


def request(headers: dict[str, str], *, principal: str = "", tool: str = "search") -> HttpRequest:
    req = http_request(tool_call(tool), headers=headers)
    return dataclasses.replace(req, source_principal=principal, source_address="203.0.113.7")


def refused(decision: Decision) -> tuple[bool, int, str]:
    return decision.allowed, decision.status, decision.reason


@pytest.fixture
def team(jwks_server: JwksServer) -> JwksServer:
    jwks_server.docs[CERTS] = jwks(keys().rsa, keys().rsa_new)
    return jwks_server


# ---------------------------------------------------------------- config


def test_config_compiles_the_team_and_its_default_certs_url() -> None:
    spec = {"preset": "cloudflare", "cloudflare": {"team_domain": TEAM, "audience": [AUD, "other"]}}
    config = make_config(servers=[server_spec(identity=["proxy"], proxy=spec)])
    proxy = config.servers["mcp"].proxy
    assert proxy is not None and proxy.cloudflare is not None
    assert proxy.principals is None and proxy.cidrs is None  # the assertion is the trust rule
    assert proxy.cloudflare.team_domain == TEAM
    assert proxy.cloudflare.audiences == (AUD, "other")
    assert proxy.cloudflare.keys.jwks_uri == TEAM + CERTS
    assert proxy.headers == (EMAIL_HEADER, ASSERTION)
    name = proxy.cloudflare.keys.name
    assert name in config.key_issuers and name not in config.issuers  # fetched, but never a token issuer


@pytest.mark.parametrize(
    ("cloudflare", "needle"),
    [
        ({"team_domain": "http://myteam.cloudflareaccess.com", "audience": AUD}, "team_domain"),
        ({"team_domain": TEAM + "/path", "audience": AUD}, "team_domain"),
        ({"team_domain": TEAM, "audience": []}, "AUD tag"),
        ({"team_domain": TEAM}, "audience"),
        ({"team_domain": TEAM, "audience": AUD, "jwks_uri": "file:///etc/keys"}, "jwks_uri"),
    ],
)
def test_bad_cloudflare_settings_are_config_errors(cloudflare: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError) as bad:
        make_config(servers=[server_spec(identity=["proxy"], proxy={"preset": "cloudflare", "cloudflare": cloudflare})])
    assert any(needle in e for e in bad.value.errors), bad.value.errors


def test_http_authorizer_is_sent_the_assertion(team: JwksServer) -> None:
    config = cloudflare_config(team)
    spec = copy.deepcopy(dict(config.settings))
    spec["listen"]["http"] = "127.0.0.1:9193"
    spec["envoy"]["authorizer"] = "http"
    config = make_config(spec["issuers"], spec["servers"], listen=spec["listen"], envoy=spec["envoy"])
    filters = render_envoy(config)["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    allowed = str(filters["typed_config"]["http_filters"][0]["typed_config"]["allowed_headers"])
    assert ASSERTION in allowed and EMAIL_HEADER in allowed


# ---------------------------------------------------------------- a valid assertion


async def test_valid_assertion_identifies_the_email_and_keys_are_cached(
    team: JwksServer, http_session: aiohttp.ClientSession
) -> None:
    authz = checker(cloudflare_config(team), http_session)
    headers = {ASSERTION: assertion(), EMAIL_HEADER: "alice@example.org"}
    decision = await authz.check(request(headers))
    assert (decision.allowed, decision.status) == (True, 200), decision.detail
    assert decision.caller is not None and decision.caller.mode == "proxy"
    assert decision.caller.subject == "alice@example.org"
    assert dict(decision.caller.claims) == {
        "sub": "alice@example.org",
        "email": "alice@example.org",
        "groups": ["admins", "dev"],
    }
    assert dict(decision.set_headers)["x-mcp-subject"] == "alice@example.org"
    assert {ASSERTION, EMAIL_HEADER} <= set(decision.remove_headers)  # never reach the MCP server
    assert (await authz.check(request({ASSERTION: assertion(key=keys().rsa_new)}))).allowed  # header optional
    assert team.fetches(CERTS) == 1


async def test_group_rule_applies_to_the_assertion_groups(
    team: JwksServer, http_session: aiohttp.ClientSession
) -> None:
    rules = policy({"name": "admins-delete", "tools": ["delete_*"], "when": '"admins" in jwt.groups'})
    rules["rules"].append({"name": "search", "tools": ["search"]})
    authz = checker(cloudflare_config(team, policy=rules), http_session)
    admin = await authz.check(request({ASSERTION: assertion()}, tool="delete_repo"))
    assert admin.allowed and admin.rule == "admins-delete"
    other = await authz.check(request({ASSERTION: assertion(custom={"groups": ["dev"]})}, tool="delete_repo"))
    assert refused(other)[:2] == (False, 403)


async def test_leeway_accepts_a_token_that_expired_seconds_ago(
    team: JwksServer, http_session: aiohttp.ClientSession
) -> None:
    authz = checker(cloudflare_config(team), http_session)
    assert (await authz.check(request({ASSERTION: assertion(exp=int(time.time()) - 10)}))).allowed


# ---------------------------------------------------------------- refused assertions


def _bad_assertions() -> list[tuple[str, Callable[[], str], str]]:
    """Each token is minted when its test runs (not at collection), so the time claims stay as meant."""
    now = lambda: int(time.time())  # noqa: E731
    return [
        ("expired", lambda: assertion(exp=now() - 120), "proxy_assertion_expired"),
        ("not yet valid", lambda: assertion(nbf=now() + 120), "proxy_assertion_not_yet_valid"),
        ("issued in the future", lambda: assertion(iat=now() + 120), "proxy_assertion_not_yet_valid"),
        ("other application", lambda: assertion(aud=["another-aud-tag"]), "proxy_assertion_audience"),
        ("other team", lambda: assertion(iss="https://evil.cloudflareaccess.com"), "proxy_assertion_issuer"),
        ("no exp", lambda: assertion(exp=REMOVE), "proxy_assertion_claim_missing"),
        ("no email (service token)", lambda: assertion(email=REMOVE), "proxy_assertion_claim_missing"),
        ("forged signature", lambda: assertion(key=keys().rsa_twin), "proxy_assertion_signature"),
        ("unknown kid", lambda: assertion(header={"kid": "nope"}), "proxy_assertion_kid_unknown"),
        ("PS256", lambda: assertion(key=keys().ps256, header={"kid": "rsa-1"}), "proxy_assertion_invalid"),
        (
            "HS256",
            lambda: sign({"alg": "HS256", "kid": "rsa-1"}, {"iss": TEAM}, b"k" * 32, "HS256"),
            "proxy_assertion_invalid",
        ),
        ("none", lambda: "eyJhbGciOiJub25lIn0.eyJpc3MiOiJ4In0.", "proxy_assertion_invalid"),
        ("garbage", lambda: "not-a-jwt", "proxy_assertion_invalid"),
    ]


@pytest.mark.parametrize(("case", "token", "reason"), _bad_assertions(), ids=[c[0] for c in _bad_assertions()])
async def test_invalid_assertion_is_401_with_its_reason(
    team: JwksServer, http_session: aiohttp.ClientSession, case: str, token: Callable[[], str], reason: str
) -> None:
    authz = checker(cloudflare_config(team), http_session)
    decision = await authz.check(request({ASSERTION: token(), EMAIL_HEADER: "alice@example.org"}))
    assert refused(decision) == (False, 401, reason), (case, decision.detail)
    assert decision.caller is None and decision.set_headers == ()


async def test_email_header_without_assertion_is_untrusted(
    team: JwksServer, http_session: aiohttp.ClientSession
) -> None:
    authz = checker(cloudflare_config(team), http_session)
    assert refused(await authz.check(request({EMAIL_HEADER: "alice@example.org"}))) == (False, 401, "proxy_untrusted")
    assert refused(await authz.check(request({}))) == (False, 401, "token_missing")


async def test_email_header_must_agree_with_the_assertion(
    team: JwksServer, http_session: aiohttp.ClientSession
) -> None:
    authz = checker(cloudflare_config(team), http_session)
    decision = await authz.check(request({ASSERTION: assertion(), EMAIL_HEADER: "mallory@example.org"}))
    assert refused(decision) == (False, 401, "proxy_email_mismatch")
    repeated = http_request(tool_call("search"), header_values={ASSERTION: (assertion(), assertion())})
    assert refused(await authz.check(repeated)) == (False, 401, "proxy_header_repeated")


async def test_principal_rule_and_assertion_both_must_pass(
    team: JwksServer, http_session: aiohttp.ClientSession
) -> None:
    authz = checker(cloudflare_config(team, proxy={"trusted_principals": [PROXY]}), http_session)
    headers = {ASSERTION: assertion()}
    assert (await authz.check(request(headers, principal=PROXY))).allowed
    assert refused(await authz.check(request(headers, principal="spiffe://x"))) == (False, 401, "proxy_untrusted")


async def test_strip_mode_ignores_a_bad_assertion_and_tries_the_next_source(
    team: JwksServer, http_session: aiohttp.ClientSession
) -> None:
    config = cloudflare_config(team, proxy={"on_untrusted": "strip"}, identity=["proxy", "jwt"], mode="optional")
    authz = checker(config, http_session)
    decision = await authz.check(request({ASSERTION: assertion(aud=["x"]), EMAIL_HEADER: "alice@example.org"}))
    assert decision.allowed and decision.caller is not None and decision.caller.mode == "anonymous"
    assert {ASSERTION, EMAIL_HEADER} <= set(decision.remove_headers)


async def test_unknown_kid_while_the_team_keys_cannot_be_fetched_is_503(
    jwks_server: JwksServer, http_session: aiohttp.ClientSession
) -> None:
    authz = checker(cloudflare_config(jwks_server), http_session)  # nothing served at CERTS: 404
    decision = await authz.check(request({ASSERTION: assertion()}))
    assert refused(decision) == (False, 503, "jwks_unavailable")
    jwks_server.docs[CERTS] = jwks(keys().rsa)
    assert (await authz.check(request({ASSERTION: assertion()}))).allowed  # fetched again once it is back


async def test_a_new_kid_while_refetching_is_throttled_is_503_not_401(
    jwks_server: JwksServer, http_session: aiohttp.ClientSession
) -> None:
    """Issue 21 item 5, for Access as for bearer tokens: a rotation seen within jwks_min_refetch is retryable."""
    jwks_server.docs[CERTS] = jwks(keys().rsa)
    config = cloudflare_config(jwks_server)
    access = config.servers["mcp"].proxy
    assert access is not None and access.cloudflare is not None
    throttled = dataclasses.replace(
        config.servers["mcp"],
        proxy=dataclasses.replace(
            access,
            cloudflare=dataclasses.replace(
                access.cloudflare, keys=dataclasses.replace(access.cloudflare.keys, jwks_min_refetch=60)
            ),
        ),
    )
    config = dataclasses.replace(config, servers={"mcp": throttled})
    authz = checker(config, http_session)
    assert (await authz.check(request({ASSERTION: assertion()}))).allowed  # its kid fetched the keys
    jwks_server.docs[CERTS] = jwks(keys().rsa, keys().rsa_new)  # the team rotates
    decision = await authz.check(request({ASSERTION: assertion(key=keys().rsa_new)}))
    assert refused(decision) == (False, 503, "jwks_unavailable")  # no refetch yet: retry, keep the token


async def test_an_assertion_is_never_a_bearer_token(team: JwksServer, http_session: aiohttp.ClientSession) -> None:
    config = cloudflare_config(team, identity=["jwt", "proxy"])
    authz = checker(config, http_session)
    decision = await authz.check(http_request(tool_call("search"), token=assertion()))
    assert refused(decision) == (False, 401, "token_issuer_unknown")


# ---------------------------------------------------------------- verified assertions are cached


async def test_a_cached_assertion_skips_the_signature_until_it_expires(
    team: JwksServer, http_session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded: list[str] = []
    real_decode = cloudflare.jwt.decode

    def counting_decode(token: str, *args: Any, **kwargs: Any) -> Any:
        decoded.append(token)
        return real_decode(token, *args, **kwargs)

    monkeypatch.setattr(cloudflare.jwt, "decode", counting_decode)
    authz = checker(cloudflare_config(team), http_session)
    token = assertion()
    for _ in range(3):
        assert (await authz.check(request({ASSERTION: token}))).allowed
    assert decoded == [token]
    later = time.time() + 3600  # past exp (+ leeway): the cache lets go, the assertion is verified again
    monkeypatch.setattr(cloudflare.time, "time", lambda: later)
    await authz.check(request({ASSERTION: token}))
    assert decoded == [token, token]


async def test_a_cached_assertion_is_refused_once_its_key_is_withdrawn(
    team: JwksServer, http_session: aiohttp.ClientSession
) -> None:
    config = cloudflare_config(team)
    verifier, keysets = build_verifier(config, http_session)
    authz = make_checker(config, verifier)
    token = assertion()
    assert (await authz.check(request({ASSERTION: token}))).allowed
    team.docs[CERTS] = jwks(keys().rsa_new)  # Access rotated rsa-1 out
    proxy = config.servers["mcp"].proxy
    assert proxy is not None and proxy.cloudflare is not None
    await keysets[proxy.cloudflare.keys.name].refresh()
    decision = await authz.check(request({ASSERTION: token}))
    assert refused(decision) == (False, 401, "proxy_assertion_kid_unknown")
