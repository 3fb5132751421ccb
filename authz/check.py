"""The Check pipeline: select server → origin → identify → revocation → parse → authorize → rate limit →
session binding → approval → upstream credentials → respond.

No I/O of its own (the stages it is handed may do some: ``authz.stages``, built by ``authz.app``).
An unexpected exception turns into a fail-closed deny here, and only here.
"""

from __future__ import annotations

import logging

from authz import request, response, routing
from authz.config.runtime import Config, Server
from authz.errors import Refusal, Unavailable
from authz.model import Caller, Decision, HttpRequest, McpRequest
from authz.origin import check_origin
from authz.policy.rules import authorize
from authz.stages import Stages

log = logging.getLogger("mcp_authz.check")


class Checker:
    """One compiled config and the stages built for it; replaced as a whole on reload."""

    def __init__(self, config: Config, stages: Stages) -> None:
        self.config = config
        self.stages = stages

    def select_server(self, req: HttpRequest) -> Server:
        return routing.select_server(self.config, req)

    async def check(self, req: HttpRequest) -> Decision:
        server: Server | None = None
        mcp: McpRequest | None = None
        caller: Caller | None = None
        try:
            server = self.select_server(req)
            check_origin(req, server)
            stages = self.stages
            caller = await stages.identity.identify(req, server)
            stages.revocation.revocation(caller)
            parsed = request.parse(req, server)
            if isinstance(parsed, Refusal):
                raise parsed
            mcp = parsed
            rule = authorize(server.policy, caller, mcp, req)
            await stages.rate_limit.rate_limit(server, caller, mcp, req.source_address)  # before a session is stored
            await stages.sessions.session(server, caller, mcp)
            await stages.approval.check(server, caller, mcp, rule, req)
            credentials = await stages.credentials.headers(server, caller)
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
