"""JWT access tokens (authz/identity/rfc9068.py): keys of every type, claims, audience per server, cache."""

from __future__ import annotations

import time
from dataclasses import fields
from types import SimpleNamespace
from typing import Any

import aiohttp
import jwt
import pytest
from support import (
    ISSUER,
    OTHER_ISSUER,
    OTHER_RESOURCE,
    REMOVE,
    RESOURCE,
    JwksServer,
    SigningKey,
    build_verifier,
    issuer_spec,
    jwks,
    keys,
    make_claims,
    make_config,
    server_spec,
    sign,
)

from authz.config.runtime import Config
from authz.errors import InvalidToken, Unavailable
from authz.identity import jwks as jwks_module
from authz.identity import rfc9068
from authz.identity.rfc9068 import Grant, TokenCache, Verified, Verifier
from authz.model import Caller

ALL_ALGS = ["RS256", "PS256", "ES256", "ES384", "EdDSA"]


class Setup:
    def __init__(self, verifier: Verifier, config: Config) -> None:
        self.verifier = verifier
        self.config = config

    async def verify(self, token: str, server: str = "mcp") -> Caller:
        return await self.verifier.verify(token, self.config.servers[server])

    async def refuse(self, token: str, server: str = "mcp") -> str:
        with pytest.raises(InvalidToken) as info:
            await self.verify(token, server)
        assert info.value.status == 401
        return info.value.reason


def make_setup(
    jwks_server: JwksServer,
    session: aiohttp.ClientSession,
    *signing_keys: SigningKey,
    servers: list[dict[str, Any]] | None = None,
    other_issuer: bool = False,
    **issuer_fields: Any,
) -> Setup:
    jwks_server.docs["/main.json"] = jwks(*(signing_keys or (keys().rsa, keys().ec256, keys().ec384, keys().ed25519)))
    fields = {"algorithms": ALL_ALGS, "token_type": "at+jwt", **issuer_fields}
    issuers = [issuer_spec(jwks_uri=jwks_server.url("/main.json"), **fields)]
    if other_issuer:
        jwks_server.docs["/other.json"] = jwks(keys().ec256)
        issuers.append(issuer_spec("second", OTHER_ISSUER, jwks_uri=jwks_server.url("/other.json")))
    config = make_config(issuers, servers)
    verifier, _ = build_verifier(config, session)
    return Setup(verifier, config)


@pytest.fixture
def setup(jwks_server: JwksServer, http_session: aiohttp.ClientSession) -> Setup:
    return make_setup(jwks_server, http_session)


# ---------------------------------------------------------------- accepted tokens


@pytest.mark.parametrize("name", ["rsa", "ps256", "ec256", "ec384", "ed25519"])
async def test_every_key_type_verifies(jwks_server: JwksServer, http_session: aiohttp.ClientSession, name: str) -> None:
    key: SigningKey = getattr(keys(), name)
    s = make_setup(jwks_server, http_session, key)
    claims = make_claims(jti="t-1")
    caller = await s.verify(key.token(claims))
    assert Caller(**{f.name: getattr(caller, f.name) for f in fields(Caller)}) == Caller(
        subject="alice",
        claims=claims,
        scopes=frozenset({"tools:read", "tools:write"}),
        client_id="client-1",
        issuer=ISSUER,
        mode="jwt",
        token_id="t-1",
        expires_at=claims["exp"],
    )


async def test_pyjwt_encoded_token(setup: Setup) -> None:
    token = jwt.encode(
        make_claims(), keys().ec384.private, algorithm="ES384", headers={"kid": "ec-384", "typ": "at+jwt"}
    )
    assert (await setup.verify(token)).subject == "alice"


@pytest.mark.parametrize("typ", ["at+jwt", "AT+JWT", "application/at+jwt", "Application/At+JWT"])
async def test_typ_variants(setup: Setup, typ: str) -> None:
    assert (await setup.verify(keys().ec256.token(header={"typ": typ}))).subject == "alice"


