"""Client ID Metadata Documents: fetch, check and cache the document a URL client id names.

SSRF rules: HTTPS only, no redirects, every resolved address public (the connection uses the checked
addresses, so DNS rebinding cannot slip past), a size and a time bound; the document's ``client_id`` must
equal its URL and the requested redirect URI must be one of its ``redirect_uris``. Documents are cached by
``Cache-Control: max-age`` (clamped), never under ``no-store``. ``allow_private`` and ``allow_http`` exist for
tests only.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver


class CimdError(Exception):
    """A client id document that cannot be used; the message says why (safe to show the client)."""


@dataclass(frozen=True)
class CimdPolicy:
    """Bounds on fetching client id documents."""

    max_bytes: int = 5120
    timeout: float = 5.0
    max_cache_seconds: int = 3600
    allow_private: bool = False  # test only: loopback and private targets
    allow_http: bool = False  # test only: plain http URLs


def is_public(address: str) -> bool:
    """Whether an IP address is a public unicast address."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def check_url(url: str, policy: CimdPolicy) -> None:
    """Refuse a client id URL the spec does not allow (scheme, path, fragment, credentials, literal IPs)."""
    parts = urlsplit(url)
    if parts.scheme != "https" and not (policy.allow_http and parts.scheme == "http"):
        raise CimdError("client_id URL must use https")
    if not parts.hostname or parts.username or parts.password or parts.fragment:
        raise CimdError("client_id URL must have a host and no credentials or fragment")
    if parts.path in ("", "/"):
        raise CimdError("client_id URL must have a path")
    try:
        literal = ipaddress.ip_address(parts.hostname)
    except ValueError:
        return
    if not policy.allow_private and not is_public(str(literal)):
        raise CimdError("client_id URL names a private or loopback address")


class _PublicResolver(AbstractResolver):
    """Resolves like the default resolver and refuses any non-public address."""

    def __init__(self, allow_private: bool) -> None:
        self._inner = DefaultResolver()
        self._allow_private = allow_private

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if not self._allow_private and any(not is_public(r["host"]) for r in results):
            raise CimdError("client_id URL resolves to a private or loopback address")
        return results

    async def close(self) -> None:
        await self._inner.close()


def parse_document(url: str, body: bytes) -> dict[str, Any]:
    """The document as a dict, its client_id equal to the URL and its redirect_uris a list of strings."""
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise CimdError("client id document is not JSON") from exc
    if not isinstance(doc, dict):
        raise CimdError("client id document is not a JSON object")
    if doc.get("client_id") != url:
        raise CimdError("client id document's client_id does not equal its URL")
    uris = doc.get("redirect_uris")
    if not isinstance(uris, list) or not uris or not all(isinstance(u, str) for u in uris):
        raise CimdError("client id document has no redirect_uris")
    if doc.get("token_endpoint_auth_method", "none") not in ("none", "private_key_jwt"):
        raise CimdError("client id document names a shared-secret token_endpoint_auth_method")
    return doc


def check_redirect(doc: dict[str, Any], redirect_uri: str) -> None:
    """Refuse a redirect URI the document does not list (exact match)."""
    if redirect_uri not in doc["redirect_uris"]:
        raise CimdError("redirect_uri is not in the client id document")


def cache_seconds(cache_control: str | None, policy: CimdPolicy) -> int:
    """How long to keep a document by its Cache-Control header: max-age clamped, 0 for no-store/no-cache."""
    value = (cache_control or "").lower()
    if "no-store" in value or "no-cache" in value:
        return 0
    match = re.search(r"max-age=(\d+)", value)
    return min(int(match.group(1)), policy.max_cache_seconds) if match else 0


@dataclass
class CimdFetcher:
    """Fetches client id documents under a policy and caches them in this process."""

    policy: CimdPolicy = field(default_factory=CimdPolicy)
    _cache: dict[str, tuple[float, dict[str, Any]]] = field(default_factory=dict)

    async def client(self, url: str, redirect_uri: str | None = None) -> dict[str, Any]:
        """The checked document for a client id URL; with redirect_uri, that URI must be listed."""
        check_url(url, self.policy)
        cached = self._cache.get(url)
        if cached and cached[0] > time.monotonic():
            doc = cached[1]
        else:
            doc = await self._fetch(url)
        if redirect_uri is not None:
            check_redirect(doc, redirect_uri)
        return doc

    async def _fetch(self, url: str) -> dict[str, Any]:
        connector = aiohttp.TCPConnector(resolver=_PublicResolver(self.policy.allow_private), use_dns_cache=False)
        timeout = aiohttp.ClientTimeout(total=self.policy.timeout)
        try:
            async with (
                aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
                session.get(url, allow_redirects=False, headers={"Accept": "application/json"}) as resp,
            ):
                if resp.status != 200:
                    raise CimdError(f"client id document answered HTTP {resp.status}")
                if (resp.content_length or 0) > self.policy.max_bytes:
                    raise CimdError("client id document is too large")
                body = b""
                async for chunk in resp.content.iter_chunked(4096):
                    body += chunk
                    if len(body) > self.policy.max_bytes:
                        raise CimdError("client id document is too large")
                ttl = cache_seconds(resp.headers.get("Cache-Control"), self.policy)
        except CimdError:
            raise
        except TimeoutError as exc:
            raise CimdError("client id document fetch timed out") from exc
        except aiohttp.ClientError as exc:
            if isinstance(exc.__cause__, CimdError):
                raise exc.__cause__ from None
            raise CimdError(f"client id document fetch failed: {type(exc).__name__}") from exc
        doc = parse_document(url, body)
        if ttl > 0:
            self._cache[url] = (time.monotonic() + ttl, doc)
        return doc
