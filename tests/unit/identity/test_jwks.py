"""An issuer's key set (authz/identity/jwks.py): parsing, refetch on unknown kid, bad fetches, rotation."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import JwksServer, issuer_spec, jwks, keys, make_config

from authz.config.runtime import Issuer
from authz.identity import devkey
from authz.identity import jwks as jwks_module
from authz.identity.jwks import MAX_KEYS, JwksError, Key, KeySet, parse_jwks


class Clock:
    """Stands in for time.monotonic inside jwks.py."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(jwks_module, "time", SimpleNamespace(monotonic=c.monotonic))
    return c


def make_issuer(server: JwksServer, **fields: Any) -> Issuer:
    config = make_config([issuer_spec(jwks_uri=server.url("/jwks.json"), **fields)])
    return config.issuers["main"]


def keyset(server: JwksServer, session: aiohttp.ClientSession, **fields: Any) -> KeySet:
    return KeySet(make_issuer(server, **fields), lambda: session)


# ---------------------------------------------------------------- parse_jwks


def test_parse_every_key_type() -> None:
    k = keys()
    parsed = parse_jwks(jwks(k.rsa, k.ec256, k.ec384, k.ed25519))
    assert {kid: (key.kty, key.crv, key.alg) for kid, key in parsed.items()} == {
        "rsa-1": ("RSA", None, "RS256"),
        "ec-256": ("EC", "P-256", "ES256"),
        "ec-384": ("EC", "P-384", "ES384"),
        "ed-1": ("OKP", "Ed25519", "EdDSA"),
    }
    assert parsed["rsa-1"].key.public_numbers() == k.rsa.private.public_key().public_numbers()


