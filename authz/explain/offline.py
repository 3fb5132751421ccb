"""``policy explain``: run one request through the Check pipeline offline and say why."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from authz.admin.service import ExplainApprovals, ExplainCredentials
from authz.check import Checker
from authz.config.runtime import Config
from authz.contract import SERVER_CONTEXT_KEY
from authz.identity.jwks import KeySet
from authz.identity.rfc9068 import Verifier
from authz.identity.sources import IdentitySources
from authz.model import Decision, HttpRequest
from authz.stages import Stages
from authz.state.guards import Guards
from authz.store.memory import MemoryStore


def request_from_spec(spec: Any, token: str) -> HttpRequest:
    """A JSON-RPC body alone, or ``{"method", "path", "headers", "body", "server"}``."""
    if not (isinstance(spec, dict) and "body" in spec and "jsonrpc" not in spec):
        spec = {"body": spec}
    headers = {str(k).lower(): str(v) for k, v in (spec.get("headers") or {}).items()}
    headers.setdefault("content-type", "application/json")
    if token:
        headers["authorization"] = f"Bearer {token}"
    body = spec.get("body")
    raw = body.encode() if isinstance(body, str) else (None if body is None else json.dumps(body).encode())
    context = {SERVER_CONTEXT_KEY: spec["server"]} if spec.get("server") else {}
    return HttpRequest(
        method=spec.get("method", "POST"), path=spec.get("path", "/"), headers=headers, body=raw, context=context
    )


async def explain(config: Config, spec: Any, token: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session:
        keys = {name: KeySet(issuer, lambda: session) for name, issuer in config.key_issuers.items()}
        # Nobody is asked for an approval, no token is exchanged, no secret is shown (as the admin Explain).
        guards = Guards(MemoryStore(), config.store.failure, config.store.max_sessions_per_subject)
        stages = Stages(
            identity=IdentitySources(Verifier(config.issuers, keys)),
            revocation=guards,
            rate_limit=guards,
            sessions=guards,
            approval=ExplainApprovals(),
            credentials=ExplainCredentials(),
        )
        checker = Checker(config, stages)
        decision = await checker.check(request_from_spec(spec, token))
    return {
        "decision": "allow" if decision.allowed else "deny",
        "status": decision.status,
        "reason": decision.reason,
        "rule": decision.rule,
        "server": decision.server,
        "detail": decision.detail,
        "headers": _shown(config, decision),
    }


def _shown(config: Config, decision: Decision) -> dict[str, str]:
    """The decision's headers; injected upstream credentials are masked."""
    if not decision.allowed:
        return dict(decision.deny_headers)
    server = config.servers.get(decision.server or "")
    secret = server.injected_headers if server is not None else ()
    return {k: "***" if k in secret else v for k, v in decision.set_headers}
