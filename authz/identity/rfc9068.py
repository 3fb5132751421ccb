"""JWT access tokens (RFC 9068), verified as RFC 8725 asks of a resource server.

Checks run in a straight line, each failure with its own reason code:
size → shape → header (alg allow-list, no `none`/HMAC, typ, crit, key references) →
issuer → key → signature → claim types → exp/nbf/iat → lifetime. The audience is checked
per MCP server on every Check, because one verified token may be presented to several servers.
Verified tokens are cached (bounded) until they expire, or until the key that verified them is
withdrawn from the issuer's JWKS. An entry holds only what a Check needs (~0.4 KB, see
bench/token_cache_memory.py): it is found by a 128-bit SHA-256 digest of the token, not by the token's
text; issuers, subjects, client ids, scope and audience sets, times and grants are shared between
entries; the claims are kept whole only where policy reads them (CEL ``jwt.*``, ``keep_claims``),
else only ``iat``.

An unknown ``kid`` is 401 only once a fetch of the issuer's JWKS that could know it did not have it;
while the JWKS cannot be fetched, or no refetch is allowed yet (``jwks_min_refetch``), it is the
dependency's failure, not the token's: 503 (fail closed), which clients retry, where a 401 would make
them discard the token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import time
from collections import OrderedDict
from collections.abc import Hashable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import jwt

from authz.config.runtime import Issuer, Server
from authz.errors import InvalidToken
from authz.identity.jwks import Key, KeySet
from authz.model import Caller
from authz.observe import telemetry

_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_NUMERIC_DATE_MAX = 2**40  # far beyond any real expiry; bigger values are hostile
_KEY_REFERENCE_HEADERS = ("jku", "x5u", "jwk", "x5c")
_MAX_KID = 256
_MAX_SHARED = 65_536  # distinct values (subjects, scope sets...) shared between cache entries
_H = TypeVar("_H", bound=Hashable)


@dataclass(frozen=True, slots=True)
class Grant:
    """What a verified token shares with many others: its issuer, audiences and key (one object for all)."""

    issuer: str  # issuer config name
    audiences: frozenset[str]
    key: Key | None = None  # the key that verified the signature
    recheck_at: int | None = None  # a token without exp: verify it again from then on (such grants are not shared)


@dataclass(frozen=True, slots=True, eq=False)
class Verified(Caller):
    """A cache entry: the caller itself (one object per token) with the grant it shares."""

    grant: Grant = field(kw_only=True, compare=False, repr=False)

    @property
    def caller(self) -> Caller:
        return self

    @property
    def expires_at_or_recheck(self) -> int:
        """Until when the entry may be used: the token's ``exp``, or the re-verification time."""
        return self.expires_at if self.expires_at is not None else self.grant.recheck_at or 0


def _digest(token: str) -> bytes:
    """The cache key of a token: 16 bytes instead of its ~1 KB of text (a collision is out of reach)."""
    return hashlib.sha256(token.encode()).digest()[:16]  # SHA-256 (OpenSSL) is faster here than BLAKE2b


