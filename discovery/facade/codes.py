"""Authorization codes the facade issues: single-use, short-lived, bound to the client, redirect URI and PKCE.

A code is a random handle to a grant kept in the shared store (so any replica can redeem it) and taken
atomically on redemption: a replayed code finds nothing. The grant is checked after it is taken, so a code
presented by the wrong client or without the right PKCE verifier is spent as well (RFC 6749 §10.5).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import asdict, dataclass

from authz.store.base import Store

CODE_TTL = 60.0
_PREFIX = "facade:code:"


class CodeError(Exception):
    """A code that cannot be redeemed; always answered as OAuth ``invalid_grant``."""


@dataclass(frozen=True)
class Grant:
    """What a code stands for."""

    client_id: str
    redirect_uri: str
    code_challenge: str  # S256 only
    resource: str
    scope: str
    subject: str
    upstream_token: str | None = None


def s256(verifier: str) -> str:
    """The PKCE S256 challenge of a verifier."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


async def issue(store: Store, grant: Grant, ttl: float = CODE_TTL) -> str:
    """Store the grant under a fresh code and return the code."""
    code = secrets.token_urlsafe(32)
    await store.put(_PREFIX + code, json.dumps(asdict(grant)).encode(), ttl)
    return code


async def redeem(store: Store, code: str, client_id: str, redirect_uri: str, code_verifier: str | None) -> Grant:
    """Take the code once and check it was issued to this client, redirect URI and PKCE verifier."""
    raw = await store.take(_PREFIX + code)
    if raw is None:
        raise CodeError("authorization code is unknown, expired or already used")
    grant = Grant(**json.loads(raw))
    if not hmac.compare_digest(grant.client_id, client_id):
        raise CodeError("authorization code was issued to another client")
    if grant.redirect_uri != redirect_uri:
        raise CodeError("redirect_uri does not match the authorization request")
    if not code_verifier or not hmac.compare_digest(s256(code_verifier), grant.code_challenge):
        raise CodeError("code_verifier is missing or does not match the code_challenge")
    return grant
