"""Hostile bearer tokens (RFC 8725 and friends): every one is refused as InvalidToken, each kind with
its own stable reason code, and no key reference in a token is ever followed.

Every hostile token that can carry a valid signature does (made with a key the issuer's JWKS really
holds), so the refusal is proven to come from the check named, not from a bad signature. The table
in tests/security/README.md is generated from KINDS (``test_readme_table_is_current``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from authz.config.runtime import Config, Server
from authz.errors import InvalidToken, Refusal
from authz.identity.rfc9068 import Verifier
from authz.identity.sources import identify
from tests.unit.support import (
    ISSUER,
    OTHER_ISSUER,
    OTHER_RESOURCE,
    REMOVE,
    RESOURCE,
    JwksServer,
    SigningKey,
    b64url,
    build_verifier,
    http_request,
    issuer_spec,
    jwks,
    keys,
    make_claims,
    make_config,
    segment,
    serve_jwks,
    sign,
    unsigned,
)

README = Path(__file__).with_name("README.md")
ATTACKER = SigningKey("evil", "ES256", ec.generate_private_key(ec.SECP256R1()))


@dataclass(frozen=True)
class Ctx:
    base: str  # the loopback server: also hosts the attacker's documents, which must never be fetched

    def evil(self, path: str) -> str:
        return f"{self.base}/evil{path}"


def rsa() -> SigningKey:
    return keys().rsa


def ec256() -> SigningKey:
    return keys().ec256


def header(**fields: Any) -> dict[str, Any]:
    h: dict[str, Any] = {"alg": "ES256", "typ": "at+jwt", "kid": "ec-256"}
    for k, v in fields.items():
        if v is REMOVE:
            h.pop(k, None)
        else:
            h[k] = v
    return h


def valid(claims: dict[str, Any] | None = None, **head: Any) -> str:
    """Signed by the issuer's real ES256 key, with header fields overridden."""
    return sign(header(**head), claims or make_claims(), ec256().private, "ES256")


# ---------------------------------------------------------------- the hostile inputs, by kind


def alg_none(ctx: Ctx) -> list[str]:
    tokens = []
    for alg in ("none", "None", "NONE", "nOnE"):
        tokens.append(unsigned(header(alg=alg), make_claims()))
        tokens.append(unsigned(header(alg=alg, kid=REMOVE), make_claims(), b"sig"))
    # no alg at all, or not a string: as unsigned as `none`
    tokens += [valid(alg=REMOVE), valid(alg=["ES256"]), valid(alg=None), unsigned(header(alg=REMOVE), make_claims())]
    return tokens


def _public_key_material() -> list[tuple[str, bytes]]:
    k = keys()
    return [
        (
            "rsa-1",
            k.rsa.private.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
        ),
        (
            "rsa-1",
            k.rsa.private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1),
        ),
        ("rsa-1", json.dumps(k.rsa.public_jwk()).encode()),
        (
            "ec-256",
            k.ec256.private.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
        ),
        ("ec-256", json.dumps(k.ec256.public_jwk()).encode()),
    ]


def alg_hmac(ctx: Ctx) -> list[str]:
    """HS* keyed with the issuer's public key (PEM and JWK bytes): the classic algorithm confusion."""
    tokens = []
    for alg, digest in (("HS256", hashlib.sha256), ("HS384", hashlib.sha384), ("HS512", hashlib.sha512)):
        for kid, secret in _public_key_material():
            signing_input = f"{segment(header(alg=alg, kid=kid))}.{segment(make_claims())}"
            mac = hmac.new(secret, signing_input.encode(), digest).digest()
            tokens.append(f"{signing_input}.{b64url(mac)}")
    return tokens


