"""The store-backed stages of a Check: revocation, session binding, rate limits.

Each stage raises a ``Refusal`` or returns. When the store cannot answer (``StoreError``, or for
revocation an unhealthy store whose local copy may be stale) the feature's failure mode decides:
``closed`` refuses with 503 ``store_unavailable``, ``open`` lets the call through unchecked.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator

from authz.config.runtime import RateLimit, Server, StoreFailure
from authz.errors import InvalidToken, RateLimited, Refusal, Unavailable
from authz.model import Caller, McpRequest
from authz.observe.audit import session_fingerprint
from authz.store.base import Store, StoreError

log = logging.getLogger("mcp_authz.state")
ANONYMOUS_KEY = "\x01anonymous"  # + the source address: anonymous callers count per address (no subject has \x01)


class SessionRefused(Refusal):
    """A session id bound to another subject: 404 as an unknown session (default) or 403."""

    default_reason = "session_hijack"

    def __init__(self, status: int, detail: str = "") -> None:
        super().__init__(None, detail)
        self.status = status


class Guards:
    """The three stages over one store; built with the Checker, so a reload brings new failure modes."""

    def __init__(self, store: Store, failure: StoreFailure) -> None:
        self.store = store
        self.failure = failure

    def _unavailable(self, feature: str, mode: str, detail: str) -> None:
        """Fail closed (raise) or open (return) for ``feature``."""
        if mode == "closed":
            raise Unavailable("store_unavailable", f"{feature}: {detail}")
        log.debug("store unavailable, failing open", extra={"feature": feature, "detail": detail})

    # ---------------------------------------------------------------- revocation (after identify)

    def revocation(self, caller: Caller) -> None:
        """Refuse a revoked token: by ``jti``, or by its subject's cut-off against ``iat``. No I/O."""
        if caller.mode != "jwt":
            return  # anonymous callers and proxy identities carry no token to revoke
        if not self.store.healthy:
            self._unavailable("revocation", self.failure.revocation, "local copy may be stale")
        iat = caller.claims.get("iat")
        issued_at = float(iat) if isinstance(iat, int | float) and not isinstance(iat, bool) else None
        if self.store.is_revoked(caller.subject, caller.token_id, issued_at):
            raise InvalidToken("token_revoked", f"jti {caller.token_id!r} or subject {caller.subject!r} revoked")

    # ---------------------------------------------------------------- session binding (after authorize)

    async def session(self, server: Server, caller: Caller, mcp: McpRequest) -> None:
        """Bind the MCP session to the first subject using it; refuse it to any other; DELETE ends it."""
        sid = mcp.session_id
        if not server.sessions.bind or sid is None or caller.subject is None or mcp.stateless:
            return
        try:
            owner = await self.store.bind_session(server.name, sid, caller.subject, server.sessions.ttl)
            if owner == caller.subject and mcp.http_method == "DELETE":
                await self.store.end_session(server.name, sid)
        except StoreError as exc:
            self._unavailable("sessions", self.failure.sessions, str(exc))
            return
        if owner != caller.subject:
            log.warning(
                "session_hijack",
                extra={
                    "reason": "session_hijack",
                    "server": server.name,
                    "session": _fingerprint(sid),  # the id itself is a bearer secret: never logged
                    "subject": caller.subject,
                    "owner": owner,
                },
            )
            raise SessionRefused(server.sessions.hijack_status, f"session {_fingerprint(sid)} belongs to {owner!r}")

    # ---------------------------------------------------------------- rate limits (after session binding)

    async def rate_limit(self, server: Server, caller: Caller, mcp: McpRequest, source: str = "") -> None:
        """Count the request against each limit of the server; the first one exceeded refuses with 429.

        Identified callers count per subject; anonymous ones (optional modes) per source address, so one
        of them cannot use up everyone's allowance."""
        subject = caller.subject if caller.subject is not None else f"{ANONYMOUS_KEY}\x00{source}"
        for limit in server.rate_limits:
            for key in _keys(server, limit, subject, mcp):
                try:
                    wait = await self.store.hit(key, limit.limit, limit.window)
                except StoreError as exc:
                    self._unavailable("rate_limits", self.failure.rate_limits, str(exc))
                    return
                if wait > 0:
                    raise RateLimited(max(1, math.ceil(wait)), "rate_limited", f"limit {limit.name!r}")


def _keys(server: Server, limit: RateLimit, subject: str, mcp: McpRequest) -> Iterator[str]:
    """One store key per count this request makes against ``limit``."""
    base = f"{server.name}\x00{limit.name}\x00{subject}"
    if not limit.per_tool and limit.tools is None:
        yield base  # every request counts once
        return
    for call in mcp.calls:
        if call.method != "tools/call" or call.tool is None:
            continue
        if limit.tools is not None and not limit.tools.fullmatch(call.tool):
            continue
        yield f"{base}\x00{call.tool}" if limit.per_tool else base


_fingerprint = session_fingerprint  # the same name for a session in logs and audit events