@pytest.mark.parametrize("typ", ["JWT", "jwt", "at+JWT2", "", 5, None])
async def test_wrong_typ(setup: Setup, typ: Any) -> None:
    header = {"typ": REMOVE} if typ is None else {"typ": typ}
    assert await setup.refuse(keys().ec256.token(header=header)) == "token_type_invalid"


async def test_typ_not_checked_when_not_configured(
    jwks_server: JwksServer, http_session: aiohttp.ClientSession
) -> None:
    s = make_setup(jwks_server, http_session, keys().ec256, token_type=None)
    assert (await s.verify(keys().ec256.token(header={"typ": "JWT"}))).subject == "alice"


@pytest.mark.parametrize(
    ("claims", "scopes"),
    [
        ({"scope": "a b  c"}, {"a", "b", "c"}),
        ({"scope": ""}, set()),
        ({"scope": REMOVE}, set()),
        ({"scope": REMOVE, "scp": ["x", "y"]}, {"x", "y"}),
        ({"scope": REMOVE, "scp": "x y"}, {"x", "y"}),
    ],
)
async def test_scope_forms(setup: Setup, claims: dict[str, Any], scopes: set[str]) -> None:
    assert (await setup.verify(keys().ec256.token(make_claims(**claims)))).scopes == scopes


async def test_client_id_falls_back_to_azp_and_subject_to_client(setup: Setup) -> None:
    caller = await setup.verify(keys().ec256.token(make_claims(client_id=REMOVE, azp="app")))
    assert caller.client_id == "app"
    s = make_setup_no_sub(setup)
    caller = await s.verify(keys().ec256.token(make_claims(sub=REMOVE, client_id="machine")))
    assert (caller.subject, caller.client_id, caller.anonymous) == ("machine", "machine", False)


def make_setup_no_sub(setup: Setup) -> Setup:
    """The same issuer, with `sub` not required (client-credentials tokens)."""
    spec = dict(setup.config.settings["issuers"][0])
    spec["required_claims"] = ["exp", "iss", "aud"]
    config = make_config([spec])
    return Setup(Verifier(config.issuers, setup.verifier._keys), config)


async def test_token_without_kid_uses_the_only_key(
    jwks_server: JwksServer, http_session: aiohttp.ClientSession
) -> None:
    s = make_setup(jwks_server, http_session, keys().ed25519)
    assert (await s.verify(keys().ed25519.token(header={"kid": REMOVE}))).subject == "alice"
    s = make_setup(jwks_server, http_session, keys().ed25519, keys().ec256)
    assert await s.refuse(keys().ed25519.token(header={"kid": REMOVE})) == "token_kid_unknown"


# ---------------------------------------------------------------- refused tokens


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"exp": REMOVE}, "token_claim_missing"),
        ({"exp": None}, "token_claim_missing"),  # null is not a way to get a token that never expires
        ({"sub": None}, "token_claim_missing"),
        ({"nbf": None}, "token_claim_invalid"),
        ({"iat": None}, "token_claim_invalid"),
        ({"sub": REMOVE}, "token_claim_missing"),
        ({"aud": REMOVE}, "token_claim_missing"),
        ({"exp": "9999999999"}, "token_claim_invalid"),
        ({"exp": 1e10}, "token_claim_invalid"),
        ({"exp": True}, "token_claim_invalid"),
        ({"exp": -1}, "token_claim_invalid"),
        ({"exp": 2**64}, "token_claim_invalid"),
        ({"nbf": "0"}, "token_claim_invalid"),
        ({"iat": 1.5}, "token_claim_invalid"),
        ({"sub": 42}, "token_claim_invalid"),
        ({"aud": 42}, "token_claim_invalid"),
        ({"aud": [RESOURCE, 1]}, "token_claim_invalid"),
        ({"scope": 7}, "token_claim_invalid"),
        ({"scope": ["a", 1]}, "token_claim_invalid"),
        ({"exp": int(time.time()) - 3600}, "token_expired"),
        ({"nbf": int(time.time()) + 3600}, "token_not_yet_valid"),
        ({"iat": int(time.time()) + 3600}, "token_issued_in_future"),
        ({"exp": int(time.time()) + 10 * 86400}, "token_lifetime_too_long"),
        ({"iss": "https://unknown.test"}, "token_issuer_unknown"),
        ({"iss": REMOVE}, "token_issuer_unknown"),
        ({"iss": [ISSUER]}, "token_issuer_unknown"),
        ({"aud": "https://mcp.test/mcp/"}, "token_audience_mismatch"),
        ({"aud": ["https://other.test/mcp", "https://mcp.test"]}, "token_audience_mismatch"),
        ({"aud": []}, "token_audience_mismatch"),
    ],
)
async def test_claim_checks(setup: Setup, overrides: dict[str, Any], reason: str) -> None:
    assert await setup.refuse(keys().ec256.token(make_claims(**overrides))) == reason


