"""What the Check needs of each stage: one Protocol per stage, and ``Stages``, the set a Checker is handed.

The Check (``authz.check``) depends on these interfaces only; ``authz.app`` builds the concrete stages
(identity sources over a verifier, the store-backed guards, the approval gate, upstream credentials)
and ``policy explain`` / the admin Explain hand in read-only ones. A stage raises a ``Refusal`` to
refuse, or returns. Stages never import each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from authz.config.runtime import Server
from authz.model import Caller, HttpRequest, McpRequest


class Identity(Protocol):
    """Who is calling (``authz.identity.sources.IdentitySources``): the caller, or ANONYMOUS where the
    server's mode allows."""

    async def identify(self, req: HttpRequest, server: Server) -> Caller: ...


class Revocation(Protocol):
    """Refuses a revoked token (``authz.state``). No I/O: it reads the store's local copy."""

    def revocation(self, caller: Caller) -> None: ...


class RateLimit(Protocol):
    """Counts the request against the server's limits (``authz.state``); refuses with 429 over one."""

    async def rate_limit(self, server: Server, caller: Caller, mcp: McpRequest, source: str = "") -> None: ...


class SessionBinding(Protocol):
    """Binds an MCP session to its first subject and refuses it to any other (``authz.state``)."""

    async def session(self, server: Server, caller: Caller, mcp: McpRequest) -> None: ...


class Approval(Protocol):
    """Holds a call whose rule needs a person's approval until it is given (``authz.approval``)."""

    async def check(
        self, server: Server, caller: Caller, mcp: McpRequest, rule: str | None, req: HttpRequest
    ) -> None: ...


class Credentials(Protocol):
    """The headers an allowed call carries upstream: integration secret, exchanged token (``authz.upstream``)."""

    async def headers(self, server: Server, caller: Caller) -> tuple[tuple[str, str], ...]: ...


@dataclass(frozen=True, slots=True)
class Stages:
    """The stages of one Checker, in the order the Check runs them (parse and authorize are pure and
    not handed in)."""

    identity: Identity
    revocation: Revocation
    rate_limit: RateLimit
    sessions: SessionBinding
    approval: Approval
    credentials: Credentials
