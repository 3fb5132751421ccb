"""JWT access tokens (RFC 9068), verified as RFC 8725 asks of a resource server.

Checks run in a straight line, each failure with its own reason code:
size → shape → header (alg allow-list, no `none`/HMAC, typ, crit, key references) →
issuer → key → signature → claim types → exp/nbf/iat → lifetime. The audience is checked
per MCP server on every Check, because one verified token may be presented to several servers.
Verified tokens are cached (bounded) until they expire, or until the key that verified them is
withdrawn from the issuer's JWKS. An unknown ``kid`` is 401 only once a fetch of the issuer's JWKS
that could know it did not have it; while the JWKS cannot be fetched, or no refetch is allowed yet
(``jwks_min_refetch``), it is the dependency's failure, not the token's: 503 (fail closed), which
clients retry, where a 401 would make them discard the token.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt

from authz.config import Issuer, Server
from authz.errors import InvalidToken, Unavailable
from authz.identity.jwks import Key, KeySet
from authz.model import Caller
from authz.observe import telemetry

_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_NUMERIC_DATE_MAX = 2**40  # far beyond any real expiry; bigger values are hostile
_KEY_REFERENCE_HEADERS = ("jku", "x5u", "jwk", "x5c")
_MAX_KID = 256


@dataclass(frozen=True, slots=True)
class Verified:
    issuer: str  # issuer config name
    caller: Caller
    audiences: frozenset[str]
    expires_at: int
    key: Key | None = None  # the key that verified the signature


class TokenCache:
    """Verified tokens by their text, bounded; the oldest entry goes first when full."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[str, Verified] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, token: str) -> Verified | None:
        entry = self._entries.get(token)
        if entry is None:
            self.misses += 1
        else:
            self.hits += 1
        return entry

    def put(self, token: str, entry: Verified) -> None:
        self._entries[token] = entry
        if len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def drop(self, token: str) -> None:
        self._entries.pop(token, None)

    def __len__(self) -> int:
        return len(self._entries)


def _b64(segment: str) -> bytes:
    if not _B64URL.fullmatch(segment) or len(segment) % 4 == 1:
        raise InvalidToken("token_malformed", "invalid base64url")
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise InvalidToken("token_malformed", "invalid base64url") from None


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise InvalidToken("token_duplicate_key", "a JSON object repeats a key")
    return obj


def _json(segment: str, what: str) -> dict[str, Any]:
    try:
        # UTF-8 only (RFC 7515 §4, RFC 7519 §7.2): json.loads(bytes) would also take UTF-16/32.
        value = json.loads(_b64(segment).decode("utf-8"), object_pairs_hook=_object)
    except InvalidToken:
        raise
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise InvalidToken("token_malformed", f"{what} is not JSON") from None
    if not isinstance(value, dict):
        raise InvalidToken("token_malformed", f"{what} is not a JSON object")
    return value


def _numeric_date(claims: Mapping[str, Any], name: str) -> int | None:
    if name not in claims:
        return None
    value = claims[name]  # an explicit null is not "absent": it is not a NumericDate
    if type(value) is not int or not 0 <= value < _NUMERIC_DATE_MAX:
        raise InvalidToken("token_claim_invalid", f"{name} must be an integer NumericDate")
    return value


def _audiences(claims: Mapping[str, Any]) -> frozenset[str]:
    aud = claims.get("aud")
    if isinstance(aud, str):
        return frozenset((aud,))
    if isinstance(aud, list) and all(isinstance(a, str) for a in aud):
        return frozenset(aud)
    if aud is None:
        return frozenset()
    raise InvalidToken("token_claim_invalid", "aud must be a string or a list of strings")


def _scopes(claims: Mapping[str, Any]) -> frozenset[str]:
    scope = claims.get("scope", claims.get("scp"))
    if isinstance(scope, str):
        return frozenset(scope.split())
    if isinstance(scope, list) and all(isinstance(s, str) for s in scope):
        return frozenset(scope)
    if scope is None:
        return frozenset()
    raise InvalidToken("token_claim_invalid", "scope must be a string")


