"""The contract between the Check and the list filter: what travels in Envoy dynamic metadata.

On allow, for a server with ``filter_lists``, the Check returns a small struct (``encode``) in its
``dynamic_metadata``; Envoy stores it under the ext_authz filter's namespace (the names are in
``authz.contract``) and forwards it to ext_proc (``metadata_options.forwarding_namespaces.untyped``).
The processor rebuilds the caller from it (``decode``): the token is never looked at twice.

Kept small: subject, client, issuer, scopes, the list requests (id and method) of the message;
the claims and the request source only when the server's policy has CEL conditions that read them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from authz.config.runtime import Server
from authz.contract import HANDOVER_ID, HANDOVER_KEY, HANDOVER_NAMESPACE
from authz.model import ANONYMOUS, Caller, McpRequest

LIST_METHODS: Mapping[str, str] = {  # list method → the member of its result holding the entries
    "tools/list": "tools",
    "prompts/list": "prompts",
    "resources/list": "resources",
    "resources/templates/list": "resourceTemplates",
}

RequestId = str | int | None


@dataclass(frozen=True, slots=True)
class ListRequest:
    """One list request of the HTTP request: its JSON-RPC id and method."""

    id: RequestId
    method: str


@dataclass(frozen=True, slots=True)
class Handover:
    """What the processor knows of an allowed request: server, caller, list requests."""

    server: str
    caller: Caller
    revision: str
    session_id: str | None
    lists: tuple[ListRequest, ...]
    source_address: str = ""
    source_principal: str = ""
    any_id: bool = False  # decided on the routing headers alone: the id is unknown, the one answer is it

    @property
    def first_id(self) -> RequestId:
        return self.lists[0].id if self.lists else None


def encode(server: Server, caller: Caller, mcp: McpRequest, source: tuple[str, str] = ("", "")) -> dict[str, Any]:
    """The ``mcp_authz`` struct for the CheckResponse: ``server``, ``id`` (the request's, for Envoy's
    fail-closed local reply) and, only with a list request, ``handover``: the caller and the list
    requests as compact JSON text (one string is far cheaper than a nested Struct on both sides, and
    JSON keeps integers integers)."""
    lists = [[c.id, c.method] for c in mcp.calls if c.method in LIST_METHODS]
    if not lists:
        return {HANDOVER_KEY: {"server": server.name, HANDOVER_ID: mcp.first_id}}
    value: dict[str, Any] = {
        "sub": caller.subject,
        "client_id": caller.client_id,
        "iss": caller.issuer,
        "mode": caller.mode,
        "scope": " ".join(sorted(caller.scopes)),
        "revision": mcp.revision,
        "session_id": mcp.session_id,
        "lists": lists,
    }
    if mcp.from_headers:
        value["any_id"] = True
    if server.policy is not None and server.policy.uses_cel:
        value["claims"] = dict(caller.claims)
        value["source"] = [source[0], source[1]]
    text = json.dumps(value, separators=(",", ":"), default=str)
    return {HANDOVER_KEY: {"server": server.name, HANDOVER_ID: mcp.first_id, "handover": text}}


class HandoverError(ValueError):
    """Metadata missing or malformed: the processor cannot know who the caller is."""


def _request_id(value: Any) -> RequestId:
    if value is None or (isinstance(value, str | int) and not isinstance(value, bool)):
        return value
    raise HandoverError(f"bad request id {value!r}")


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _list_item(item: Any) -> bool:
    return isinstance(item, list) and len(item) == 2 and item[1] in LIST_METHODS


def decode(metadata: Mapping[str, Any]) -> Handover:
    """The handover from Envoy's forwarded metadata (namespace → ``mcp_authz`` → plain values)."""
    value = metadata.get(HANDOVER_NAMESPACE, {}).get(HANDOVER_KEY)
    if not isinstance(value, Mapping) or not isinstance(value.get("server"), str):
        where = f"{HANDOVER_NAMESPACE}/{HANDOVER_KEY}"
        raise HandoverError(f"no {where} metadata: is the gRPC ext_authz filter before ext_proc?")
    text = value.get("handover")
    if text is None:  # no list request: nothing to filter, the caller is not handed over
        return Handover(server=value["server"], caller=ANONYMOUS, revision="", session_id=None, lists=())
    try:
        found = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        found = None
    if not isinstance(found, dict):
        raise HandoverError("handover is not a JSON object")
    lists = found.get("lists")
    if not isinstance(lists, list) or not lists or not all(_list_item(i) for i in lists):
        raise HandoverError("bad lists in the handover")
    claims = found.get("claims")
    source = found.get("source")
    address, principal = source if isinstance(source, list) and len(source) == 2 else ("", "")
    caller = Caller(
        subject=_text(found.get("sub")),
        claims=claims if isinstance(claims, dict) else {},
        scopes=frozenset(str(found.get("scope") or "").split()),
        client_id=_text(found.get("client_id")),
        issuer=_text(found.get("iss")),
        mode=str(found.get("mode") or "jwt"),
    )
    return Handover(
        server=value["server"],
        caller=caller,
        revision=str(found.get("revision") or ""),
        session_id=_text(found.get("session_id")),
        lists=tuple(ListRequest(_request_id(i[0]), str(i[1])) for i in lists),
        source_address=str(address or ""),
        source_principal=str(principal or ""),
        any_id=found.get("any_id") is True,
    )