async def test_clock_skew(jwks_server: JwksServer, http_session: aiohttp.ClientSession) -> None:
    s = make_setup(jwks_server, http_session, keys().ec256, clock_skew=30)
    now = int(time.time())
    assert (await s.verify(keys().ec256.token(make_claims(exp=now - 20)))).subject == "alice"
    assert (await s.verify(keys().ec256.token(make_claims(nbf=now + 20, iat=now + 20)))).subject == "alice"
    assert await s.refuse(keys().ec256.token(make_claims(exp=now - 40))) == "token_expired"
    assert await s.refuse(keys().ec256.token(make_claims(nbf=now + 40))) == "token_not_yet_valid"


async def test_null_exp_is_refused_even_when_not_required(
    jwks_server: JwksServer, http_session: aiohttp.ClientSession
) -> None:
    s = make_setup(jwks_server, http_session, keys().ec256, required_claims=["iss", "aud"])
    assert await s.refuse(keys().ec256.token(make_claims(exp=None))) == "token_claim_invalid"
    caller = await s.verify(keys().ec256.token(make_claims(exp=REMOVE)))
    assert caller.expires_at is None


async def test_require_jti(jwks_server: JwksServer, http_session: aiohttp.ClientSession) -> None:
    s = make_setup(jwks_server, http_session, keys().ec256, require_jti=True)
    assert (await s.verify(keys().ec256.token(make_claims(jti="x")))).token_id == "x"
    assert await s.refuse(keys().ec256.token(make_claims(jti=REMOVE))) == "token_claim_missing"
    assert await s.refuse(keys().ec256.token(make_claims(jti=5))) == "token_claim_missing"


async def test_alg_must_fit_the_key(setup: Setup) -> None:
    k = keys()
    # ES256 header, but the kid names the P-384 key (and the signature is made with it)
    token = sign({"alg": "ES256", "kid": "ec-384", "typ": "at+jwt"}, make_claims(), k.ec256.private, "ES256")
    assert await setup.refuse(token) == "token_alg_key_mismatch"
    # PS256 with an RSA key whose JWK pins RS256
    token = sign({"alg": "PS256", "kid": "rsa-1", "typ": "at+jwt"}, make_claims(), k.rsa.private, "PS256")
    assert await setup.refuse(token) == "token_alg_key_mismatch"


async def test_tampered_payload_fails_the_signature(setup: Setup) -> None:
    token = keys().ec256.token(make_claims(scope="tools:read"))
    head, _, sig = token.split(".")
    forged = sign({"alg": "ES256"}, make_claims(scope="admin"), keys().ec256.private, "ES256").split(".")[1]
    assert await setup.refuse(f"{head}.{forged}.{sig}") == "token_signature_invalid"
    assert await setup.refuse(f"{head}.{token.split('.')[1]}.{sig[:-4]}") == "token_signature_invalid"
    assert await setup.refuse(f"{head}.{token.split('.')[1]}.") == "token_signature_invalid"


# ---------------------------------------------------------------- per server: audience and issuer