class TokenCache:
    """Verified tokens by their digest, bounded; the oldest entry goes first when full (O(1))."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[bytes, Verified] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, token: str) -> Verified | None:
        entry = self._entries.get(_digest(token))
        if entry is None:
            self.misses += 1
        else:
            self.hits += 1
        return entry

    def put(self, token: str, entry: Verified) -> None:
        self._entries[_digest(token)] = entry
        if len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def drop(self, token: str) -> None:
        self._entries.pop(_digest(token), None)

    def __len__(self) -> int:
        return len(self._entries)


class _Shared:
    """One copy of each equal value (strings, sets, times) across cache entries. Bounded: when full it starts
    afresh (values already shared stay shared; later ones share among themselves)."""

    __slots__ = ("_values",)

    def __init__(self) -> None:
        self._values: dict[Any, Any] = {}

    def __call__(self, value: _H) -> _H:
        found = self._values.get(value)
        if found is not None:
            return found  # type: ignore[no-any-return]
        self._add(value, value)
        return value

    def issued_at(self, iat: int) -> IssuedAt:
        """The claims of a lean caller: one object per second of issue (tokens issued together share it)."""
        found = self._values.get(("iat", iat))
        if found is None:
            found = IssuedAt(self(iat))
            self._add(("iat", iat), found)
        return found

    def grant(self, issuer: str, audiences: frozenset[str], key: Key) -> Grant:
        """The grant of tokens with an ``exp`` (keys are not hashable: known by identity, which the
        table keeps alive)."""
        found = self._values.get(("grant", issuer, audiences, id(key)))
        if found is None or found.key is not key:
            found = Grant(issuer, self(audiences), key)
            self._add(("grant", issuer, audiences, id(key)), found)
        return found

    def _add(self, key: Any, value: Any) -> None:
        if len(self._values) >= _MAX_SHARED:
            self._values.clear()
        self._values[key] = value


class IssuedAt(Mapping[str, int]):
    """The claims a cached caller keeps when no policy reads claims: only ``iat`` (the revocation check's)."""

    __slots__ = ("_iat",)

    def __init__(self, iat: int) -> None:
        self._iat = iat

    def __getitem__(self, name: str) -> int:
        if name != "iat":
            raise KeyError(name)
        return self._iat

    def __iter__(self) -> Iterator[str]:
        return iter(("iat",))

    def __len__(self) -> int:
        return 1


_NO_CLAIMS: Mapping[str, Any] = {}


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


def _scopes(claims: Mapping[str, Any], names: tuple[str, ...]) -> frozenset[str]:
    """The scopes of every claim in ``names`` (the issuer's ``scope_claims``) that is present, merged."""
    if names == ("scope", "scp"):  # the generic profile: the first present, as before profiles
        return _scope_value(claims.get("scope", claims.get("scp")))
    found: frozenset[str] = frozenset()
    for name in names:
        found |= _scope_value(claims.get(name))
    return found


def _scope_value(scope: Any) -> frozenset[str]:
    if isinstance(scope, str):
        return frozenset(scope.split())
    if isinstance(scope, list) and all(isinstance(s, str) for s in scope):
        return frozenset(scope)
    if scope is None:
        return frozenset()
    raise InvalidToken("token_claim_invalid", "scope must be a string")


class Verifier:
    """Verifies bearer JWTs for the configured issuers."""

    def __init__(
        self,
        issuers: Mapping[str, Issuer],
        keys: Mapping[str, KeySet],
        cache_size: int = 10_000,
        *,
        keep_claims: bool = True,
    ) -> None:
        """``keep_claims``: callers carry every claim (a policy reads ``jwt.*``); else only ``iat``."""
        # every accepted `iss` (a multi-tenant issuer has one per tenant) → its issuer
        self._by_iss = {iss: i for i in issuers.values() for iss in (i.accepted_issuers or {i.issuer: None})}
        self._keys = keys
        self._max_bytes = max((i.max_token_bytes for i in issuers.values()), default=8000)
        self.cache = TokenCache(cache_size)
        self.keep_claims = keep_claims
        self._shared = _Shared()

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
        if entry is not None and entry.expires_at_or_recheck <= now - self._skew(entry):
            self.cache.drop(token)
            if entry.expires_at is not None:
                raise InvalidToken("token_expired", "expired while cached")
            entry = None  # no exp: the entry only aged out of the cache; verify the token again
        grant = entry.grant if entry is not None else None
        if grant is not None and grant.key is not None and not self._keys[grant.issuer].holds(grant.key):
            self.cache.drop(token)  # the issuer withdrew (or replaced) the key: verify the token again
            entry = None
        if entry is None:
            entry = await self._verify(token, now)
            self.cache.put(token, entry)
        grant = entry.grant
        if grant.issuer not in server.issuers:
            raise InvalidToken("token_issuer_untrusted", f"issuer {grant.issuer!r} not trusted for {server.name!r}")
        accepted = self._by_iss[entry.issuer or ""].audiences | server.audiences | {server.resource}
        if not grant.audiences & accepted:
            raise InvalidToken("token_audience_mismatch", f"aud does not contain {server.resource}")
        return entry

    def _skew(self, entry: Verified) -> int:
        issuer = self._by_iss.get(entry.issuer or "")
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
        key = await keyset.key_for(kid, unknown="token_kid_unknown", where=issuer.name)
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
        if issuer.require_jti and not isinstance(claims.get(issuer.token_id_claim), str):
            raise InvalidToken("token_claim_missing", f"no {issuer.token_id_claim} claim")
        if issuer.tenant_claim is not None:  # a multi-tenant issuer: the token's tenant is its iss's
            tenant = issuer.accepted_issuers.get(claims["iss"])
            if claims.get(issuer.tenant_claim) != tenant:
                raise InvalidToken("token_tenant_mismatch", f"{issuer.tenant_claim} is not the tenant of iss")
        exp = _numeric_date(claims, "exp")
        exp = self._shared(exp) if exp is not None else None  # tokens issued in the same second share it
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
        client_id = next((claims[n] for n in issuer.client_id_claims if claims.get(n) is not None), None)
        client_id = self._shared(client_id) if isinstance(client_id, str) else None
        jti = claims.get(issuer.token_id_claim)
        if self.keep_claims:
            kept: Mapping[str, Any] = claims
        else:
            kept = self._shared.issued_at(iat) if iat is not None else _NO_CLAIMS
        audiences = _audiences(claims)
        grant = self._shared.grant(issuer.name, audiences, key) if exp is not None else None
        return Verified(
            subject=self._shared(sub or client_id or ""),
            claims=kept,
            scopes=self._shared(_scopes(claims, issuer.scope_claims)),
            client_id=client_id,
            issuer=claims["iss"],
            mode="jwt",
            token_id=jti if isinstance(jti, str) else None,
            expires_at=exp,
            grant=grant or Grant(issuer.name, audiences, key, now + 300),
        )
