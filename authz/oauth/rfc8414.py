"""Authorization-server metadata: RFC 8414 first, then OpenID Connect discovery.

Shared by JWKS discovery (to find ``jwks_uri``) and the discovery service (to mirror the document).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

import aiohttp

MAX_DOCUMENT_BYTES = 512 * 1024


class MetadataError(Exception):
    """The issuer's metadata could not be fetched or is not acceptable."""


def metadata_urls(issuer: str) -> list[str]:
    """Where to look, in order: RFC 8414 §3.1 path insertion, OIDC path insertion, OIDC appended."""
    parts = urlsplit(issuer)
    base = f"{parts.scheme}://{parts.netloc}"
    path = parts.path.rstrip("/")
    urls = [
        f"{base}/.well-known/oauth-authorization-server{path}",
        f"{base}/.well-known/openid-configuration{path}",
    ]
    if path:
        urls.append(f"{base}{path}/.well-known/openid-configuration")
    return urls


async def fetch_json(session: aiohttp.ClientSession, url: str, timeout: float) -> dict[str, Any]:
    """GET a JSON object, bounded in time and size. Raises MetadataError on anything else."""
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout), allow_redirects=False) as resp:
            if resp.status != 200:
                raise MetadataError(f"{url}: HTTP {resp.status}")
            chunks: list[bytes] = []
            size = 0
            async for chunk in resp.content.iter_chunked(64 * 1024):
                size += len(chunk)
                if size > MAX_DOCUMENT_BYTES:
                    break
                chunks.append(chunk)
            body = b"".join(chunks)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise MetadataError(f"{url}: {type(exc).__name__}: {exc}") from None
    if size > MAX_DOCUMENT_BYTES:
        raise MetadataError(f"{url}: document larger than {MAX_DOCUMENT_BYTES} bytes")
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MetadataError(f"{url}: not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise MetadataError(f"{url}: expected a JSON object")
    return doc


async def fetch_issuer_metadata(session: aiohttp.ClientSession, issuer: str, timeout: float) -> dict[str, Any]:
    """The issuer's metadata document; its ``issuer`` must equal ``issuer`` (RFC 8414 §3.3)."""
    problems = []
    for url in metadata_urls(issuer):
        try:
            doc = await fetch_json(session, url, timeout)
        except MetadataError as exc:
            problems.append(str(exc))
            continue
        if doc.get("issuer") != issuer:
            problems.append(f"{url}: issuer {doc.get('issuer')!r} does not match {issuer!r}")
            continue
        return doc
    raise MetadataError("; ".join(problems))