async def test_audience_is_checked_per_server(jwks_server: JwksServer, http_session: aiohttp.ClientSession) -> None:
    s = make_setup(
        jwks_server,
        http_session,
        keys().ec256,
        servers=[server_spec(), server_spec("other", OTHER_RESOURCE)],
    )
    for_mcp = keys().ec256.token()
    assert (await s.verify(for_mcp, "mcp")).subject == "alice"
    assert await s.refuse(for_mcp, "other") == "token_audience_mismatch"  # cached, still refused
    assert await s.refuse(keys().ec256.token(make_claims(aud=OTHER_RESOURCE)), "mcp") == "token_audience_mismatch"
    both = keys().ec256.token(make_claims(aud=[RESOURCE, OTHER_RESOURCE]))
    assert (await s.verify(both, "mcp")).subject == (await s.verify(both, "other")).subject == "alice"


async def test_extra_issuer_audiences(jwks_server: JwksServer, http_session: aiohttp.ClientSession) -> None:
    s = make_setup(jwks_server, http_session, keys().ec256, audiences=["api://shared"])
    assert (await s.verify(keys().ec256.token(make_claims(aud="api://shared")))).subject == "alice"
    assert await s.refuse(keys().ec256.token(make_claims(aud="api://other"))) == "token_audience_mismatch"


async def test_issuer_not_trusted_for_that_server(jwks_server: JwksServer, http_session: aiohttp.ClientSession) -> None:
    s = make_setup(
        jwks_server,
        http_session,
        keys().ec256,
        other_issuer=True,
        servers=[server_spec(issuers=["second"]), server_spec("both", OTHER_RESOURCE)],
    )
    token = keys().ec256.token(make_claims(aud=[RESOURCE, OTHER_RESOURCE]))
    assert await s.refuse(token, "mcp") == "token_issuer_untrusted"
    assert (await s.verify(token, "both")).issuer == ISSUER
    from_second = keys().ec256.token(make_claims(iss=OTHER_ISSUER))
    assert (await s.verify(from_second, "mcp")).issuer == OTHER_ISSUER


async def test_per_issuer_size_limit(jwks_server: JwksServer, http_session: aiohttp.ClientSession) -> None:
    s = make_setup(jwks_server, http_session, keys().ec256, other_issuer=True, max_token_bytes=1000)
    big = keys().ec256.token(make_claims(pad="x" * 1200))
    assert await s.refuse(big) == "token_too_large"
    # the other issuer keeps its own (default) limit
    assert (await s.verify(keys().ec256.token(make_claims(iss=OTHER_ISSUER, pad="x" * 1200)))).issuer == OTHER_ISSUER


# ---------------------------------------------------------------- the token cache


