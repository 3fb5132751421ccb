"""The policy decision: ordered rules, first match decides. Pure: no I/O, nothing but its inputs.

A rule matches on the HTTP method, the JSON-RPC method and the tool / prompt / resource name.
A matching ``allow`` rule still requires its scopes (else 403 insufficient_scope, or 401 for an
anonymous caller) and its CEL condition (else 403). A batch is allowed only if every element is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from authz.config.runtime import Policy, Rule
from authz.errors import Forbidden, InsufficientScope, MissingToken, Refusal
from authz.model import Caller, HttpRequest, McpCall, McpRequest

NEVER_CHALLENGED = frozenset({"offline_access"})


def authorize(policy: Policy | None, caller: Caller, mcp: McpRequest, req: HttpRequest) -> str | None:
    """Name of the rule that allowed the request (None: no policy, or the default allowed).

    Raises a Refusal carrying the rule that refused.
    """
    if policy is None:
        return None
    base = _base_context(caller, req) if policy.uses_cel else None
    if not mcp.calls:
        return _decide(policy, caller, mcp, None, base)
    decided: str | None = None
    for call in mcp.calls:
        if call.method:  # a bare JSON-RPC response carries no operation to authorize
            decided = _decide(policy, caller, mcp, call, base)
    return decided


def _decide(
    policy: Policy, caller: Caller, mcp: McpRequest, call: McpCall | None, base: dict[str, Any] | None
) -> str | None:
    for rule in policy.rules:
        if not _matches(rule, mcp.http_method, call):
            continue
        try:
            _require(rule, caller, mcp, call, base)
        except Refusal as refusal:
            refusal.rule = rule.name
            raise
        if not rule.allow:
            denied = Forbidden("policy_denied", f"rule {rule.name!r} denies")
            denied.rule = rule.name
            raise denied
        return rule.name
    if policy.default_allow:
        return None
    if caller.anonymous:
        raise MissingToken("token_missing", "no rule matches an anonymous caller")
    raise Forbidden("policy_no_match", f"no rule matches {call.method if call else mcp.http_method}")


def _matches(rule: Rule, http_method: str, call: McpCall | None) -> bool:
    if rule.http_methods is not None and http_method not in rule.http_methods:
        return False
    if call is None:
        return rule.methods is None and rule.tools is None and rule.prompts is None and rule.resources is None
    # Spelled out (no loop over (pattern, value) pairs): this runs for every rule of every Check.
    if rule.methods is not None and rule.methods.match(call.method) is None:
        return False
    if rule.tools is not None and (call.tool is None or rule.tools.match(call.tool) is None):
        return False
    if rule.prompts is not None and (call.prompt is None or rule.prompts.match(call.prompt) is None):
        return False
    return rule.resources is None or (call.uri is not None and rule.resources.match(call.uri) is not None)


def _require(rule: Rule, caller: Caller, mcp: McpRequest, call: McpCall | None, base: dict[str, Any] | None) -> None:
    needed = rule.scopes
    missing = not needed <= caller.scopes
    if rule.any_scopes and not any(s in caller.scopes for s in rule.any_scopes):
        needed = needed | {rule.any_scopes[0]}
        missing = True
    if missing:
        challenge = tuple(sorted(needed - NEVER_CHALLENGED))
        if caller.anonymous:
            raise MissingToken("token_missing", f"rule {rule.name!r} needs a token")
        raise InsufficientScope(challenge, detail=f"rule {rule.name!r} needs {' '.join(challenge)}")
    if rule.when is not None and base is not None and not rule.when.evaluate(_context(base, mcp, call)):
        raise Forbidden("policy_condition_failed", f"rule {rule.name!r}: {rule.when.source} is not true")


def _base_context(caller: Caller, req: HttpRequest) -> dict[str, Any]:
    """The parts of the CEL input that are the same for every element of a batch: built once per Check."""
    return {
        "jwt": dict(caller.claims),
        "request": {
            "method": req.method,
            "path": req.path,
            "headers": dict(req.headers),
            "source": {"address": req.source_address, "principal": req.source_principal},
        },
    }


def _context(base: Mapping[str, Any], mcp: McpRequest, call: McpCall | None) -> dict[str, Any]:
    return {
        **base,
        "mcp": {
            "method": call.method if call else "",
            "tool": (call.tool if call else None) or "",
            "prompt": (call.prompt if call else None) or "",
            "uri": (call.uri if call else None) or "",
            "name": (call.name if call else None) or "",
            "arguments": dict(call.arguments or {}) if call else {},
            "params": dict(call.params or {}) if call else {},  # declared Mcp-Param-{Name} values (2026-07-28)
            "session_id": mcp.session_id or "",
            "revision": mcp.revision,
        },
    }
