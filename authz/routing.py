"""Which MCP server a request is for, when Envoy does not name it.

Envoy routes rendered by mcp-authz name the server in the ``mcp_server`` context extension. Istio's
gRPC provider cannot send per-route context extensions, so there the server is found from the
request's host and path: the server whose resource path is the longest prefix of the request path
(on a segment boundary) among those whose ``hosts`` hold the request's host name.
"""

from __future__ import annotations

from collections.abc import Iterable

from authz.config.runtime import Config, Server
from authz.contract import SERVER_CONTEXT_KEY
from authz.errors import Forbidden
from authz.model import HttpRequest


def _host_name(authority: str) -> str:
    host = authority.strip().lower()
    if host.startswith("["):  # [v6]:port
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _path_matches(prefix: str, path: str) -> int:
    """Length of ``prefix`` if it is a segment-boundary prefix of ``path``, else -1."""
    prefix = prefix.rstrip("/")
    if not prefix:
        return 0
    if path == prefix or path.startswith(prefix + "/"):
        return len(prefix)
    return -1


def by_host_and_path(servers: Iterable[Server], authority: str, path: str) -> list[Server]:
    """The servers tied for the best match (empty: none matches; several: ambiguous)."""
    host = _host_name(authority)
    path = path.split("?", 1)[0].split("#", 1)[0] or "/"
    best: list[Server] = []
    best_len = -1
    for server in servers:
        if "*" not in server.hosts and host not in server.hosts:
            continue
        length = _path_matches(server.path, path)
        if length > best_len:
            best, best_len = [server], length
        elif length == best_len and length >= 0:
            best.append(server)
    return best


def select_server(config: Config, req: HttpRequest) -> Server:
    """The server named by Envoy's context extension, else the only one, else the one host and path match.

    Refuses (403 ``server_unknown``) an unknown name, no match and an ambiguous match alike.
    """
    name = req.context.get(SERVER_CONTEXT_KEY)
    if name is None:
        if len(config.servers) == 1:
            return next(iter(config.servers.values()))
        authority = req.headers.get(":authority") or req.headers.get("host") or ""
        found = by_host_and_path(config.servers.values(), authority, req.path)
        if len(found) != 1:
            what = "several servers match" if found else "no server's resource matches"
            raise Forbidden(
                "server_unknown", f"no {SERVER_CONTEXT_KEY} context extension; {what} {authority}{req.path}"
            )
        return found[0]
    server = config.servers.get(name)
    if server is None:
        raise Forbidden("server_unknown", f"{SERVER_CONTEXT_KEY} {name!r} is not configured")
    return server