def test_parse_skips_unusable_keys() -> None:
    k = keys()
    good = k.ec256.public_jwk()
    doc = {
        "keys": [
            "not an object",
            {**k.rsa.public_jwk(), "use": "enc"},  # encryption key
            {**k.ec384.public_jwk(), "d": "c2VjcmV0"},  # a private key is never used
            {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
            {"kty": "oct", "kid": "sym", "k": "c2VjcmV0"},  # symmetric: loads, but fits no algorithm
            {**k.ed25519.public_jwk(), "kid": 7},  # kid must be a string
            good,
            {**k.rsa.public_jwk(), "kid": "ec-256"},  # duplicate kid: the first one stays
        ]
    }
    parsed = parse_jwks(doc)
    assert parsed["ec-256"].kty == "EC"
    assert "rsa-1" not in parsed and "ec-384" not in parsed and "broken" not in parsed
    assert parsed["sym"].kty == "oct"
    assert not any(parsed["sym"].fits(alg) for alg in (*jwks_module._KTY_FOR_ALG, "HS256"))


@pytest.mark.parametrize("doc", [None, [], {"keys": "x"}, {"keys": []}, {"nokeys": []}, {"keys": [{"kty": "EC"}]}])
def test_parse_refuses_documents_without_usable_keys(doc: Any) -> None:
    with pytest.raises(JwksError):
        parse_jwks(doc)


def test_parse_reads_at_most_max_keys() -> None:
    jwk = keys().ec256.public_jwk()
    doc = {"keys": [{**jwk, "kid": f"k{i}"} for i in range(MAX_KEYS + 10)]}
    assert len(parse_jwks(doc)) == MAX_KEYS


def test_key_fits_only_its_algorithm_family() -> None:
    k = keys()
    parsed = parse_jwks(jwks(k.ec256, k.ec384, k.ed25519))
    rsa_any = parse_jwks(jwks(k.rsa, with_alg=False))["rsa-1"]
    rsa_pinned = parse_jwks(jwks(k.rsa))["rsa-1"]
    assert [a for a in jwks_module._KTY_FOR_ALG if rsa_any.fits(a)] == [
        "RS256",
        "RS384",
        "RS512",
        "PS256",
        "PS384",
        "PS512",
    ]
    assert [a for a in jwks_module._KTY_FOR_ALG if rsa_pinned.fits(a)] == ["RS256"]
    assert [a for a in jwks_module._KTY_FOR_ALG if parsed["ec-256"].fits(a)] == ["ES256"]
    assert [a for a in jwks_module._KTY_FOR_ALG if parsed["ec-384"].fits(a)] == ["ES384"]
    assert [a for a in jwks_module._KTY_FOR_ALG if parsed["ed-1"].fits(a)] == ["EdDSA"]
    for key in (*parsed.values(), rsa_any):
        assert not key.fits("HS256") and not key.fits("none")


# ---------------------------------------------------------------- KeySet over HTTP


async def test_refresh_loads_keys(jwks_server: JwksServer, http_session: aiohttp.ClientSession) -> None:
    jwks_server.docs["/jwks.json"] = jwks(keys().ec256)
    ks = keyset(jwks_server, http_session)
    assert not ks.ready and ks.get("ec-256") is None
    await ks.refresh()
    assert ks.ready and ks.fetches == 1 and ks.failures == 0
    key = ks.get("ec-256")
    assert isinstance(key, Key) and key.kid == "ec-256"
    assert ks.get(None) is key  # a token without kid may use the only key there is
    assert jwks_server.requests == ["/jwks.json"]


async def test_kid_less_token_needs_a_single_key(jwks_server: JwksServer, http_session: aiohttp.ClientSession) -> None:
    jwks_server.docs["/jwks.json"] = jwks(keys().ec256, keys().ec384)
    ks = keyset(jwks_server, http_session)
    await ks.refresh()
    assert ks.get(None) is None


async def test_unknown_kid_refetches_at_most_once_per_interval(
    jwks_server: JwksServer, http_session: aiohttp.ClientSession, clock: Clock
) -> None:
    k = keys()
    jwks_server.docs["/jwks.json"] = jwks(k.ec256)
    ks = keyset(jwks_server, http_session, jwks_min_refetch=60)
    assert (await ks.lookup("ec-256")) is not None  # first lookup fetches
    assert jwks_server.fetches("/jwks.json") == 1
    assert (await ks.lookup("ec-256")) is not None  # known kid: no fetch
    for _ in range(5):
        assert (await ks.lookup("nope")) is None
    assert jwks_server.fetches("/jwks.json") == 1  # the first fetch was < 60 s ago
    clock.now += 59.9
    assert (await ks.lookup("nope")) is None
    assert jwks_server.fetches("/jwks.json") == 1
    clock.now += 0.1
    jwks_server.docs["/jwks.json"] = jwks(k.ec256, k.ec384)
    assert (await ks.lookup("ec-384")) is not None  # a key published since is found by the refetch
    assert (await ks.lookup("nope")) is None
    assert jwks_server.fetches("/jwks.json") == 2


async def test_min_refetch_zero_refetches_every_unknown_kid(
    jwks_server: JwksServer, http_session: aiohttp.ClientSession
) -> None:
    jwks_server.docs["/jwks.json"] = jwks(keys().ec256)
    ks = keyset(jwks_server, http_session, jwks_min_refetch=0)
    for _ in range(3):
        assert (await ks.lookup("nope")) is None
    assert jwks_server.fetches("/jwks.json") == 3


@pytest.mark.parametrize(
    "garbage",
    [
        b"not json",
        b"[]",
        b"[" * 100_000,  # deep nesting: a RecursionError, not a crash of the refresher
        b'{"keys": [' + b"1" + b"0" * 100_000 + b"]}",
        {"keys": []},
        {"keys": "x"},
        {"keys": [{"kty": "RSA", "n": "!!", "e": "AQAB"}]},
        None,
    ],
)
async def test_garbage_keeps_the_last_good_keys(
    jwks_server: JwksServer, http_session: aiohttp.ClientSession, garbage: Any, caplog: pytest.LogCaptureFixture
) -> None:
    jwks_server.docs["/jwks.json"] = jwks(keys().ec256)
    ks = keyset(jwks_server, http_session, jwks_min_refetch=0)
    await ks.refresh()
    if garbage is None:
        del jwks_server.docs["/jwks.json"]  # 404
    else:
        jwks_server.docs["/jwks.json"] = garbage
    await ks.refresh()
    assert ks.failures == 1 and ks.last_error
    assert ks.get("ec-256") is not None and ks.ready
    assert "keeping 1 known keys" in caplog.text
    jwks_server.docs["/jwks.json"] = jwks(keys().ec384)
    await ks.refresh()
    assert ks.last_error == "" and ks.get("ec-256") is None and ks.get("ec-384") is not None


async def test_unreachable_jwks_is_a_failure_not_an_exception(http_session: aiohttp.ClientSession) -> None:
    issuer = make_config([issuer_spec(jwks_uri="http://127.0.0.1:9/jwks.json", jwks_timeout=1)]).issuers["main"]
    ks = KeySet(issuer, lambda: http_session)
    assert (await ks.lookup("x")) is None
    assert ks.failures == 1 and not ks.ready


async def test_rotation(jwks_server: JwksServer, http_session: aiohttp.ClientSession, clock: Clock) -> None:
    k = keys()
    jwks_server.docs["/jwks.json"] = jwks(k.rsa)
    ks = keyset(jwks_server, http_session, jwks_min_refetch=10)
    await ks.refresh()
    jwks_server.docs["/jwks.json"] = jwks(k.rsa, k.rsa_new)  # new key published beside the old
    clock.now += 10
    assert (await ks.lookup("rsa-2")) is not None
    jwks_server.docs["/jwks.json"] = jwks(k.rsa_new)  # old key withdrawn
    assert (await ks.lookup("rsa-1")) is not None  # still known until the next fetch
    clock.now += 10
    await ks.refresh()
    assert (await ks.lookup("rsa-1")) is None
    assert ks.miss("rsa-1") == "absent"  # the refresh withdrew it
    # the scheduled refresh does not count against jwks_min_refetch: the lookup asked once more
    assert jwks_server.fetches("/jwks.json") == 4


async def test_concurrent_unknown_kids_share_one_fetch(
    jwks_server: JwksServer, http_session: aiohttp.ClientSession
) -> None:
    k = keys()
    jwks_server.docs["/jwks.json"] = jwks(k.rsa)
    ks = keyset(jwks_server, http_session, jwks_min_refetch=60)
    await ks.refresh()
    await asyncio.sleep(0)
    jwks_server.docs["/jwks.json"] = jwks(k.rsa, k.rsa_new)
    jwks_server.delay = 0.05
    found = await asyncio.gather(*(ks.lookup("rsa-2") for _ in range(10)))
    assert all(key is not None and key.kid == "rsa-2" for key in found)
    assert jwks_server.fetches("/jwks.json") == 2


async def test_jwks_uri_from_issuer_metadata(jwks_server: JwksServer, http_session: aiohttp.ClientSession) -> None:
    issuer_url = jwks_server.url("/tenant")
    jwks_server.docs["/.well-known/oauth-authorization-server/tenant"] = {
        "issuer": issuer_url,
        "jwks_uri": jwks_server.url("/keys"),
    }
    jwks_server.docs["/keys"] = jwks(keys().ed25519)
    issuer = make_config([issuer_spec(issuer=issuer_url)]).issuers["main"]
    ks = KeySet(issuer, lambda: http_session)
    assert (await ks.lookup("ed-1")) is not None
    assert ks.jwks_uri == jwks_server.url("/keys")
    assert jwks_server.requests == ["/.well-known/oauth-authorization-server/tenant", "/keys"]


async def test_metadata_for_another_issuer_is_refused(
    jwks_server: JwksServer, http_session: aiohttp.ClientSession
) -> None:
    issuer_url = jwks_server.url("/tenant")
    for path in ("/.well-known/oauth-authorization-server/tenant", "/.well-known/openid-configuration/tenant"):
        jwks_server.docs[path] = {"issuer": "https://evil.test", "jwks_uri": jwks_server.url("/keys")}
    jwks_server.docs["/keys"] = jwks(keys().ed25519)
    ks = KeySet(make_config([issuer_spec(issuer=issuer_url)]).issuers["main"], lambda: http_session)
    assert (await ks.lookup("ed-1")) is None
    assert "/keys" not in jwks_server.requests
    assert ks.jwks_uri is None and "does not match" in ks.last_error


async def test_local_key_file(tmp_path: Any) -> None:
    path = devkey.ensure_key(tmp_path / "k.pem")
    issuer = make_config([issuer_spec(local_key_file=str(path))]).issuers["main"]

    def no_session() -> aiohttp.ClientSession:
        raise AssertionError("a local key set never fetches")

    ks = KeySet(issuer, no_session)
    kid = devkey.public_jwks(path)["keys"][0]["kid"]
    assert ks.ready and ks.get(kid) is not None and ks.get(None) is not None
    await ks.refresh()
    assert (await ks.lookup("unknown")) is None and ks.fetches == 0


async def test_large_jwks_is_read_whole(jwks_server: JwksServer, http_session: aiohttp.ClientSession) -> None:
    doc = jwks(keys().ec256)
    doc["keys"] += [{"kty": "oct", "kid": f"pad{i}", "k": "x" * 1000, "use": "enc"} for i in range(300)]
    jwks_server.docs["/jwks.json"] = doc  # ~300 KB, under the 512 KB bound
    ks = keyset(jwks_server, http_session)
    await ks.refresh()
    assert ks.last_error == ""
    assert ks.get("ec-256") is not None


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=6),
        lambda c: (
            st.lists(c, max_size=3)
            | st.dictionaries(
                st.sampled_from(["kty", "kid", "crv", "x", "y", "n", "e", "use", "alg", "d", "k"])
                | st.text(max_size=3),
                c,
                max_size=5,
            )
        ),
        max_leaves=10,
    )
)
def test_parse_jwks_takes_any_json(entry: Any) -> None:
    for doc in (entry, {"keys": [entry]}, {"keys": [entry, keys().ec256.public_jwk()]}):
        try:
            parsed = parse_jwks(doc)
        except JwksError:
            continue
        assert all(isinstance(kid, str) and isinstance(key, Key) for kid, key in parsed.items())


