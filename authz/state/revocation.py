"""Revocation: is this token revoked, by its ``jti`` or by its subject's cut-off? (after identify, no I/O)."""

from __future__ import annotations

from collections.abc import Iterable

from authz.config.runtime import Issuer
from authz.errors import InvalidToken
from authz.model import Caller
from authz.state.failure import store_unavailable
from authz.store.base import DEFAULT_SUBJECT_KEEP, Store


class RevocationCheck:
    """Refuses a revoked token with 401 ``token_revoked``; an unhealthy store's copy may be stale."""

    def __init__(self, store: Store, failure_mode: str) -> None:
        self.store = store
        self.failure_mode = failure_mode

    def check(self, caller: Caller) -> None:
        if caller.mode != "jwt":
            return  # anonymous callers and proxy identities carry no token to revoke
        if not self.store.healthy:
            store_unavailable("revocation", self.failure_mode, "local copy may be stale")
        iat = caller.claims.get("iat")
        issued_at = float(iat) if isinstance(iat, int | float) and not isinstance(iat, bool) else None
        if self.store.is_revoked(caller.subject, caller.token_id, issued_at):
            raise InvalidToken("token_revoked", f"jti {caller.token_id!r} or subject {caller.subject!r} revoked")


def subject_revocation_until(issuers: Iterable[Issuer], before: float) -> float:
    """When a subject cut-off at ``before`` may be forgotten: every token issued before it has expired.

    That is the cut-off plus the longest lifetime any issuer accepts (``max_lifetime`` + ``clock_skew``)."""
    longest = max((i.max_lifetime + i.clock_skew for i in issuers if i.max_lifetime > 0), default=0)
    return before + (longest or DEFAULT_SUBJECT_KEEP)
