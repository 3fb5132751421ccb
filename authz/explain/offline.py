"""Explain a decision: run one request through the real Check, changing nothing, and say why.

One implementation for ``mcp-authz policy explain`` (a config file, no running authorizer) and the
admin API's ``Explain`` (the live config, key sets and store). Either way the Check is the real one
with three stages replaced: the store is read but never written (``DryRunStore``: no session bound,
no rate limit spent), nobody is asked for an approval (a call that needs one is reported as pending),
and no upstream credential is fetched or shown. One redaction rule (``shown_headers``): on allow only
the identity headers keep their values.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import aiohttp

from authz.check import Checker
from authz.config.runtime import Config, Server
from authz.errors import ApprovalRefused
from authz.explain.dryrun import DryRunStore
from authz.explain.request import ExplainInput, from_file, http_request
from authz.identity.jwks import KeySet
from authz.identity.rfc9068 import Verifier
from authz.identity.sources import IdentitySources
from authz.model import Caller, Decision, HttpRequest, McpRequest
from authz.stages import Identity, Stages
from authz.state.guards import Guards
from authz.store.base import Store
from authz.store.memory import MemoryStore

REDACTED = "<redacted>"


@dataclass(frozen=True, slots=True)
class Explanation:
    """What both explain commands print."""

    decision: str  # "allow" | "deny"
    status: int
    reason: str
    rule: str
    server: str
    detail: str
    headers: dict[str, str]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class ExplainApprovals:
    """A call whose rule needs a person's approval is reported as pending (``approval_pending``); nobody is asked."""

    async def check(self, server: Server, caller: Caller, mcp: McpRequest, rule: str | None, req: HttpRequest) -> None:
        policy = server.policy
        if rule is not None and policy is not None and rule in policy.approval_rules:
            raise ApprovalRefused("pending", "", f"explain: rule {rule!r} waits for a person's approval (none asked)")


class ExplainCredentials:
    """Names the credential headers a call would get; no secret is revealed and no token is exchanged."""

    async def headers(self, server: Server, caller: Caller) -> tuple[tuple[str, str], ...]:
        names = [c.header for c in (server.credentials, server.exchange) if c is not None]
        return tuple((name, REDACTED) for name in names)


def shown_headers(config: Config, decision: Decision) -> dict[str, str]:
    """The headers a decision sets: a deny's as they are; on allow only the identity headers keep their
    values (never a credential, whatever header carries it)."""
    if not decision.allowed:
        return dict(decision.deny_headers)
    server = config.servers.get(decision.server or "")
    visible = set(server.identity_headers.names) if server is not None else set()
    return {k: (v if k in visible else REDACTED) for k, v in decision.set_headers}


def explain_checker(config: Config, identity: Identity, store: Store) -> Checker:
    """The Check of ``config`` with ``identity``, over a read-only view of ``store``; no approval is asked
    for and no upstream credential is fetched."""
    guards = Guards(DryRunStore(store), config.store.failure, config.store.max_sessions_per_subject)
    stages = Stages(
        identity=identity,
        revocation=guards,
        rate_limit=guards,
        sessions=guards,
        approval=ExplainApprovals(),
        credentials=ExplainCredentials(),
    )
    return Checker(config, stages)


async def explain(config: Config, identity: Identity, store: Store, given: ExplainInput, token: str) -> Explanation:
    """Run ``given`` (with ``token`` as its Bearer credential) through ``explain_checker`` and say why."""
    decision = await explain_checker(config, identity, store).check(http_request(given, token))
    return Explanation(
        decision="allow" if decision.allowed else "deny",
        status=decision.status,
        reason=decision.reason,
        rule=decision.rule or "",
        server=decision.server or "",
        detail=decision.detail,
        headers=shown_headers(config, decision),
    )


async def explain_file(config: Config, spec: Any, token: str) -> dict[str, Any]:
    """``policy explain``: a request file (``authz.explain.request.from_file``) against ``config`` alone:
    keys fetched as the authorizer would (or the local ones), an empty store."""
    async with aiohttp.ClientSession() as session:
        keys = {name: KeySet(issuer, lambda: session) for name, issuer in config.key_issuers.items()}
        identity = IdentitySources(Verifier(config.issuers, keys))
        found = await explain(config, identity, MemoryStore(), from_file(spec), token)
    return found.as_dict()
