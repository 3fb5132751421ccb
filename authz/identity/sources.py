"""Who is calling: the server's identity sources in order (RFC 6750 bearer JWT, trusted proxy), then
its mode (strict / optional / permissive) when none identified the caller.

A bearer token travels in the ``Authorization`` header only. An ``access_token`` query parameter
(RFC 6750 §2.3; forbidden by MCP and OAuth 2.1) or form-body parameter (§2.2; not part of MCP) is
refused with 400 ``invalid_request`` in every mode, with or without a header beside it (§2: one
method per request), so such a token never travels on to the MCP server.
"""

from __future__ import annotations

from dataclasses import replace
from urllib.parse import unquote_plus

from authz.config.runtime import Server
from authz.errors import InvalidRequest, InvalidToken, MissingToken
from authz.identity import proxy
from authz.identity.rfc9068 import Verifier
from authz.model import ANONYMOUS, Caller, HttpRequest

TOKEN_PARAMETER = "access_token"
FORM = "application/x-www-form-urlencoded"


class IdentitySources:
    """The identity stage of the Check (``authz.stages.Identity``): ``identify`` over one verifier."""

    __slots__ = ("verifier",)

    def __init__(self, verifier: Verifier) -> None:
        self.verifier = verifier

    async def identify(self, req: HttpRequest, server: Server) -> Caller:
        return await identify(req, server, self.verifier)


async def identify(req: HttpRequest, server: Server, verifier: Verifier) -> Caller:
    """The caller, ANONYMOUS where the mode allows, else MissingToken / InvalidToken / InvalidRequest."""
    _only_in_the_header(req)
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


def _only_in_the_header(req: HttpRequest) -> None:
    """Refuse a token sent as a query or form-body parameter (the ``access_token`` name, any case)."""
    also = " beside an Authorization header" if "authorization" in req.headers else ""
    _, question, query = req.path.partition("?")
    if question and _names_the_token(query.partition("#")[0]):
        raise InvalidRequest("token_in_query", f"{TOKEN_PARAMETER} query parameter{also}")
    content_type = req.headers.get("content-type", "")
    if req.body and content_type[: len(FORM)].lower() == FORM and _names_the_token(req.body.decode("latin-1")):
        raise InvalidRequest("token_in_body", f"{TOKEN_PARAMETER} form parameter{also}")


def _names_the_token(encoded: str) -> bool:
    """Does a query string or form body have an ``access_token`` field (names decoded as parse_qsl does)?"""
    if "%" not in encoded and "access" not in encoded.lower():  # the fast path: the name cannot be there
        return False
    return any(unquote_plus(field.partition("=")[0]).lower() == TOKEN_PARAMETER for field in encoded.split("&"))


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
