"""Rate limits: has this caller used up a limit of the server? (after authorize, before session binding)

Counting comes before the session is bound, so a caller flooding new session ids is stopped by its
limit before any of them is stored.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from authz.config.runtime import RateLimit, Server
from authz.errors import RateLimited
from authz.model import Caller, McpRequest
from authz.state.failure import store_unavailable
from authz.store.base import Store, StoreError

ANONYMOUS_KEY = "\x01anonymous"  # + the source address: anonymous callers count per address (no subject has \x01)


class RateLimiter:
    def __init__(self, store: Store, failure_mode: str) -> None:
        self.store = store
        self.failure_mode = failure_mode

    async def hit(self, server: Server, caller: Caller, mcp: McpRequest, source: str = "") -> None:
        """Count the request against each limit of the server; the first one exceeded refuses with 429.

        Identified callers count per subject; anonymous ones (optional modes) per source address, so one
        of them cannot use up everyone's allowance."""
        subject = caller.subject if caller.subject is not None else f"{ANONYMOUS_KEY}\x00{source}"
        for limit in server.rate_limits:
            for key in _keys(server, limit, subject, mcp):
                try:
                    wait = await self.store.hit(key, limit.limit, limit.window)
                except StoreError as exc:
                    store_unavailable("rate_limits", self.failure_mode, str(exc))
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
