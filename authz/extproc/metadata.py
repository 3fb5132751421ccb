"""The contract between the Check and the list filter: what travels in Envoy dynamic metadata.

On allow, for a server with ``filter_lists``, the Check returns a small struct (``encode``) in its
``dynamic_metadata``; Envoy stores it under the ext_authz filter's namespace and forwards it to
ext_proc (``metadata_options.forwarding_namespaces.untyped``). The processor rebuilds the caller
from it (``decode``): the token is never looked at twice.

Kept small: subject, client, issuer, scopes, the list requests (id and method) of the message;
the claims and the request source only when the server's policy has CEL conditions that read them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from authz.config import Server
from authz.model import Caller, McpRequest

NAMESPACE = "envoy.filters.http.ext_authz"  # where Envoy puts a CheckResponse's dynamic_metadata
KEY = "mcp_authz"  # our struct inside it
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

    @property
    def first_id(self) -> RequestId:
        return self.lists[0].id if self.lists else None


def encode(server: Server, caller: Caller, mcp: McpRequest, source: tuple[str, str] = ("", "")) -> dict[str, Any]:
    """The ``mcp_authz`` struct for the CheckResponse (JSON-like values only)."""
    lists = [{"id": c.id, "method": c.method} for c in mcp.calls if c.method in LIST_METHODS]
    value: dict[str, Any] = {
        "server": server.name,
        "sub": caller.subject,
        "client_id": caller.client_id,
        "iss": caller.issuer,
        "mode": caller.mode,
        "scope": " ".join(sorted(caller.scopes)),
        "revision": mcp.revision,
        "session_id": mcp.session_id,
        "lists": lists,
        "id": lists[0]["id"] if lists else None,  # for Envoy's fail-closed local reply
    }
    if server.policy is not None and server.policy.uses_cel:
        value["claims"] = dict(caller.claims)
        value["source"] = {"address": source[0], "principal": source[1]}
    return {KEY: value}


class HandoverError(ValueError):
    """Metadata missing or malformed: the processor cannot know who the caller is."""


def _request_id(value: Any) -> RequestId:
    # protobuf Struct numbers are doubles: integral ones were integers in the request.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if value is None or isinstance(value, str | int):
        return value
    raise HandoverError(f"bad request id {value!r}")


def _plain(value: Any) -> Any:
    """Struct values back to JSON's: integral doubles become integers again (CEL compares them strictly)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _list_item(item: Any) -> bool:
    return isinstance(item, Mapping) and item.get("method") in LIST_METHODS


def decode(metadata: Mapping[str, Any]) -> Handover:
    """The handover from Envoy's forwarded metadata (namespace → struct as plain Python values)."""
    value = metadata.get(NAMESPACE, {}).get(KEY)
    if not isinstance(value, Mapping) or not isinstance(value.get("server"), str):
        raise HandoverError(f"no {NAMESPACE}/{KEY} metadata: is the gRPC ext_authz filter before ext_proc?")
    lists = value.get("lists") or []
    if not isinstance(lists, list) or not all(_list_item(i) for i in lists):
        raise HandoverError("bad lists in metadata")
    claims = value.get("claims")
    source: Mapping[str, Any] = value["source"] if isinstance(value.get("source"), Mapping) else {}
    caller = Caller(
        subject=_text(value.get("sub")),
        claims=_plain(claims) if isinstance(claims, Mapping) else {},
        scopes=frozenset(str(value.get("scope") or "").split()),
        client_id=_text(value.get("client_id")),
        issuer=_text(value.get("iss")),
        mode=str(value.get("mode") or "jwt"),
    )
    return Handover(
        server=value["server"],
        caller=caller,
        revision=str(value.get("revision") or ""),
        session_id=_text(value.get("session_id")),
        lists=tuple(ListRequest(_request_id(i.get("id")), str(i["method"])) for i in lists),
        source_address=str(source.get("address") or ""),
        source_principal=str(source.get("principal") or ""),
    )