async def test_a_refresh_keeps_unchanged_keys_and_drops_withdrawn_ones(
    jwks_server: JwksServer, http_session: aiohttp.ClientSession
) -> None:
    k = keys()
    jwks_server.docs["/jwks.json"] = jwks(k.rsa, k.ec256)
    ks = keyset(jwks_server, http_session, jwks_min_refetch=0)
    await ks.refresh()
    rsa, ec = ks.get("rsa-1"), ks.get("ec-256")
    assert rsa is not None and ec is not None and len(ks) == 2
    await ks.refresh()  # the same document again: the very same keys are held
    assert ks.holds(rsa) and ks.holds(ec)
    jwks_server.docs["/jwks.json"] = jwks(k.rsa_twin, k.ed25519)  # rsa-1 replaced by another key, ec-256 withdrawn
    await ks.refresh()
    assert not ks.holds(rsa) and not ks.holds(ec)
    twin = ks.get("rsa-1")
    assert twin is not None and twin.key.public_numbers() == k.rsa_twin.private.public_key().public_numbers()
    assert ks.get("ec-256") is None and len(ks) == 2


async def test_a_failed_refresh_is_failing_until_a_good_one(
    jwks_server: JwksServer, http_session: aiohttp.ClientSession
) -> None:
    jwks_server.docs["/jwks.json"] = jwks(keys().ec256)
    ks = keyset(jwks_server, http_session, jwks_min_refetch=0)
    await ks.refresh()
    held = ks.get("ec-256")
    assert held is not None and not ks.failing
    jwks_server.docs["/jwks.json"] = b"<html>not a key set</html>"
    await ks.refresh()
    assert ks.failing and ks.holds(held)  # garbage changes nothing
    jwks_server.docs["/jwks.json"] = jwks(keys().ec256)
    await ks.refresh()
    assert not ks.failing and ks.holds(held)