async def test_cache_hit_skips_verification(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    token = keys().ec256.token()
    first = await setup.verify(token)
    assert (setup.verifier.cache.hits, setup.verifier.cache.misses) == (0, 1)

    async def must_not_verify(*args: Any) -> Verified:
        raise AssertionError("verified again")

    monkeypatch.setattr(setup.verifier, "_verify", must_not_verify)
    assert await setup.verify(token) is first
    assert setup.verifier.cache.hits == 1


async def test_expired_while_cached(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    now = int(time.time())
    token = keys().ec256.token(make_claims(exp=now + 60))
    assert (await setup.verify(token)).subject == "alice"
    assert len(setup.verifier.cache) == 1
    monkeypatch.setattr(rfc9068, "time", SimpleNamespace(time=lambda: now + 60 + 31))  # past exp + 30 s skew
    assert await setup.refuse(token) == "token_expired"
    assert len(setup.verifier.cache) == 0


async def test_refused_tokens_are_not_cached(setup: Setup) -> None:
    token = keys().ec256.token(make_claims(exp=int(time.time()) - 3600))
    for _ in range(2):
        assert await setup.refuse(token) == "token_expired"
    assert len(setup.verifier.cache) == 0


def test_cache_is_bounded() -> None:
    cache = TokenCache(2)
    entry = Verified("s", {}, frozenset(), grant=Grant("main", frozenset()))
    for token in ("a", "b", "c"):
        cache.put(token, entry)
    assert len(cache) == 2
    assert cache.get("a") is None and cache.get("c") is entry
    cache.drop("c")
    assert cache.get("c") is None


# ---------------------------------------------------------------- key rotation, seen through tokens


async def test_rotation_through_tokens(
    jwks_server: JwksServer, http_session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    monkeypatch.setattr(jwks_module, "time", SimpleNamespace(monotonic=lambda: now[0]))
    k = keys()
    s = make_setup(jwks_server, http_session, k.rsa, jwks_min_refetch=30)
    assert (await s.verify(k.rsa.token())).subject == "alice"
    assert jwks_server.fetches("/main.json") == 1

    # the issuer starts signing with a new key: the unknown kid triggers one refetch
    jwks_server.docs["/main.json"] = jwks(k.rsa, k.rsa_new)
    now[0] += 30
    assert (await s.verify(k.rsa_new.token())).subject == "alice"
    assert jwks_server.fetches("/main.json") == 2

    # the old key is withdrawn; a fresh token under it still verifies until the key set is refetched
    jwks_server.docs["/main.json"] = jwks(k.rsa_new)
    assert (await s.verify(k.rsa.token())).subject == "alice"
    now[0] += 30
    assert await s.refuse(k.rsa_new.token(header={"kid": "unknown"})) == "token_kid_unknown"  # refetches
    assert jwks_server.fetches("/main.json") == 3
    assert await s.refuse(k.rsa.token()) == "token_kid_unknown"
    # unknown kids within the interval cause no further fetches
    for _ in range(5):
        assert await s.refuse(k.rsa.token()) == "token_kid_unknown"
    assert jwks_server.fetches("/main.json") == 3


async def test_token_without_exp_is_reverified_not_expired(
    jwks_server: JwksServer, http_session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = make_setup(jwks_server, http_session, keys().ec256, required_claims=["iss", "aud", "sub"])
    now = int(time.time())
    token = keys().ec256.token(make_claims(exp=REMOVE, iat=now, nbf=now))
    assert (await s.verify(token)).expires_at is None
    later = now + 3600  # long past the 300 s the entry is cached for
    monkeypatch.setattr(rfc9068, "time", SimpleNamespace(time=lambda: later))
    assert (await s.verify(token)).subject == "alice"
    entry = s.verifier.cache.get(token)  # verified afresh: the entry now runs from `later`
    assert entry is not None and entry.expires_at is None and entry.grant.recheck_at == later + 300


async def test_cached_token_is_refused_once_its_key_is_withdrawn(
    jwks_server: JwksServer, http_session: aiohttp.ClientSession
) -> None:
    k = keys()
    s = make_setup(jwks_server, http_session, k.rsa, k.ec256, jwks_min_refetch=0)
    old, other = k.rsa.token(), k.ec256.token()
    assert (await s.verify(old)).subject == (await s.verify(other)).subject == "alice"
    assert len(s.verifier.cache) == 2

    # the issuer rotates: rsa-1 is withdrawn, ec-256 stays; the new kid makes the authorizer refetch
    jwks_server.docs["/main.json"] = jwks(k.rsa_new, k.ec256)
    assert (await s.verify(k.rsa_new.token())).subject == "alice"
    hits = s.verifier.cache.hits
    assert (await s.verify(other)).subject == "alice"  # its key is still published: a cache hit
    assert s.verifier.cache.hits == hits + 1
    assert await s.refuse(old) == "token_kid_unknown"  # cached, but its key is gone: verified again, refused
    assert s.verifier.cache.get(old) is None


async def test_cached_token_is_refused_once_its_kid_names_another_key(
    jwks_server: JwksServer, http_session: aiohttp.ClientSession
) -> None:
    k = keys()
    s = make_setup(jwks_server, http_session, k.rsa, jwks_min_refetch=0)
    token = k.rsa.token()
    assert (await s.verify(token)).subject == "alice"
    jwks_server.docs["/main.json"] = jwks(k.rsa_twin)  # same kid, another key
    await s.verifier._keys["main"].refresh()
    assert await s.refuse(token) == "token_signature_invalid"


async def test_unknown_kid_while_the_jwks_cannot_be_fetched_is_unavailable(
    jwks_server: JwksServer, http_session: aiohttp.ClientSession
) -> None:
    k = keys()
    s = make_setup(jwks_server, http_session, k.rsa, jwks_min_refetch=0)
    known = k.rsa.token()
    assert (await s.verify(known)).subject == "alice"
    jwks_server.docs["/main.json"] = b"garbage"
    with pytest.raises(Unavailable) as info:
        await s.verify(k.rsa_new.token())
    assert (info.value.status, info.value.reason) == (503, "jwks_unavailable")
    assert (await s.verify(k.rsa.token())).subject == "alice"  # the last good keys still verify
    jwks_server.docs["/main.json"] = jwks(k.rsa)  # back, without rsa-2: now the kid is truly unknown
    assert await s.refuse(k.rsa_new.token()) == "token_kid_unknown"


async def test_a_new_kid_while_refetching_is_throttled_is_503_not_401(
    jwks_server: JwksServer, http_session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 21 item 5: a client discards its token on 401 invalid_token; a 503 it retries."""
    now = [1000.0]
    monkeypatch.setattr(jwks_module, "time", SimpleNamespace(monotonic=lambda: now[0]))
    k = keys()
    s = make_setup(jwks_server, http_session, k.rsa, jwks_min_refetch=30)
    assert await s.refuse(k.ec256.token()) == "token_kid_unknown"  # fetched: not published
    jwks_server.docs["/main.json"] = jwks(k.rsa, k.rsa_new)  # the issuer rotates
    now[0] += 1
    with pytest.raises(Unavailable) as info:
        await s.verify(k.rsa_new.token())  # no refetch allowed yet: retry later, keep the token
    assert (info.value.status, info.value.reason) == (503, "jwks_unavailable")
    now[0] += 29
    assert (await s.verify(k.rsa_new.token())).subject == "alice"


# ---------------------------------------------------------------- issue 21 item 6: what a cached token costs


def _many_tokens(n: int) -> list[str]:
    k = keys()
    extra = {"email": "alice@corp.test", "groups": ["a", "b"], "auth_time": 1}
    return [k.ec256.token(make_claims(jti=f"jti-{i:06d}-{'x' * 20}", **extra)) for i in range(n)]


@pytest.mark.parametrize(("keep_claims", "budget"), [(False, 700), (True, 2600)])
async def test_a_cached_token_costs_little(
    jwks_server: JwksServer, http_session: aiohttp.ClientSession, keep_claims: bool, budget: int
) -> None:
    """Cached: a digest of the token (not its text), shared strings and sets, claims only when CEL reads them."""
    import gc
    import tracemalloc

    s = make_setup(jwks_server, http_session, keys().ec256)
    verifier = Verifier(s.config.issuers, s.verifier._keys, 10_000, keep_claims=keep_claims)
    tokens = _many_tokens(2000)
    await verifier.verify(tokens[0], s.config.servers["mcp"])  # keys fetched, interned values in place
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for token in tokens[1:]:
        await verifier.verify(token, s.config.servers["mcp"])
    gc.collect()
    per_token = (tracemalloc.get_traced_memory()[0] - before) / (len(tokens) - 1)
    tracemalloc.stop()
    assert len(verifier.cache) == len(tokens)
    assert per_token <= budget, f"{per_token:.0f} B per cached token"


async def test_the_cache_keeps_the_claims_only_when_asked(
    jwks_server: JwksServer, http_session: aiohttp.ClientSession
) -> None:
    s = make_setup(jwks_server, http_session, keys().ec256)
    token = keys().ec256.token(make_claims(groups=["admins"]))
    lean = Verifier(s.config.issuers, s.verifier._keys, 10, keep_claims=False)
    full = Verifier(s.config.issuers, s.verifier._keys, 10, keep_claims=True)
    server = s.config.servers["mcp"]
    slim, rich = await lean.verify(token, server), await full.verify(token, server)
    assert rich.claims["groups"] == ["admins"] and "groups" not in slim.claims
    assert slim.claims["iat"] == rich.claims["iat"]  # what the revocation check reads
    assert dict(slim.claims) == {"iat": rich.claims["iat"]}
    assert (slim.subject, slim.scopes, slim.client_id, slim.token_id, slim.expires_at) == (
        rich.subject,
        rich.scopes,
        rich.client_id,
        rich.token_id,
        rich.expires_at,
    )
    assert (await lean.verify(token, server)) is slim  # a cache hit: the same object
    assert lean.cache.get(token) is not None and len(lean.cache) == 1


def test_a_cache_entry_is_found_by_the_token_and_no_other() -> None:
    cache = TokenCache(4)
    entry = Verified("s", {}, frozenset(), grant=Grant("main", frozenset()))
    cache.put("a.b.c", entry)
    assert cache.get("a.b.c") is entry
    assert cache.get("a.b.d") is None and cache.get("a.b.c ") is None


# ---------------------------------------------------------------- issuer profiles (issue 18 items 1-2)

ENTRA = "https://login.microsoftonline.com/{tenantid}/v2.0"


def _entra(tenant: str) -> str:
    return ENTRA.replace("{tenantid}", tenant)


async def test_auth0_scopes_are_the_scope_and_permissions_claims_merged(
    jwks_server: JwksServer, http_session: aiohttp.ClientSession
) -> None:
    s = make_setup(jwks_server, http_session, keys().rsa, profile="auth0", token_type="at+jwt")
    token = keys().rsa.token(make_claims(scope="openid", permissions=["tools:read"], azp="app-1", client_id=REMOVE))
    caller = await s.verify(token)
    assert (caller.scopes, caller.client_id) == (frozenset({"openid", "tools:read"}), "app-1")
    generic = make_setup(jwks_server, http_session, keys().rsa)
    assert (await generic.verify(token)).scopes == frozenset({"openid"})  # generic reads scope (or scp) alone


async def test_okta_scp_array_and_cid(jwks_server: JwksServer, http_session: aiohttp.ClientSession) -> None:
    s = make_setup(jwks_server, http_session, keys().rsa, profile="okta", token_type="at+jwt")
    token = keys().rsa.token(make_claims(scope=REMOVE, scp=["tools:read", "openid"], cid="0oa1", client_id=REMOVE))
    caller = await s.verify(token)
    assert (caller.scopes, caller.client_id) == (frozenset({"tools:read", "openid"}), "0oa1")


async def test_entra_multi_tenant_issuer_accepts_listed_tenants_whose_tid_matches(
    jwks_server: JwksServer, http_session: aiohttp.ClientSession
) -> None:
    s = make_setup(
        jwks_server, http_session, keys().rsa, issuer=ENTRA, profile="entra", tenants=["t1", "t2"], token_type="jwt"
    )
    head = {"typ": "JWT"}
    ok = keys().rsa.token(make_claims(iss=_entra("t1"), tid="t1", scp="tools:read", uti="u-1", jti=REMOVE), header=head)
    caller = await s.verify(ok)
    assert (caller.issuer, caller.scopes, caller.token_id) == (_entra("t1"), frozenset({"tools:read"}), "u-1")
    crossed = keys().rsa.token(make_claims(iss=_entra("t1"), tid="t2"), header=head)
    assert await s.refuse(crossed) == "token_tenant_mismatch"
    missing = keys().rsa.token(make_claims(iss=_entra("t1")), header=head)
    assert await s.refuse(missing) == "token_tenant_mismatch"
    other = keys().rsa.token(make_claims(iss=_entra("t3"), tid="t3"), header=head)
    assert await s.refuse(other) == "token_issuer_unknown"
    assert await s.refuse(keys().rsa.token(make_claims(iss=_entra("t1"), tid="t1"))) == "token_type_invalid"


async def test_a_server_audience_alias_is_accepted_for_that_server_only(
    jwks_server: JwksServer, http_session: aiohttp.ClientSession
) -> None:
    servers = [server_spec(audiences=["api://mcp"]), server_spec("other", "https://mcp.test/other")]
    s = make_setup(jwks_server, http_session, keys().rsa, servers=servers)
    token = keys().rsa.token(make_claims(aud="api://mcp"))
    assert (await s.verify(token)).subject == "alice"
    assert await s.refuse(token, "other") == "token_audience_mismatch"
