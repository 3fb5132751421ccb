"""Cloudflare Access: the ``Cf-Access-Jwt-Assertion`` JWT that Access adds to every request it lets through.

The assertion proves the request came through the team's Access application: RS256, signed by one
of the team's keys (``<team_domain>/cdn-cgi/access/certs``, fetched and cached by a ``KeySet``),
``iss`` = the team domain, ``aud`` holding the application's AUD tag, within exp/nbf/iat (with
leeway). The user is its ``email`` claim. Reasons for a refusal go to the log, never to the client.

Access sends the same assertion on every request of a session, so verified assertions are kept
(bounded, per team and application) until they expire or the key that verified them is withdrawn.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, NamedTuple

import jwt

from authz.config.runtime import CloudflareAccess
from authz.errors import InvalidToken, Unavailable
from authz.identity.jwks import Key, KeySet

ALGORITHM = "RS256"  # the only algorithm Access signs with
_MAX_KID = 256
_REASONS: tuple[tuple[type[jwt.InvalidTokenError], str], ...] = (
    (jwt.ExpiredSignatureError, "proxy_assertion_expired"),
    (jwt.ImmatureSignatureError, "proxy_assertion_not_yet_valid"),
    (jwt.InvalidAudienceError, "proxy_assertion_audience"),
    (jwt.InvalidIssuerError, "proxy_assertion_issuer"),
    (jwt.MissingRequiredClaimError, "proxy_assertion_claim_missing"),
    (jwt.InvalidSignatureError, "proxy_assertion_signature"),
)


CACHE_SIZE = 10_000


class _Verified(NamedTuple):
    claims: dict[str, Any]
    key: Key
    keys: KeySet
    exp: int


# (team, audiences, assertion) → verified claims; shared by every Checker, bounded, oldest out first.
_cache: OrderedDict[tuple[str, tuple[str, ...], str], _Verified] = OrderedDict()


def _cached(token: str, access: CloudflareAccess, keys: KeySet) -> dict[str, Any] | None:
    entry = _cache.get((access.team_domain, access.audiences, token))
    if entry is None:
        return None
    if entry.keys is not keys or not keys.holds(entry.key) or entry.exp <= time.time() - access.clock_skew:
        del _cache[(access.team_domain, access.audiences, token)]  # withdrawn key or expired: verify again
        return None
    return entry.claims


def _remember(token: str, access: CloudflareAccess, verified: _Verified) -> None:
    _cache[(access.team_domain, access.audiences, token)] = verified
    if len(_cache) > CACHE_SIZE:
        _cache.popitem(last=False)


def _reason(exc: jwt.InvalidTokenError) -> str:
    return next((reason for kind, reason in _REASONS if isinstance(exc, kind)), "proxy_assertion_invalid")


async def verify(token: str, access: CloudflareAccess, keys: KeySet | None) -> dict[str, Any]:
    """The assertion's claims; InvalidToken if it is not a valid assertion of this team and application,
    Unavailable if its key is unknown while the team's keys cannot be fetched."""
    if len(token) > access.keys.max_token_bytes:
        raise InvalidToken("proxy_assertion_invalid", f"{len(token)} bytes")
    if keys is not None and (known := _cached(token, access, keys)) is not None:
        return known
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError:
        raise InvalidToken("proxy_assertion_invalid", "not a compact JWS") from None
    if header.get("alg") != ALGORITHM:
        raise InvalidToken("proxy_assertion_invalid", f"alg {header.get('alg')!r}, need {ALGORITHM}")
    kid = header.get("kid")
    if kid is not None and (not isinstance(kid, str) or len(kid) > _MAX_KID):
        raise InvalidToken("proxy_assertion_invalid", "kid must be a short string")
    if keys is None:
        raise Unavailable("jwks_unavailable", f"no key set for {access.keys.jwks_uri}")
    key = await keys.key_for(kid, unknown="proxy_assertion_kid_unknown", where=str(access.keys.jwks_uri))
    if not key.fits(ALGORITHM):
        raise InvalidToken("proxy_assertion_invalid", f"key {kid!r} cannot verify {ALGORITHM}")
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key.key,
            algorithms=[ALGORITHM],
            audience=list(access.audiences),
            issuer=access.team_domain,
            leeway=access.clock_skew,
            options={"require": list(access.keys.required_claims)},
        )
    except jwt.InvalidTokenError as exc:
        raise InvalidToken(_reason(exc), f"{type(exc).__name__}: {exc}") from None
    _remember(token, access, _Verified(claims, key, keys, int(claims["exp"])))
    return claims


def groups(claims: Mapping[str, Any], path: tuple[str, ...] | None) -> list[str]:
    """The groups at ``path`` (a list of strings, or one string), else none."""
    value: Any = claims
    for part in path or ():
        value = value.get(part) if isinstance(value, Mapping) else None
    if path is None or value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [g for g in value if isinstance(g, str)]
    return []
