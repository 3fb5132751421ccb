"""Trusted proxy identity: an authenticating proxy (oauth2-proxy, Authelia...) names the user in headers.

The headers are believed only from the proxy: its mTLS principal (``source.principal``) must match
``trusted_principals`` when set, AND its source address must be in ``trusted_cidrs`` when set.
"""

from __future__ import annotations

import ipaddress
import logging

from authz.config import ProxyTrust
from authz.errors import InvalidToken
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


def identify(req: HttpRequest, proxy: ProxyTrust) -> Caller | None:
    """The proxy's user, or None (no user header, or untrusted headers stripped); InvalidToken if refused."""
    if not trusted(req, proxy):
        if any(req.values(h) for h in proxy.headers):
            detail = f"identity headers from principal {req.source_principal!r} address {req.source_address!r}"
            if not proxy.strip:
                log.warning("untrusted proxy identity refused", extra={"reason": "proxy_untrusted"})
                raise InvalidToken("proxy_untrusted", detail)
            log.info("untrusted proxy identity ignored", extra={"reason": "proxy_untrusted_stripped"})
        return None
    user = _one(req, proxy.user_header)
    if user is None:
        return None
    claims: dict[str, object] = {"sub": user}
    email = _one(req, proxy.email_header)
    if email is not None:
        claims["email"] = email
    groups = _one(req, proxy.groups_header)
    claims["groups"] = [g.strip() for g in groups.split(",") if g.strip()] if groups else []
    return Caller(subject=user, claims=claims, scopes=frozenset(), mode="proxy")
