"""RFC 9728 OAuth 2.0 Protected Resource Metadata for each configured MCP server (pure functions)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from authz.config.runtime import Config, Issuer, Server

WELL_KNOWN = "/.well-known/oauth-protected-resource"
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class Published:
    """One server's document and the authority (host[:port]) of its resource URL."""

    authority: str
    document: Mapping[str, Any]


def document(server: Server, issuers: Mapping[str, Issuer]) -> dict[str, Any]:
    """The metadata document (RFC 9728 §2) for ``server``."""
    doc: dict[str, Any] = {
        "resource": server.resource,
        "authorization_servers": [iss for name in server.issuers for iss in _issuers_of(issuers[name])],
        "bearer_methods_supported": ["header"],
    }
    if server.scopes_supported:
        doc["scopes_supported"] = server.asked_as(server.scopes_supported)
    if server.resource_name:
        doc["resource_name"] = server.resource_name
    return doc


def _issuers_of(issuer: Issuer) -> list[str]:
    """A multi-tenant issuer is each of its tenants' issuers; any other is its own identifier."""
    return list(issuer.accepted_issuers) if issuer.tenant_claim else [issuer.issuer]


def well_known_path(server: Server) -> str:
    """Path part of the server's metadata URL (§3.1: well-known segment, then the resource's path)."""
    return urlsplit(server.metadata_url).path


def authority(url: str) -> str:
    """``host[:port]`` of ``url``, lower-cased, without the scheme's default port."""
    parts = urlsplit(url)
    return normalize_host(parts.netloc, parts.scheme)


def normalize_host(host: str, scheme: str = "") -> str:
    """A Host header or netloc in comparable form: lower case, default port dropped."""
    host = host.lower().rsplit("@", 1)[-1]
    for name, port in _DEFAULT_PORTS.items():
        if scheme in ("", name) and host.endswith(f":{port}"):
            return host.removesuffix(f":{port}")
    return host


def routes(config: Config) -> dict[str, tuple[Published, ...]]:
    """Request path → the documents published there, in configuration order.

    Each server is published at its path-suffixed URL; a server whose resource has no path is
    thereby at the root. When no server is at the root and there is exactly one server, it is
    published at the root too. Servers on different hosts may share a path (see ``select``).
    """
    table: dict[str, list[Published]] = {}
    for server in config.servers.values():
        entry = Published(authority(server.resource), document(server, config.issuers))
        table.setdefault(well_known_path(server), []).append(entry)
    if WELL_KNOWN not in table and len(config.servers) == 1:
        table[WELL_KNOWN] = [entry]
    return {path: tuple(entries) for path, entries in table.items()}


def select(candidates: Sequence[Published], host: str | None) -> Mapping[str, Any] | None:
    """The document for a request with ``Host: host``: the only candidate, else the one on that host."""
    if len(candidates) == 1:
        return candidates[0].document
    wanted = normalize_host(host or "")
    for candidate in candidates:
        if normalize_host(candidate.authority) == wanted:
            return candidate.document
    return None