class Verifier:
    """Verifies bearer JWTs for the configured issuers."""

    def __init__(self, issuers: Mapping[str, Issuer], keys: Mapping[str, KeySet], cache_size: int = 10_000) -> None:
        self._by_iss = {i.issuer: i for i in issuers.values()}
        self._keys = keys
        self._max_bytes = max((i.max_token_bytes for i in issuers.values()), default=8000)
        self.cache = TokenCache(cache_size)

    def keyset(self, name: str) -> KeySet | None:
        """A key set by name: an issuer's, or a Cloudflare Access team's (``Config.key_issuers``)."""
        return self._keys.get(name)

    async def verify(self, token: str, server: Server) -> Caller:
        if not token:
            raise InvalidToken("token_empty", "empty token")
        if len(token) > self._max_bytes:
            raise InvalidToken("token_too_large", f"{len(token)} bytes")
        now = int(time.time())
        entry = self.cache.get(token)
        telemetry.count_token_cache(entry is not None)
        if entry is not None and entry.expires_at <= now - self._skew(entry):
            self.cache.drop(token)
            if entry.caller.expires_at is not None:
                raise InvalidToken("token_expired", "expired while cached")
            entry = None  # no exp: the entry only aged out of the cache; verify the token again
        if entry is not None and entry.key is not None and not self._keys[entry.issuer].holds(entry.key):
            self.cache.drop(token)  # the issuer withdrew (or replaced) the key: verify the token again
            entry = None
        if entry is None:
            entry = await self._verify(token, now)
            self.cache.put(token, entry)
        if entry.issuer not in server.issuers:
            raise InvalidToken("token_issuer_untrusted", f"issuer {entry.issuer!r} not trusted for {server.name!r}")
        accepted = self._by_iss[entry.caller.issuer or ""].audiences | {server.resource}
        if not entry.audiences & accepted:
            raise InvalidToken("token_audience_mismatch", f"aud does not contain {server.resource}")
        return entry.caller

    def _skew(self, entry: Verified) -> int:
        issuer = self._by_iss.get(entry.caller.issuer or "")
        return issuer.clock_skew if issuer else 0

    async def _verify(self, token: str, now: int) -> Verified:
        parts = token.split(".")
        if len(parts) == 5:
            raise InvalidToken("token_encrypted", "JWE tokens are not accepted")
        if len(parts) != 3:
            raise InvalidToken("token_segments_invalid", f"{len(parts)} segments, not a compact JWS")
        header = _json(parts[0], "header")
        claims = _json(parts[1], "payload")
        signature = _b64(parts[2])

        iss = claims.get("iss")
        issuer = self._by_iss.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise InvalidToken("token_issuer_unknown", f"iss {iss!r}")
        if len(token) > issuer.max_token_bytes:  # the bound in verify() is the largest of all issuers'
            raise InvalidToken("token_too_large", f"{len(token)} bytes for {issuer.name}")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg.lower() == "none":
            raise InvalidToken("token_alg_none", "unsigned token")
        if alg.upper().startswith("HS"):
            raise InvalidToken("token_alg_hmac", f"symmetric algorithm {alg}")
        if alg not in issuer.algorithms:
            raise InvalidToken("token_alg_not_allowed", f"alg {alg} not in {issuer.name} allow-list")
        if "crit" in header:
            raise InvalidToken("token_crit_unsupported", "crit header parameters are not understood")
        if any(h in header for h in _KEY_REFERENCE_HEADERS):
            raise InvalidToken("token_key_reference", "jku/x5u/jwk/x5c headers are never followed")
        if str(header.get("cty", "")).upper() == "JWT":
            raise InvalidToken("token_nested", "nested JWTs are not accepted")
        if issuer.token_type is not None:
            typ = header.get("typ")
            typ = typ.lower().removeprefix("application/") if isinstance(typ, str) else None
            if typ != issuer.token_type:
                raise InvalidToken("token_type_invalid", f"typ {header.get('typ')!r}, need {issuer.token_type}")
        kid = header.get("kid")
        if kid is not None and (not isinstance(kid, str) or len(kid) > _MAX_KID):
            raise InvalidToken("token_malformed", "kid must be a short string")

        keyset = self._keys[issuer.name]
        key = await keyset.lookup(kid)
        if key is None:
            miss = keyset.miss(kid)
            if miss == "absent":
                raise InvalidToken("token_kid_unknown", f"no key {kid!r} at {issuer.name}")
            why = keyset.last_error if miss == "failing" else "refetch throttled (jwks_min_refetch)"
            raise Unavailable("jwks_unavailable", f"no key {kid!r} at {issuer.name}: {why}")
        if not key.fits(alg):
            raise InvalidToken("token_alg_key_mismatch", f"key {kid!r} cannot verify {alg}")
        signing_input = f"{parts[0]}.{parts[1]}".encode("ascii")
        try:
            valid = jwt.get_algorithm_by_name(alg).verify(signing_input, key.key, signature)
        except (ValueError, TypeError, jwt.InvalidKeyError):
            valid = False
        if not valid:
            raise InvalidToken("token_signature_invalid", f"signature does not verify with {kid!r}")
        return self._claims(token, issuer, claims, now, key)

    def _claims(self, token: str, issuer: Issuer, claims: dict[str, Any], now: int, key: Key) -> Verified:
        for name in issuer.required_claims:
            if claims.get(name) is None:
                raise InvalidToken("token_claim_missing", f"no {name} claim")
        if issuer.require_jti and not isinstance(claims.get("jti"), str):
            raise InvalidToken("token_claim_missing", "no jti claim")
        exp = _numeric_date(claims, "exp")
        nbf = _numeric_date(claims, "nbf")
        iat = _numeric_date(claims, "iat")
        skew = issuer.clock_skew
        if exp is not None and exp <= now - skew:
            raise InvalidToken("token_expired", f"exp {exp} <= now {now}")
        if nbf is not None and nbf > now + skew:
            raise InvalidToken("token_not_yet_valid", f"nbf {nbf} > now {now}")
        if iat is not None and iat > now + skew:
            raise InvalidToken("token_issued_in_future", f"iat {iat} > now {now}")
        if exp is not None and exp - now > issuer.max_lifetime + skew:
            raise InvalidToken("token_lifetime_too_long", f"exp {exp} is beyond the allowed lifetime")
        sub = claims.get("sub")
        if sub is not None and not isinstance(sub, str):
            raise InvalidToken("token_claim_invalid", "sub must be a string")
        client_id = claims.get("client_id", claims.get("azp"))
        jti = claims.get("jti")
        caller = Caller(
            subject=sub or (client_id if isinstance(client_id, str) else None) or "",
            claims=claims,
            scopes=_scopes(claims),
            client_id=client_id if isinstance(client_id, str) else None,
            issuer=issuer.issuer,
            mode="jwt",
            token_id=jti if isinstance(jti, str) else None,
            expires_at=exp,
        )
        return Verified(issuer.name, caller, _audiences(claims), exp if exp is not None else now + 300, key)
