"""An issuer's signing keys: fetched asynchronously, cached, refreshed, never lost to a bad fetch.

PyJWT parses the keys; fetching is ours (aiohttp), so no blocking I/O runs under the event loop.
A fetch that fails or returns garbage leaves the last good keys in use. A good fetch replaces the set
(a key withdrawn by the issuer is gone); keys it still holds unchanged keep their identity, so
``holds`` tells a token cache whether the key that verified an entry is still published.

Unknown ``kid`` (key rotation, or a forged token): the lookup joins a fetch under way, else starts one,
unless an unknown kid already started one in the last ``jwks_min_refetch`` seconds (the scheduled
refresh does not count: it cannot know a key published since). One fetch at a time per issuer.
``miss`` then says what a failed lookup means: ``absent`` (a good fetch that started after the kid was
first asked for, or that withdrew it, does not hold it: the token is bad, 401), ``failing`` (the last
fetch failed) or ``throttled`` (nothing fetched since the kid was first asked for): both 503, which
a client retries, where it would throw its token away on a 401.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
import jwt

from authz.config.runtime import Issuer
from authz.errors import InvalidToken, Unavailable
from authz.identity import devkey
from authz.oauth.rfc8414 import MetadataError, fetch_issuer_metadata, fetch_json
from authz.observe import telemetry

log = logging.getLogger("mcp_authz.jwks")
MAX_KEYS = 64
MAX_MISSES = 1024  # unknown kids remembered (for ``miss``); the oldest is forgotten first
_NO_KID = "\x00"  # stands for a token without kid in the misses table (a kid is never this)
Miss = Literal["absent", "throttled", "failing"]
_KTY_FOR_ALG = {
    "RS256": ("RSA", None),
    "RS384": ("RSA", None),
    "RS512": ("RSA", None),
    "PS256": ("RSA", None),
    "PS384": ("RSA", None),
    "PS512": ("RSA", None),
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "EdDSA": ("OKP", None),
}


@dataclass(frozen=True, slots=True)
class Key:
    kid: str
    kty: str
    crv: str | None
    alg: str | None  # the JWK's own `alg`, if it names one
    key: Any  # a cryptography public key
    jwk: str = field(default="", compare=False, repr=False)  # the JWK as published (canonical JSON)

    def fits(self, alg: str) -> bool:
        """May this key verify a signature made with ``alg``? (RFC 8725 §3.1: no algorithm confusion)."""
        kty, crv = _KTY_FOR_ALG.get(alg, (None, None))
        if kty != self.kty or (crv is not None and crv != self.crv):
            return False
        return self.alg is None or self.alg == alg


class JwksError(Exception):
    pass


def parse_jwks(doc: Any) -> dict[str, Key]:
    """Usable signature keys of a JWKS document by ``kid``; keys PyJWT cannot load are skipped."""
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise JwksError("not a JWKS document (no `keys` array)")
    keys: dict[str, Key] = {}
    for entry in doc["keys"][:MAX_KEYS]:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig" or "d" in entry:
            continue  # encryption keys and private keys are never used
        kid = entry.get("kid", "")
        if not isinstance(kid, str) or kid in keys:
            continue
        try:
            loaded = jwt.PyJWK(entry)
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError, KeyError):
            continue
        alg = entry.get("alg") if isinstance(entry.get("alg"), str) else None
        published = json.dumps(entry, sort_keys=True, separators=(",", ":"))
        keys[kid] = Key(kid, str(entry.get("kty")), entry.get("crv"), alg, loaded.key, published)
    if not keys:
        raise JwksError("JWKS has no usable signature key")
    return keys


def _same_or(old: Key | None, new: Key) -> Key:
    """The key already held when the issuer still publishes it unchanged, else the new one."""
    return old if old is not None and old.jwk == new.jwk and old.jwk else new


class KeySet:
    """The keys of one issuer."""

    def __init__(self, issuer: Issuer, session: Callable[[], aiohttp.ClientSession]) -> None:
        self.issuer = issuer
        self._session = session
        self._keys: dict[str, Key] = {}
        self._last_kid_fetch = float("-inf")  # monotonic time an unknown kid last started a fetch
        self._started = 0  # fetches started so far; a fetch is known by its number
        self._finished = 0  # the number of the last fetch that ended (good or not)
        self._good = 0  # the number of the last good fetch
        self._misses: OrderedDict[str, int] = OrderedDict()  # unknown kid → fetches started at its first miss
        self._inflight: asyncio.Future[None] | None = None
        self.jwks_uri = issuer.jwks_uri
        self.fetches = 0
        self.failures = 0
        self.last_error = ""
        if issuer.local_key_file:
            self._keys = parse_jwks(devkey.public_jwks(issuer.local_key_file))

    @property
    def ready(self) -> bool:
        return bool(self._keys)

    @property
    def failing(self) -> bool:
        """Did the last fetch fail (the keys in use may be out of date)?"""
        return bool(self.last_error)

    def __len__(self) -> int:
        return len(self._keys)

    def holds(self, key: Key) -> bool:
        """Is ``key`` still in the set (not withdrawn or replaced by a later fetch)?"""
        return self._keys.get(key.kid) is key

    def get(self, kid: str | None) -> Key | None:
        """A key by kid; a token without kid may use the only key there is."""
        if kid is None:
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)

    async def lookup(self, kid: str | None) -> Key | None:
        """The key for ``kid``, fetching the set again if it is unknown and that is allowed (see above);
        None when there is none (ask ``miss`` why)."""
        key = self.get(kid)
        if key is not None or self.issuer.local_key_file:
            return key
        arrived = self._started
        self._note_miss(_NO_KID if kid is None else kid, arrived)
        while self._finished <= arrived:  # until a fetch started after this lookup began has ended
            if self._inflight is None:
                if time.monotonic() - self._last_kid_fetch < self.issuer.jwks_min_refetch:
                    break  # throttled
                self._last_kid_fetch = time.monotonic()
            await self.refresh()  # starts a fetch, or joins the one under way
            key = self.get(kid)
            if key is not None:
                self._misses.pop(_NO_KID if kid is None else kid, None)
                return key
        return None

    async def key_for(self, kid: str | None, *, unknown: str, where: str) -> Key:
        """The one key-lookup ladder of every verifier: the key for ``kid``, else the refusal that says why.

        Absent after a fetch that could know it: 401 ``unknown`` (the token is bad). The key set failing, or a
        refetch throttled (``jwks_min_refetch``): 503 ``jwks_unavailable`` (retryable: the client keeps its token).
        """
        key = await self.lookup(kid)
        if key is not None:
            return key
        miss = self.miss(kid)
        if miss == "absent":
            raise InvalidToken(unknown, f"no key {kid!r} at {where}")
        why = self.last_error if miss == "failing" else "refetch throttled (jwks_min_refetch)"
        raise Unavailable("jwks_unavailable", f"no key {kid!r} at {where}: {why}")

    def miss(self, kid: str | None) -> Miss:
        """Why the last ``lookup(kid)`` found nothing: ``absent``, ``failing`` or ``throttled``."""
        if self.last_error:
            return "failing"
        first = self._misses.get(_NO_KID if kid is None else kid)
        return "absent" if first is not None and self._good > first else "throttled"

    def _note_miss(self, kid: str, started: int) -> None:
        if kid in self._misses:
            return
        self._misses[kid] = started
        if len(self._misses) > MAX_MISSES:
            self._misses.popitem(last=False)

    async def refresh(self) -> None:
        """Fetch the JWKS now (one fetch at a time; concurrent callers share it)."""
        if self.issuer.local_key_file:
            return
        if self._inflight is not None:
            await asyncio.shield(self._inflight)
            return
        loop = asyncio.get_running_loop()
        self._inflight = loop.create_future()
        self._started += 1
        number = self._started
        try:
            await self._fetch(number)
        finally:
            self._finished = number
            self._inflight.set_result(None)
            self._inflight = None

    async def _fetch(self, number: int) -> None:
        self.fetches += 1
        timeout = self.issuer.jwks_timeout
        try:
            session = self._session()
            if self.jwks_uri is None:
                meta = await fetch_issuer_metadata(session, self.issuer.issuer, timeout)
                uri = meta.get("jwks_uri")
                if not isinstance(uri, str):
                    raise JwksError("issuer metadata has no jwks_uri")
                self.jwks_uri = uri
            fresh = parse_jwks(await fetch_json(session, self.jwks_uri, timeout))
            old = self._keys
            self._keys = {kid: _same_or(old.get(kid), key) for kid, key in fresh.items()}
            for kid in old.keys() - fresh.keys():  # withdrawn: absent as of this fetch
                self._misses.pop(kid, None)
                self._note_miss(kid, number - 1)
            self._good = number
            self.last_error = ""
            telemetry.count_jwks_fetch(self.issuer.name, True)
        except (MetadataError, JwksError, RecursionError) as exc:  # RecursionError: a deeply nested document
            self.failures += 1
            self.last_error = str(exc)
            telemetry.count_jwks_fetch(self.issuer.name, False)
            log.warning(
                "jwks fetch failed; keeping %d known keys",
                len(self._keys),
                extra={"issuer": self.issuer.name, "error": str(exc)},
            )

    async def run_refresher(self) -> None:
        """Background task: refresh every ``jwks_refresh`` seconds, sooner (5 s) while failing."""
        while True:
            await self.refresh()
            await asyncio.sleep(self.issuer.jwks_refresh if self.ready and not self.last_error else 5)
