"""The upstream-credentials stage: the headers a server's integration secret and token exchange add."""

from __future__ import annotations

from authz.config.runtime import Server
from authz.errors import Unavailable
from authz.model import Caller
from authz.upstream.exchange import REASON, TokenExchanger


class UpstreamCredentials:
    """Builds the credential headers for an allowed call (none for most servers)."""

    __slots__ = ("exchanger",)

    def __init__(self, exchanger: TokenExchanger | None = None) -> None:
        self.exchanger = exchanger

    async def headers(self, server: Server, caller: Caller) -> tuple[tuple[str, str], ...]:
        """``(name, value)`` pairs to set upstream; a Refusal if the exchanged token cannot be had."""
        if server.credentials is None and server.exchange is None:
            return ()
        out: list[tuple[str, str]] = []
        if server.credentials is not None:
            out.append((server.credentials.header, server.credentials.value.reveal()))
        if server.exchange is not None:
            if self.exchanger is None:
                raise Unavailable(REASON, "token exchange is configured but not wired")
            token = await self.exchanger.token(server.exchange, caller)
            out.append((server.exchange.header, server.exchange.prefix + token))
        return tuple(out)
