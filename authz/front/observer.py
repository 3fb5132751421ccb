"""The decision observer, as every front calls it.

``authz.app`` hands each front one observer (metrics, trace, audit event, decision log) called
after each Check with the request, the decision and ``time.perf_counter_ns()`` at the Check's start.
Whatever it raises is logged (reason ``observer_failed``) and the decision is still answered: an
audit or metrics fault never turns a decision into an error, in any front.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from authz.model import Decision, HttpRequest

log = logging.getLogger("mcp_authz.front")

Observer = Callable[[HttpRequest, Decision, int], None]


def guarded(observe: Observer) -> Observer:
    """``observe``, logging instead of raising."""

    def call(req: HttpRequest, decision: Decision, started_ns: int) -> None:
        try:
            observe(req, decision, started_ns)
        except Exception:  # the decision is made: answer it whatever the observer does
            log.exception("decision observer failed", extra={"reason": "observer_failed", "decision": decision.reason})

    return call
