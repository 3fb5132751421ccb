"""RFC 8693 token exchange: the caller's verified access token for one of the downstream API.

Exchanged tokens are cached per issuer, subject, audience/resource and scopes until
``refresh_before`` seconds before they expire: in this process, and in the store (shared by
replicas; encrypted with the first ``secrets`` key when one is configured). Concurrent Checks
needing the same token share one exchange (single flight). A failed exchange denies the call:
503 when the issuer is unreachable or broken, 403 when it refuses; the reason code is
``token_exchange_failed`` and the issuer's error text stays in the log.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp

from authz.config.runtime import Exchange
from authz.config.secrets import SecretError, decrypt_bytes, encrypt
from authz.errors import Forbidden, Refusal, Unavailable
from authz.model import Caller
from authz.oauth.rfc8414 import MetadataError, fetch_issuer_metadata
from authz.observe import telemetry
from authz.store.base import Store, StoreError

log = logging.getLogger("mcp_authz.exchange")

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
REASON = "token_exchange_failed"
LOCAL_CACHE_SIZE = 10_000
_ERROR_CODE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz_0123456789")

Counter = Callable[[bool, bool], None]  # (ok, cached)


def cache_key(exchange: Exchange, caller: Caller) -> str:
    """Store key of an exchanged token: issuer, subject, client and downstream target, hashed."""
    parts = [
        exchange.token_endpoint or exchange.issuer,
        exchange.client_id,
        caller.issuer,
        caller.subject,
        exchange.audience,
        exchange.resource,
        " ".join(sorted(exchange.scopes)),
    ]
    return "tx:" + hashlib.sha256(json.dumps(parts).encode()).hexdigest()


class TokenExchanger:
    """Exchanges callers' tokens and caches the results (see the module docstring)."""

    def __init__(
        self,
        http: Callable[[], aiohttp.ClientSession],
        store: Store | None = None,
        keys: tuple[bytes, ...] = (),
        counter: Counter | None = None,
    ) -> None:
        self._http = http
        self._store = store
        self._key = keys[0] if keys else None
        self._keys = keys
        self._count = counter if counter is not None else telemetry.count_exchange
        self._local: dict[str, tuple[str, float]] = {}  # cache key -> (token, reuse until, epoch seconds)
        self._flights: dict[str, asyncio.Task[tuple[str, float]]] = {}
        self._endpoints: dict[str, str] = {}  # issuer -> token endpoint from its metadata
        self.exchanges = 0  # requests sent to the issuer (successful or not)
        self._warned = False

    def _counted(self, ok: bool, cached: bool) -> None:
        try:
            self._count(ok, cached)
        except Exception:  # telemetry must never fail a Check
            log.debug("exchange counter failed", exc_info=True)

    async def token(self, exchange: Exchange, caller: Caller) -> str:
        """The downstream access token for ``caller``; a Refusal (reason token_exchange_failed) if none."""
        if caller.token is None or caller.subject is None:
            self._counted(False, False)
            raise Forbidden(REASON, f"no bearer token to exchange (identity {caller.mode})")
        key = cache_key(exchange, caller)
        hit = self._local.get(key)
        if hit is not None and hit[1] > time.time():
            self._counted(True, True)
            return hit[0]
        flight = self._flights.get(key)
        if flight is None:
            flight = asyncio.create_task(self._obtain(key, exchange, caller))
            self._flights[key] = flight
            flight.add_done_callback(lambda t: self._landed(key, t))
        token, _ = await asyncio.shield(flight)
        return token

    def _landed(self, key: str, task: asyncio.Task[tuple[str, float]]) -> None:
        if self._flights.get(key) is task:
            del self._flights[key]
        if not task.cancelled():
            task.exception()  # retrieved here, so a flight nobody awaits any more logs no warning

    async def _obtain(self, key: str, exchange: Exchange, caller: Caller) -> tuple[str, float]:
        found = await self._from_store(key)
        if found is not None:
            self._remember(key, found)
            self._counted(True, True)
            return found
        try:
            fresh = await self._exchange(exchange, caller)
        except Refusal:
            self._counted(False, False)
            raise
        self._counted(True, False)
        self._remember(key, fresh)
        await self._to_store(key, fresh)
        return fresh

    def _remember(self, key: str, entry: tuple[str, float]) -> None:
        if entry[1] <= time.time():
            return
        self._local.pop(key, None)  # re-inserted last: the oldest entry goes first when full
        if len(self._local) >= LOCAL_CACHE_SIZE:
            del self._local[next(iter(self._local))]
        self._local[key] = entry

    async def _from_store(self, key: str) -> tuple[str, float] | None:
        if self._store is None:
            return None
        try:
            raw = await self._store.get(key)
        except StoreError as exc:
            log.warning("exchange cache read failed; exchanging", extra={"reason": "store_error", "detail": str(exc)})
            return None
        if raw is None:
            return None
        try:
            text = decrypt_bytes(raw.decode("ascii"), self._keys) if self._key is not None else raw
            entry = json.loads(text)
            token, until = str(entry["token"]), float(entry["until"])
        except (SecretError, UnicodeDecodeError, ValueError, KeyError, TypeError):
            log.warning("exchange cache entry unreadable; exchanging", extra={"reason": "cache_unreadable"})
            return None
        return (token, until) if until > time.time() else None

    async def _to_store(self, key: str, entry: tuple[str, float]) -> None:
        ttl = entry[1] - time.time()
        if self._store is None or ttl <= 0:
            return
        raw = json.dumps({"token": entry[0], "until": entry[1]}).encode()
        if self._key is None and self._store.kind != "memory" and not self._warned:
            self._warned = True
            log.warning(
                "exchanged tokens are cached in the shared store unencrypted: configure secrets.keys",
                extra={"reason": "exchange_cache_plaintext"},
            )
        value = encrypt(raw, self._key).encode("ascii") if self._key is not None else raw
        try:
            await self._store.put(key, value, ttl)
        except StoreError as exc:
            log.warning("exchange cache write failed", extra={"reason": "store_error", "detail": str(exc)})

    async def _endpoint(self, exchange: Exchange) -> str:
        """The configured token endpoint, or the one the issuer's metadata names (fetched once)."""
        if exchange.token_endpoint is not None:
            return exchange.token_endpoint
        issuer = exchange.issuer or ""
        known = self._endpoints.get(issuer)
        if known is not None:
            return known
        try:
            document = await fetch_issuer_metadata(self._http(), issuer, exchange.timeout)
        except MetadataError as exc:
            raise Unavailable(REASON, f"issuer metadata: {exc}") from None
        endpoint = document.get("token_endpoint")
        if not isinstance(endpoint, str) or urlsplit(endpoint).scheme not in ("https", "http"):
            raise Unavailable(REASON, "the issuer's metadata names no http(s) token_endpoint")
        self._endpoints[issuer] = endpoint
        return endpoint

    async def _exchange(self, exchange: Exchange, caller: Caller) -> tuple[str, float]:
        endpoint = await self._endpoint(exchange)
        form = {
            "grant_type": GRANT_TYPE,
            "subject_token": caller.token or "",
            "subject_token_type": ACCESS_TOKEN_TYPE,
            "requested_token_type": ACCESS_TOKEN_TYPE,
        }
        if exchange.audience:
            form["audience"] = exchange.audience
        if exchange.resource:
            form["resource"] = exchange.resource
        if exchange.scopes:
            form["scope"] = " ".join(exchange.scopes)
        # RFC 6749 §2.3.1: client id and secret are form-encoded before Basic authentication.
        auth = aiohttp.BasicAuth(quote(exchange.client_id, safe=""), quote(exchange.client_secret.reveal(), safe=""))
        self.exchanges += 1
        started = time.time()
        try:
            async with self._http().post(
                endpoint,
                data=form,
                auth=auth,
                headers={"Accept": "application/json"},
                timeout=aiohttp.ClientTimeout(total=exchange.timeout),
                allow_redirects=False,
            ) as response:
                status = response.status
                body: Any = await response.json(content_type=None) if response.content_length != 0 else None
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise Unavailable(REASON, f"token endpoint unreachable or unreadable: {type(exc).__name__}") from None
        if status != 200:
            code = body.get("error") if isinstance(body, dict) else None
            shown = code if isinstance(code, str) and len(code) < 64 and _ERROR_CODE_CHARS.issuperset(code) else "?"
            refusal = Forbidden if 400 <= status < 500 else Unavailable
            raise refusal(REASON, f"token endpoint answered {status} error={shown}")
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token or not token.isascii() or not token.isprintable():
            raise Unavailable(REASON, "token endpoint answered without a usable access_token")
        expires_in = body.get("expires_in")
        lifetime = float(expires_in) if isinstance(expires_in, int | float) and expires_in > 0 else 0.0
        return token, started + lifetime - exchange.refresh_before
