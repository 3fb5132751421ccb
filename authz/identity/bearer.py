"""RFC 6750 bearer extraction and the server's identity mode (strict / optional / permissive)."""

from __future__ import annotations

from authz.config import Server
from authz.errors import InvalidToken, MissingToken
from authz.identity.rfc9068 import Verifier
from authz.model import ANONYMOUS, Caller, HttpRequest


async def identify(req: HttpRequest, server: Server, verifier: Verifier) -> Caller:
    """The caller, ANONYMOUS where the mode allows, else MissingToken / InvalidToken."""
    values = req.values("authorization")
    if not values:
        if server.mode == "strict":
            raise MissingToken()
        return ANONYMOUS
    try:
        if len(values) > 1:
            raise InvalidToken("token_malformed", "several Authorization headers")
        scheme, _, token = values[0].strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or " " in token:
            raise InvalidToken("token_malformed", "not a Bearer credential")
        if not token:
            raise InvalidToken("token_empty", "Bearer without a token")
        return await verifier.verify(token, server)
    except InvalidToken:
        if server.mode == "permissive":
            return ANONYMOUS
        raise