def alg_not_allowed(ctx: Ctx) -> list[str]:
    """Algorithms outside the issuer's allow-list, validly signed by a key in its JWKS."""
    narrow = make_claims(iss=OTHER_ISSUER)  # the `narrow` issuer allows ES256 only; its RSA key names no alg
    k = keys()
    return [
        sign(header(alg="RS512", kid="rsa-1"), narrow, k.rsa.private, "RS512"),
        sign(header(alg="RS256", kid="rsa-1"), narrow, k.rsa.private, "RS256"),
        sign(header(alg="PS512", kid="rsa-1"), narrow, k.rsa.private, "PS512"),
        sign(header(alg="ES384", kid="ec-384"), make_claims(), k.ec384.private, "ES384"),  # main: not allowed
        sign(header(alg="RS512", kid="rsa-1"), make_claims(), k.rsa.private, "RS512"),
        valid(alg="ES256 "),
        valid(alg="es256"),
        valid(alg="ES256K"),
    ]


HOSTILE_KIDS = ("../../etc/passwd", "' OR 1=1--", "/dev/null", "ec-256/../ec-256", "%2e%2e%2fjwks", "ec-256\u0000", "*")


def kid_injection(ctx: Ctx) -> list[str]:
    return [valid(kid=kid) for kid in HOSTILE_KIDS]


def key_reference(ctx: Ctx) -> list[str]:
    """jku / x5u / jwk / x5c: keys offered by the token itself (signed by the attacker's key)."""
    forged = make_claims()
    evil_jwk = ATTACKER.public_jwk()
    heads = [
        {"jku": ctx.evil("/jwks.json")},
        {"x5u": ctx.evil("/cert.pem")},
        {"jwk": evil_jwk},
        {"x5c": ["MIIBfake"]},
        {"jku": ctx.evil("/jwks.json"), "kid": "ec-256"},
        {"jwk": evil_jwk, "kid": "ec-256"},
    ]
    tokens = [sign(header(**{"kid": "evil", **h}), forged, ATTACKER.private, "ES256") for h in heads]
    # the same references on a token the issuer really signed are refused too
    tokens += [valid(jku=ctx.evil("/jwks.json")), valid(x5u=ctx.evil("/cert.pem"))]
    return tokens


def crit(ctx: Ctx) -> list[str]:
    return [valid(crit=["exp"]), valid(crit=["b64"], b64=False), valid(crit=[]), valid(crit="exp")]


def jwe(ctx: Ctx) -> list[str]:
    tokens = []
    for head in ({"alg": "RSA-OAEP", "enc": "A256GCM"}, {"alg": "dir", "enc": "A128CBC-HS256"}, header()):
        tokens.append(".".join([segment(head), b64url(b"k" * 32), b64url(b"iv"), segment(make_claims()), b64url(b"t")]))
    return tokens


def nested(ctx: Ctx) -> list[str]:
    return [valid(cty="JWT"), valid(cty="jwt"), valid(cty="Jwt")]


def duplicate_keys(ctx: Ctx) -> list[str]:
    claims = json.dumps(make_claims())[1:-1]
    k = ec256().private
    good_head = '"alg":"ES256","typ":"at+jwt","kid":"ec-256"'
    return [
        sign('{"alg":"ES256","alg":"none","typ":"at+jwt","kid":"ec-256"}', "{" + claims + "}", k, "ES256"),
        sign("{" + good_head + ',"kid":"rsa-1"}', "{" + claims + "}", k, "ES256"),
        sign("{" + good_head + "}", "{" + claims + f',"aud":"{OTHER_RESOURCE}"' + "}", k, "ES256"),
        sign("{" + good_head + "}", "{" + claims + ',"sub":"admin"}', k, "ES256"),
        sign("{" + good_head + "}", "{" + claims + ',"scope":"admin"}', k, "ES256"),
        sign("{" + good_head + "}", "{" + claims + f',"exp":{int(time.time()) + 10**6}' + "}", k, "ES256"),
        sign("{" + good_head + "}", '{"nested":{"a":1,"a":2},' + claims + "}", k, "ES256"),
    ]


