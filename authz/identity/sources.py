"""Who is calling: the server's identity sources in order (RFC 6750 bearer JWT, trusted proxy), then
its mode (strict / optional / permissive) when none identified the caller."""

from __future__ import annotations

from dataclasses import replace

from authz.config import Server
from authz.errors import InvalidToken, MissingToken
from authz.identity import proxy
from authz.identity.rfc9068 import Verifier
from authz.model import ANONYMOUS, Caller, HttpRequest


async def identify(req: HttpRequest, server: Server, verifier: Verifier) -> Caller:
    """The caller, ANONYMOUS where the mode allows, else MissingToken / InvalidToken."""
    for source in server.identity:
        if source == "jwt":
            caller = await _bearer(req, server, verifier)
        else:  # "proxy"; config requires proxy settings with it
            caller = await _proxy(req, server, verifier)
        if caller is not None:
            return caller
    if server.mode == "strict":
        raise MissingToken()
    return ANONYMOUS


async def _proxy(req: HttpRequest, server: Server, verifier: Verifier) -> Caller | None:
    if server.proxy is None:
        return None
    team = server.proxy.cloudflare
    return await proxy.identify(req, server.proxy, verifier.keyset(team.keys.name) if team is not None else None)


async def _bearer(req: HttpRequest, server: Server, verifier: Verifier) -> Caller | None:
    """The token's caller; None without an Authorization header (or with a bad one, in permissive mode)."""
    values = req.values("authorization")
    if not values:
        return None
    try:
        if len(values) > 1:
            raise InvalidToken("token_malformed", "several Authorization headers")
        scheme, _, token = values[0].strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or " " in token:
            raise InvalidToken("token_malformed", "not a Bearer credential")
        if not token:
            raise InvalidToken("token_empty", "Bearer without a token")
        caller = await verifier.verify(token, server)
        # Only a server that exchanges the token (RFC 8693) keeps it with the caller.
        return replace(caller, token=token) if server.exchange is not None else caller
    except InvalidToken:
        if server.mode == "permissive":
            return None  # the next identity source may still name the caller; else anonymous
        raise
