"""Admission control: at most ``listen.max_inflight`` Checks in progress on a front.

A Check counts from the moment its request has arrived (read whole, queued) to the moment its answer
is written. When the bound is reached, a new request is answered at once, without a Check, with the
``OVERLOADED`` decision: 503, ``Retry-After: 1``, reason ``overloaded``. Under overload this keeps the
queue inside the authorizer short enough that the Checks it admits are answered before Envoy's
ext_authz timeout; without it every request waits behind all the others, most answers arrive after
Envoy has given up (and answered 503 itself), and the work spent on them is lost.

One event loop: no locks. Where the count starts differs by front: the HTTP front counts a request
once it is read (an I/O callback, before any Check task runs); the gRPC fronts when the call's handler
first runs, so on grpcio, under CPU saturation, calls also wait in grpcio's own queue where no count
sees them (grpcio's ``maximum_concurrent_rpcs`` is no help: the calls it holds back keep the HTTP/2
connection's flow-control credit and the admitted ones stall; measured with Envoy at 4,000
connections, goodput fell to zero).
"""

from __future__ import annotations

from authz.errors import Unavailable
from authz.model import Decision
from authz.response import deny

REASON = "overloaded"
RETRY_AFTER = "1"  # seconds


def _overloaded() -> Decision:
    base = deny(Unavailable(REASON, "max_inflight Checks in progress"), None, None)
    return Decision(
        allowed=False,
        status=503,
        reason=REASON,
        deny_headers=(*base.deny_headers, ("retry-after", RETRY_AFTER)),
        body=base.body,
        detail=base.detail,
    )


OVERLOADED = _overloaded()


class Admission:
    """The count of one front's Checks in progress, against ``limit``."""

    __slots__ = ("inflight", "limit", "refused")

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"listen.max_inflight must be at least 1, got {limit}")
        self.limit = limit
        self.inflight = 0
        self.refused = 0  # since start

    def admit(self) -> bool:
        """Count one more Check in progress, or refuse (False) at the bound."""
        if self.inflight >= self.limit:
            self.refused += 1
            return False
        self.inflight += 1
        return True

    def done(self) -> None:
        """One admitted Check answered (or dropped with its connection)."""
        self.inflight -= 1