def wrong_typ(ctx: Ctx) -> list[str]:
    return [valid(typ=t) for t in ("JWT", "jwt", "at+jwt2", "application/jwt", "", " at+jwt", 1)] + [valid(typ=REMOVE)]


def aud_without_resource(ctx: Ctx) -> list[str]:
    auds: list[Any] = [
        [OTHER_RESOURCE],
        ["https://mcp.test"],
        ["https://mcp.test/mcp/"],
        ["https://mcp.test/mcp?x=1"],
        ["https://MCP.test/mcp"],
        [],
        OTHER_RESOURCE,
        "",
    ]
    return [valid(make_claims(aud=aud)) for aud in auds]


def exp_malformed(ctx: Ctx) -> list[str]:
    later = int(time.time()) + 600
    values: list[Any] = [str(later), "now+600", later + 0.5, float(later), 1e30, 2**63, 10**20, True, -1, [later]]
    return [valid(make_claims(exp=v)) for v in values]


def nbf_future(ctx: Ctx) -> list[str]:
    now = int(time.time())
    return [valid(make_claims(nbf=now + d)) for d in (45, 600, 3600, 86400 * 365)]


def expired(ctx: Ctx) -> list[str]:
    now = int(time.time())
    return [valid(make_claims(exp=e)) for e in (now - 31, now - 3600, 0, 1)]