# ---------------------------------------------------------------- issue 21 item 5: unknown kid during rotation


async def test_a_new_kid_right_after_a_background_refresh_is_fetched(
    jwks_server: JwksServer, http_session: aiohttp.ClientSession, clock: Clock
) -> None:
    """The scheduled refresh does not count against jwks_min_refetch: it could not know a key published since."""
    k = keys()
    jwks_server.docs["/jwks.json"] = jwks(k.rsa)
    ks = keyset(jwks_server, http_session, jwks_min_refetch=60)
    await ks.refresh()  # the background refresh (or the startup fetch)
    jwks_server.docs["/jwks.json"] = jwks(k.rsa, k.rsa_new)  # the issuer rotates a second later
    clock.now += 1
    found = await ks.lookup("rsa-2")
    assert found is not None and found.kid == "rsa-2"
    assert jwks_server.fetches("/jwks.json") == 2


async def test_a_throttled_unknown_kid_is_not_called_absent(
    jwks_server: JwksServer, http_session: aiohttp.ClientSession, clock: Clock
) -> None:
    k = keys()
    jwks_server.docs["/jwks.json"] = jwks(k.rsa)
    ks = keyset(jwks_server, http_session, jwks_min_refetch=60)
    await ks.refresh()
    assert await ks.lookup("forged") is None  # fetched: the issuer does not publish it
    assert ks.miss("forged") == "absent"
    jwks_server.docs["/jwks.json"] = jwks(k.rsa, k.rsa_new)
    clock.now += 1
    assert await ks.lookup("rsa-2") is None  # within 60 s of the last kid-triggered fetch: no fetch ...
    assert ks.miss("rsa-2") == "throttled"  # ... and no verdict: the caller answers 503, not 401
    assert jwks_server.fetches("/jwks.json") == 2
    assert ks.miss("forged") == "absent"  # a fetch after its first sighting did not have it
    clock.now += 59
    assert await ks.lookup("rsa-2") is not None  # the interval has passed: the next lookup fetches
    assert jwks_server.fetches("/jwks.json") == 3


