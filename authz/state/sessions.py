"""Session binding: may this subject use this ``Mcp-Session-Id``? (after the rate limit)

The first subject to use a session id owns it; another subject's use is refused (404 as an unknown
session by default, or 403); the owner's ``DELETE`` ends it. A subject may hold at most
``max_per_subject`` live sessions (429 ``too_many_sessions`` beyond), so one caller cannot fill the
store with sessions.
"""

from __future__ import annotations

import logging
import math

from authz.config.runtime import Server
from authz.errors import RateLimited, Refusal
from authz.model import Caller, McpRequest
from authz.observe.audit import session_fingerprint
from authz.state.failure import store_unavailable
from authz.store.base import SessionLimit, Store, StoreError

log = logging.getLogger("mcp_authz.state")


class SessionRefused(Refusal):
    """A session id bound to another subject: 404 as an unknown session (default) or 403."""

    default_reason = "session_hijack"

    def __init__(self, status: int, detail: str = "") -> None:
        super().__init__(None, detail)
        self.status = status


class SessionBinder:
    def __init__(self, store: Store, failure_mode: str, max_per_subject: int | None) -> None:
        self.store = store
        self.failure_mode = failure_mode
        self.max_per_subject = max_per_subject

    async def bind(self, server: Server, caller: Caller, mcp: McpRequest) -> None:
        """Bind the MCP session to the first subject using it; refuse it to any other; DELETE ends it."""
        sid = mcp.session_id
        if not server.sessions.bind or sid is None or caller.subject is None or mcp.stateless:
            return
        try:
            owner = await self.store.bind_session(
                server.name, sid, caller.subject, server.sessions.ttl, max_per_subject=self.max_per_subject
            )
            if owner == caller.subject and mcp.http_method == "DELETE":
                await self.store.end_session(server.name, sid)
        except SessionLimit as full:
            wait = max(1, math.ceil(full.retry_after))
            raise RateLimited(wait, "too_many_sessions", f"{caller.subject!r} holds {full.limit} sessions") from None
        except StoreError as exc:
            store_unavailable("sessions", self.failure_mode, str(exc))
            return
        if owner != caller.subject:
            log.warning(
                "session_hijack",
                extra={
                    "reason": "session_hijack",
                    "server": server.name,
                    "session": session_fingerprint(sid),  # the id itself is a bearer secret: never logged
                    "subject": caller.subject,
                    "owner": owner,
                },
            )
            detail = f"session {session_fingerprint(sid)} belongs to {owner!r}"
            raise SessionRefused(server.sessions.hijack_status, detail)