def _padded(target: int) -> str:
    pad = max(0, (target - len(valid())) * 3 // 4)
    token = valid(make_claims(pad="x" * pad))
    while len(token) < target:
        pad += 1
        token = valid(make_claims(pad="x" * pad))
    return token


def too_large(ctx: Ctx) -> list[str]:
    return [_padded(8001), _padded(8 * 1024), _padded(1024 * 1024), "a" * (1024 * 1024)]


def bad_base64url(ctx: Ctx) -> list[str]:
    h, p, s = valid().split(".")
    return [
        f"{h}=.{p}.{s}",
        f"{h}.{p}.{s}=",
        f"+{h[1:]}.{p}.{s}",
        f"{h[:-1]}+.{p}.{s}",
        f"{h}.{p[:-1]}/.{s}",
        f"{h}.{p}.{s[:-1]}!",
        f"{h} .{p}.{s}",
        f"{h}.{p}é.{s}",
        f"{h}.{p}.{s}{'x' * ((1 - len(s)) % 4 or 4)}",  # length ≡ 1 (mod 4) cannot be base64url
        f"{segment('not json')}.{p}.{s}",
        f"{h}.{segment('[1, 2]')}.{s}",
        ".".join([h, segment(bytes([0xFF, 0xFE])), s]),
        f"{segment('[' * 5000)}.{p}.{s}",
        sign(
            json.dumps(header()).encode("utf-16"), make_claims(), ec256().private, "ES256"
        ),  # JOSE headers are UTF-8 (RFC 7515 §4)
        sign(header(), json.dumps(make_claims()).encode("utf-32"), ec256().private, "ES256"),
    ]


def bad_segments(ctx: Ctx) -> list[str]:
    h, p, s = valid().split(".")
    return [f"{h}.{p}", f"{h}.{p}.{s}.{s}", f"{h}.{p}.{s}.{s}.{s}.{s}", f"{h}{p}{s}", ".", "...", "a.b.c.d.e.f.g"]


def empty(ctx: Ctx) -> list[str]:
    return [""]


def other_key_same_kid(ctx: Ctx) -> list[str]:
    k = keys()
    twin_ec = ec.generate_private_key(ec.SECP256R1())
    return [
        sign(header(alg="RS256", kid="rsa-1"), make_claims(), k.rsa_twin.private, "RS256"),
        sign(header(), make_claims(), twin_ec, "ES256"),
        sign(header(), make_claims(), ATTACKER.private, "ES256"),
        sign(header(alg="EdDSA", kid="ed-1"), make_claims(), ed25519.Ed25519PrivateKey.generate(), "EdDSA"),
        # the issuer's own signature, moved onto other claims
        f"{'.'.join(valid(make_claims(scope='admin')).split('.')[:2])}.{valid().split('.')[2]}",
    ]


@dataclass(frozen=True)
class Kind:
    title: str
    code: str
    build: Callable[[Ctx], list[str]]


KINDS: tuple[Kind, ...] = (
    Kind(
        "`alg: none` in any casing (none, None, NONE, nOnE), with or without a signature; alg absent or not a string",
        "token_alg_none",
        alg_none,
    ),
    Kind("HS256/384/512 keyed with the issuer's public key (PEM, PKCS#1 PEM, JWK bytes)", "token_alg_hmac", alg_hmac),
    Kind(
        "alg outside the issuer's allow-list, validly signed by a JWKS key (e.g. RS512 when only ES256)",
        "token_alg_not_allowed",
        alg_not_allowed,
    ),
    Kind(
        "kid with path / SQL / NUL characters (`../../etc/passwd`, `' OR 1=1--`, ...)",
        "token_kid_unknown",
        kid_injection,
    ),
    Kind("jku / x5u / embedded jwk / x5c headers (never followed)", "token_key_reference", key_reference),
    Kind("crit header", "token_crit_unsupported", crit),
    Kind("JWE (5 segments)", "token_encrypted", jwe),
    Kind("nested JWT (cty: JWT)", "token_nested", nested),
    Kind("duplicate keys in header or payload", "token_duplicate_key", duplicate_keys),
    Kind("typ other than at+jwt when at+jwt is required", "token_type_invalid", wrong_typ),
    Kind("aud (string or list) without this server's resource", "token_audience_mismatch", aud_without_resource),
    Kind("exp as string / float / huge / boolean / negative / list", "token_claim_invalid", exp_malformed),
    Kind("nbf in the future (beyond clock skew)", "token_not_yet_valid", nbf_future),
    Kind("expired (beyond clock skew)", "token_expired", expired),
    Kind("over the size limit (8001 B, 8 KB, 1 MB)", "token_too_large", too_large),
    Kind("invalid base64url, not JSON, not an object, or not UTF-8 in a segment", "token_malformed", bad_base64url),
    Kind("wrong number of segments (2, 4, 6, 7, ...)", "token_segments_invalid", bad_segments),
    Kind("empty string", "token_empty", empty),
    Kind("signature by another key under the issuer's kid", "token_signature_invalid", other_key_same_kid),
)


# ---------------------------------------------------------------- the verifier under attack


@dataclass
class Target:
    verifier: Verifier
    config: Config
    server: Server
    jwks: JwksServer
    ctx: Ctx

    async def refusal(self, token: str, *, retryable: bool = False) -> str:
        """The reason code for ``token``, checked both directly and through the Authorization header.

        ``retryable``: a 503 ``jwks_unavailable`` is a refusal too (an unknown kid while refetching is throttled).
        """
        expected: type[Refusal] = Refusal if retryable else InvalidToken
        with pytest.raises(expected) as direct:
            await self.verifier.verify(token, self.server)
        with pytest.raises(expected) as via_header:
            await identify(http_request(rpc_body(), token=token), self.server, self.verifier)
        assert direct.value.status == via_header.value.status
        assert (direct.value.status, direct.value.reason) in ((401, direct.value.reason), (503, "jwks_unavailable"))
        assert direct.value.reason == via_header.value.reason
        return direct.value.reason


def rpc_body() -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": 1, "method": "ping"}


@pytest.fixture
async def target() -> AsyncIterator[Target]:
    k = keys()
    async with serve_jwks() as server, aiohttp.ClientSession() as session:
        server.docs["/main.json"] = jwks(k.rsa, k.ec256, k.ed25519)
        server.docs["/narrow.json"] = {"keys": [k.rsa.public_jwk(with_alg=False), k.ec256.public_jwk()]}
        server.docs["/evil/jwks.json"] = jwks(ATTACKER)
        common = {"token_type": "at+jwt", "jwks_min_refetch": 3600}
        config = make_config(
            [
                issuer_spec(jwks_uri=server.url("/main.json"), algorithms=["RS256", "ES256", "EdDSA"], **common),
                issuer_spec(
                    "narrow", OTHER_ISSUER, jwks_uri=server.url("/narrow.json"), algorithms=["ES256"], **common
                ),
            ]
        )
        verifier, keysets = build_verifier(config, session)
        for ks in keysets.values():
            await ks.refresh()
        assert server.requests == ["/main.json", "/narrow.json"]
        yield Target(verifier, config, config.servers["mcp"], server, Ctx(server.base))


async def test_the_target_accepts_genuine_tokens(target: Target) -> None:
    k = keys()
    genuine = [
        valid(),
        k.rsa.token(),
        k.ed25519.token(),
        sign(header(), make_claims(iss=OTHER_ISSUER), k.ec256.private, "ES256"),
        valid(make_claims(aud=[OTHER_RESOURCE, RESOURCE])),
    ]
    for token in genuine:
        caller = await target.verifier.verify(token, target.server)
        assert caller.subject == "alice" and caller.issuer in (ISSUER, OTHER_ISSUER)


def test_reason_codes_are_distinct() -> None:
    codes = [kind.code for kind in KINDS]
    assert len(set(codes)) == len(codes)


@pytest.mark.parametrize("kind", KINDS, ids=[k.code for k in KINDS])
async def test_hostile_tokens_are_refused(target: Target, kind: Kind) -> None:
    tokens = kind.build(target.ctx)
    assert tokens and len(set(tokens)) == len(tokens)
    let_through = []
    unknown_kid = kind.code == "token_kid_unknown"
    for i, token in enumerate(tokens):
        try:
            reason = await target.refusal(token, retryable=unknown_kid)
        except pytest.fail.Exception:
            let_through.append(i)
            continue
        # an unknown kid within jwks_min_refetch of the fetch another one caused: 503, retryable (issue 21 item 5)
        allowed = {kind.code, "jwks_unavailable"} if unknown_kid else {kind.code}
        assert reason in allowed, f"{kind.code} #{i}: refused as {reason}"
    assert let_through == [], f"{kind.code}: tokens {let_through} were accepted"
    # only the two JWKS fetches at start-up, plus for unknown kids a single one (jwks_min_refetch: 3600)
    fetched = target.jwks.requests[2:]
    assert target.jwks.requests[:2] == ["/main.json", "/narrow.json"]
    assert fetched == (["/main.json"] if unknown_kid else [])
    if kind.code != "token_audience_mismatch":  # a genuine token for another server may be cached, never used here
        assert len(target.verifier.cache) == 0


# ---------------------------------------------------------------- the README table


def table() -> str:
    ctx = Ctx("http://127.0.0.1:1")
    rows = [
        "| kind of hostile input | reason code | tried | let through |",
        "|---|---|---|---|",
    ]
    total = 0
    for kind in KINDS:
        n = len(kind.build(ctx))
        total += n
        rows.append(f"| {kind.title} | `{kind.code}` | {n} | 0 |")
    rows.append(f"| **total** | | **{total}** | **0** |")
    return "\n".join(rows)


def test_readme_table_is_current() -> None:
    text = README.read_text(encoding="utf-8")
    start = text.index("<!-- hostile-tokens:start -->\n") + len("<!-- hostile-tokens:start -->\n")
    end = text.index("<!-- hostile-tokens:end -->")
    assert text[start:end].strip() == table(), "regenerate: python -m tests.security.test_hostile_tokens"


if __name__ == "__main__":
    print(table())
