"""Envoy's MCP filter (``envoy.filters.http.mcp``, Envoy >= 1.40) as the Check's input: its dynamic metadata
→ the JSON-RPC message ``authz.request`` reads, and which servers cannot be decided on it.

Pure. The filter parses the body once in Envoy (duplicate keys refused, ``REJECT_NO_MCP``), and writes
``method``, ``id``, ``jsonrpc`` and part of ``params`` (``name``, ``uri``, ``_meta``; never
``arguments``) under the namespace ``envoy.filters.http.mcp``, which ext_authz forwards
(``metadata_context_namespaces``; the HTTP front gets it as JSON in ``x-mcp-authz-mcp``). The message
rebuilt here goes through the same checks as a body (header agreement, revision, ``_meta`` envelope),
so the two inputs decide alike. What the metadata cannot say:

* numbers are doubles: an integral id is taken as an integer (``1`` and ``1.0`` alike, as the MCP SDKs
  take them); ids beyond 2**53 lose precision (the decision is the same, a JSON-RPC error echoes the
  rounded id);
* a JSON-RPC response is ``method: __jsonrpc_response``, also what a request of that literal method
  looks like: the rendered Envoy sends such requests' body (route picked again on the metadata), so one
  reaching the Check without it is refused (fail closed);
* tool arguments: a server whose decision reads them (``body_needed``) gets the body, and a request of
  such a server arriving with metadata alone is refused (an Envoy config rendered for another policy).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from authz import contract
from authz.config.runtime import Server
from authz.errors import PARSE_ERROR, BadRequest, TooLarge, Unavailable

NAMESPACE = contract.MCP_METADATA_NAMESPACE
RESPONSE_METHOD = "__jsonrpc_response"  # the filter's method for a JSON-RPC response
OK_STATUS = "mcp_ok"


def body_needed(server: Server) -> str | None:
    """Why ``server``'s decisions need the request body rather than the MCP filter's metadata (None: they don't).

    Tool arguments: a CEL ``when`` naming them, an approval rule (a person approves the arguments),
    declared ``Mcp-Param-*`` headers (checked against the arguments).
    """
    policy = server.policy
    if policy is not None:
        if policy.approval_rules:
            return "approval rules show the arguments"
        for rule in policy.rules:
            if rule.when is not None and "arguments" in rule.when.source:
                return f"rule {rule.name!r} reads the tool arguments"
    if server.param_headers:
        return "declared Mcp-Param headers are checked against the arguments"
    return None


def message(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON-RPC message Envoy's filter parsed, from its metadata. Raises the Refusal for metadata that
    says the parse is incomplete or failed (fail closed)."""
    if fields.get("is_exceeding_limit") is True:
        raise TooLarge(detail="Envoy's MCP filter parsed only part of the body")
    if fields.get("status") != OK_STATUS or fields.get("is_mcp_request") is not True:
        raise BadRequest("body_invalid", f"Envoy's MCP filter status {fields.get('status')!r}", code=PARSE_ERROR)
    method = fields.get("method")
    if method == RESPONSE_METHOD:
        raise Unavailable(
            "envoy_metadata_incomplete",
            "a JSON-RPC response (or a request of that method) without its body: render the Envoy config again",
        )
    result: dict[str, Any] = {"jsonrpc": fields.get("jsonrpc")}
    if "id" in fields:
        result["id"] = _number(fields["id"])
    if method is not None:
        result["method"] = method
    params = fields.get("params")
    if params is not None:
        result["params"] = _numbers(params)
    return result


def _number(value: Any) -> Any:
    """A double holding an integer → that integer; anything else unchanged (a fraction stays a float)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _numbers(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _numbers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_numbers(item) for item in value]
    return _number(value)
