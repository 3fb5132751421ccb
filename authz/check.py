"""The Check pipeline: select server → origin → identify → revocation → parse → authorize → rate limit →
session binding → approval → upstream credentials → respond.

No I/O of its own (the key set and the ``Store`` it is handed may do some). An unexpected exception
turns into a fail-closed deny here, and only here.
"""

from __future__ import annotations

import logging
from typing import Any

from authz import request, response, routing
from authz.approval.gate import ApprovalGate
from authz.config.runtime import Config, Server
from authz.contract import SERVER_CONTEXT_KEY
from authz.errors import Forbidden, Refusal, Unavailable
from authz.identity.rfc9068 import Verifier
from authz.identity.sources import identify
from authz.model import Caller, Decision, HttpRequest, McpRequest
from authz.policy.rules import authorize
from authz.state.guards import Guards
from authz.store.base import Store
from authz.store.memory import MemoryStore
from authz.upstream.credentials import UpstreamCredentials

log = logging.getLogger("mcp_authz.check")


def _no_http() -> Any:
    raise RuntimeError("no HTTP client session was handed to this Checker")


class Checker:
    """One compiled config and its verifier; replaced as a whole on reload."""

    def __init__(
        self,
        config: Config,
        verifier: Verifier,
        *,
        approvals: ApprovalGate | None = None,
        upstream: UpstreamCredentials | None = None,
        store: Store | None = None,
    ) -> None:
        self.config = config
        self.verifier = verifier
        self.approvals = approvals if approvals is not None else ApprovalGate(None, None, _no_http)
        self.upstream = upstream if upstream is not None else UpstreamCredentials()
        self.guards = Guards(store if store is not None else MemoryStore(), config.store.failure)
        self._only = next(iter(config.servers.values())) if len(config.servers) == 1 else None

    def select_server(self, req: HttpRequest) -> Server:
        name = req.context.get(SERVER_CONTEXT_KEY)
        if name is None:
            if self._only is not None:
                return self._only
            authority = req.headers.get(":authority") or req.headers.get("host") or ""
            found = routing.by_host_and_path(self.config.servers.values(), authority, req.path)
            if len(found) != 1:
                what = "several servers match" if found else "no server's resource matches"
                raise Forbidden(
                    "server_unknown", f"no {SERVER_CONTEXT_KEY} context extension; {what} {authority}{req.path}"
                )
            return found[0]
        server = self.config.servers.get(name)
        if server is None:
            raise Forbidden("server_unknown", f"{SERVER_CONTEXT_KEY} {name!r} is not configured")
        return server

    async def check(self, req: HttpRequest) -> Decision:
        server: Server | None = None
        mcp: McpRequest | None = None
        caller: Caller | None = None
        try:
            server = self.select_server(req)
            origin = req.headers.get("origin")
            if origin is not None and server.origins is not None and origin not in server.origins:
                raise Forbidden("origin_not_allowed", f"origin {origin!r}")
            caller = await identify(req, server, self.verifier)
            self.guards.revocation(caller)
            parsed = request.parse(req, server)
            if isinstance(parsed, Refusal):
                raise parsed
            mcp = parsed
            rule = authorize(server.policy, caller, mcp, req)
            await self.guards.rate_limit(server, caller, mcp, req.source_address)  # before a new session is stored
            await self.guards.session(server, caller, mcp)
            await self.approvals.check(server, caller, mcp, rule, req)
            credentials = await self.upstream.headers(server, caller)
            return response.allow(
                server,
                caller,
                mcp,
                rule,
                credentials,
                source=(req.source_address, req.source_principal),
                client_headers=req.headers,
            )
        except Refusal as refusal:
            return response.deny(refusal, server, mcp, caller=caller)
        except Exception as exc:  # fail closed: never allow, never crash
            log.exception("internal error in Check", extra={"reason": "internal_error"})
            failure = Unavailable("internal_error", f"{type(exc).__name__}: {exc}")
            return response.deny(failure, server, mcp, status=self.config.failure_status, caller=caller)
