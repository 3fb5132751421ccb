"""Trusted proxy identity: an authenticating proxy (oauth2-proxy, Authelia...) names the user in headers.

The headers are believed only from the proxy: its mTLS principal (``source.principal``) must match
``trusted_principals`` when set, AND its source address must be in ``trusted_cidrs`` when set, AND,
for Cloudflare Access, the request must carry a valid ``Cf-Access-Jwt-Assertion`` (then the user is
the assertion's ``email``).
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

from authz.config.runtime import CLOUDFLARE_ASSERTION_HEADER, ProxyTrust
from authz.errors import InvalidToken
from authz.identity import cloudflare
from authz.identity.jwks import KeySet
from authz.model import Caller, HttpRequest

log = logging.getLogger("mcp_authz.identity.proxy")


def trusted(req: HttpRequest, proxy: ProxyTrust) -> bool:
    """Every configured rule kind passes: principal (exact or glob) and source address (CIDR)."""
    if proxy.principals is not None and (
        not req.source_principal or proxy.principals.fullmatch(req.source_principal) is None
    ):
        return False
    if proxy.cidrs is not None:
        try:
            address = ipaddress.ip_address(req.source_address)
        except ValueError:
            return False
        if not any(address in net for net in proxy.cidrs if net.version == address.version):
            return False
    return True


def _one(req: HttpRequest, name: str | None) -> str | None:
    if name is None:
        return None
    values = req.values(name)
    if len(values) > 1:
        raise InvalidToken("proxy_header_repeated", f"{name} sent {len(values)} times")
    value = values[0].strip() if values else ""
    return value or None


async def identify(req: HttpRequest, proxy: ProxyTrust, keys: KeySet | None = None) -> Caller | None:
    """The proxy's user, or None (no user header, or untrusted headers stripped); InvalidToken if refused.

    ``keys``: the Cloudflare team's key set, when the proxy is Cloudflare Access.
    """
    claims: dict[str, Any] | None = None
    refusal: InvalidToken | None = None
    if not trusted(req, proxy):
        refusal = InvalidToken("proxy_untrusted", "")
    elif proxy.cloudflare is not None:
        assertion = _one(req, CLOUDFLARE_ASSERTION_HEADER)
        try:
            if assertion is None:
                raise InvalidToken("proxy_untrusted", "no Cf-Access-Jwt-Assertion")
            claims = await cloudflare.verify(assertion, proxy.cloudflare, keys)
        except InvalidToken as exc:
            refusal = exc
    if refusal is not None:
        if any(req.values(h) for h in proxy.headers):
            where = f"identity headers from principal {req.source_principal!r} address {req.source_address!r}"
            if not proxy.strip:
                log.warning("untrusted proxy identity refused", extra={"reason": refusal.reason})
                raise InvalidToken(refusal.reason, f"{where}; {refusal.detail}".rstrip("; "))
            log.info("untrusted proxy identity ignored", extra={"reason": f"{refusal.reason}_stripped"})
        return None
    if claims is not None and proxy.cloudflare is not None:
        return _cloudflare_caller(req, proxy, claims, proxy.cloudflare.groups_claim)
    user = _one(req, proxy.user_header)
    if user is None:
        return None
    found: dict[str, object] = {"sub": user}
    email = _one(req, proxy.email_header)
    if email is not None:
        found["email"] = email
    groups = _one(req, proxy.groups_header)
    found["groups"] = [g.strip() for g in groups.split(",") if g.strip()] if groups else []
    return Caller(subject=user, claims=found, scopes=frozenset(), mode="proxy")


def _cloudflare_caller(
    req: HttpRequest, proxy: ProxyTrust, claims: dict[str, Any], groups_claim: tuple[str, ...] | None
) -> Caller:
    """The user of a verified assertion: its ``email``, which the email header (if sent) must repeat."""
    email = claims.get("email")
    if not isinstance(email, str) or not email.strip():
        raise InvalidToken("proxy_assertion_claim_missing", "the assertion names no email (a service token?)")
    header = _one(req, proxy.user_header)
    if header is not None and header != email:
        raise InvalidToken("proxy_email_mismatch", "Cf-Access-Authenticated-User-Email disagrees with the assertion")
    found: dict[str, object] = {"sub": email, "email": email, "groups": cloudflare.groups(claims, groups_claim)}
    return Caller(subject=email, claims=found, scopes=frozenset(), mode="proxy")