async def test_a_kid_a_fetch_withdrew_is_absent_even_when_throttled(
    jwks_server: JwksServer, http_session: aiohttp.ClientSession, clock: Clock
) -> None:
    k = keys()
    jwks_server.docs["/jwks.json"] = jwks(k.rsa, k.ec256)
    ks = keyset(jwks_server, http_session, jwks_min_refetch=60)
    await ks.refresh()
    jwks_server.docs["/jwks.json"] = jwks(k.ec256)
    await ks.refresh()
    assert await ks.lookup("rsa-1") is None
    assert ks.miss("rsa-1") == "absent"


async def test_a_failed_fetch_is_failing(jwks_server: JwksServer, http_session: aiohttp.ClientSession) -> None:
    jwks_server.docs["/jwks.json"] = b"garbage"
    ks = keyset(jwks_server, http_session, jwks_min_refetch=60)
    assert await ks.lookup("x") is None
    assert ks.miss("x") == "failing"


async def test_many_concurrent_new_kids_share_one_fetch_after_a_refresh(
    jwks_server: JwksServer, http_session: aiohttp.ClientSession
) -> None:
    k = keys()
    jwks_server.docs["/jwks.json"] = jwks(k.rsa)
    ks = keyset(jwks_server, http_session, jwks_min_refetch=60)
    await ks.refresh()
    jwks_server.docs["/jwks.json"] = jwks(k.rsa, k.rsa_new)
    jwks_server.delay = 0.05
    found = await asyncio.gather(*(ks.lookup("rsa-2") for _ in range(20)))
    assert all(key is not None for key in found)
    assert jwks_server.fetches("/jwks.json") == 2  # single flight


def test_forgotten_misses_are_bounded() -> None:
    assert jwks_module.MAX_MISSES <= 4096
