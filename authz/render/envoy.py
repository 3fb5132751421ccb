"""A standalone Envoy v3 bootstrap (static resources) for the authorizer's config.

The chain, for each request on ``config.envoy.listen``:

1. ``/.well-known/*`` and ``/jwks/*`` go to the discovery service with ext_authz disabled
   (RFC 9728 / RFC 8414 documents and the dev issuer's JWKS must be readable without a token).
2. A request for an MCP server's path (``<path>`` exactly, or under ``<path>/``) is checked by
   ``envoy.filters.http.ext_authz`` over gRPC, the body included up to ``envoy.max_request_bytes``.
   Each route names its server in the per-route context extension ``mcp_server``: that is how the
   authorizer learns which server (resource, policy) a Check is for. With ``envoy.authorizer: http``
   the filter uses ``http_service`` instead (the fast path, ``authz.httpfront``), and the server's
   name travels from route metadata in the ``x-mcp-authz-server`` header.
3. For ``header_only`` servers, a 2026-07-28 request carrying ``Mcp-Method`` matches an earlier
   route that turns body buffering off: the decision is made on the routing headers, which such
   upstreams must validate against the body themselves.
4. Anything else gets a 404 from Envoy without a Check.

Fail closed: ``failure_mode_allow: false`` and ``status_on_error: 503`` (an unreachable
authorizer denies). Upstream responses may be long SSE streams: routes have no overall timeout,
only an idle timeout.

Plain dicts, one helper per piece; ``render_envoy_yaml`` gives byte-stable output.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import yaml

from authz.config import Config, Server

AUTHZ_CLUSTER = "mcp_authz"
DISCOVERY_CLUSTER = "mcp_discovery"
CONTEXT_EXTENSION = "mcp_server"  # the contract with the authorizer: names the MCP server of the request
EXT_AUTHZ = "envoy.filters.http.ext_authz"
STATELESS_REVISION = "2026-07-28"  # requests of this revision mirror the JSON-RPC method in headers
DISCOVERY_PREFIXES = ("/.well-known/", "/jwks/")

# HTTP ext_authz (envoy.authorizer: http): the contract with authz.httpfront.
ROUTE_METADATA_NAMESPACE = "mcp_authz"  # route metadata filter_metadata.mcp_authz.server = <server name>
HTTP_ALLOWED_HEADERS = (  # besides :method, :path, host, authorization and content-length, always sent
    "mcp-method",
    "mcp-name",
    "mcp-protocol-version",
    "mcp-session-id",
    "origin",
    "content-type",
    "accept",
    "traceparent",
)
HTTP_CONTEXT_HEADERS = (  # set by Envoy on each authorization request, overwriting any copy
    ("x-mcp-authz-server", f"%METADATA(ROUTE:{ROUTE_METADATA_NAMESPACE}:server)%"),
    ("x-mcp-authz-source", "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"),
    ("x-mcp-authz-peer-uri-san", "%DOWNSTREAM_PEER_URI_SAN%"),
    ("x-mcp-authz-peer-dns-san", "%DOWNSTREAM_PEER_DNS_SAN%"),
    ("x-mcp-authz-peer-subject", "%DOWNSTREAM_PEER_SUBJECT%"),
)
HTTP_CLIENT_HEADERS = ("content-type", "www-authenticate", "retry-after")  # on deny, with status and body

_EXT_AUTHZ_TYPE = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"
_EXT_AUTHZ_PER_ROUTE_TYPE = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute"
_HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
_HTTP_OPTIONS_TYPE = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_HTTP_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_CONNECTIONS_MONITOR = "envoy.resource_monitors.global_downstream_max_connections"
_CONNECTIONS_MONITOR_TYPE = (
    "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig"
)

STREAM_IDLE_TIMEOUT = "300s"  # HCM default for routes that set none (discovery, 404)
MCP_IDLE_TIMEOUT = "3600s"  # an SSE stream may stay quiet this long before Envoy resets it
CONNECTION_IDLE_TIMEOUT = "3600s"
REQUEST_HEADERS_TIMEOUT = "10s"  # slow-header clients
MAX_DOWNSTREAM_CONNECTIONS = 50_000


# ---------------------------------------------------------------- addresses


def _split_host_port(value: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` → (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected host:port, got {value!r}")
    return host.removeprefix("[").removesuffix("]"), int(port)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _listen_address(value: str) -> dict[str, Any]:
    """A socket address Envoy binds (must be an IP; ``localhost`` is taken as 127.0.0.1)."""
    host, port = _split_host_port(value)
    if host == "localhost":
        host = "127.0.0.1"
    if not _is_ip(host):
        raise ValueError(f"envoy.listen must be an IP address and port, got {value!r}")
    return {"socket_address": {"address": host, "port_value": port}}


def _connect_address(value: str) -> tuple[str, int]:
    """A host:port to connect to; a wildcard bind address means this host's loopback."""
    host, port = _split_host_port(value)
    wildcard = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}
    return wildcard.get(host, host), port


def _duration(milliseconds: int) -> str:
    return f"{milliseconds / 1000:g}s"


# ---------------------------------------------------------------- clusters


def cluster(name: str, address: str, *, http2: bool = False) -> dict[str, Any]:
    """One upstream cluster: STATIC for an IP, STRICT_DNS for a host name; HTTP/2 for gRPC."""
    host, port = _connect_address(address)
    ip = _is_ip(host)
    result: dict[str, Any] = {
        "name": name,
        "type": "STATIC" if ip else "STRICT_DNS",
        "connect_timeout": "1s",
    }
    if not ip:
        result["dns_lookup_family"] = "V4_PREFERRED"
    options: dict[str, Any] = {"@type": _HTTP_OPTIONS_TYPE}
    if http2:
        options["explicit_http_config"] = {"http2_protocol_options": {}}
    else:
        options["common_http_protocol_options"] = {"idle_timeout": CONNECTION_IDLE_TIMEOUT}
        options["explicit_http_config"] = {"http_protocol_options": {}}
    result["typed_extension_protocol_options"] = {_HTTP_OPTIONS_KEY: options}
    result["load_assignment"] = {
        "cluster_name": name,
        "endpoints": [
            {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}]}
        ],
    }
    return result


def upstream_cluster_name(server: Server) -> str:
    return f"mcp_server_{server.name}"


# ---------------------------------------------------------------- routes


def _ext_authz_per_route(settings: dict[str, Any] | None) -> dict[str, Any]:
    """``typed_per_filter_config`` for ext_authz: ``None`` disables the Check on the route."""
    per_route: dict[str, Any] = {"@type": _EXT_AUTHZ_PER_ROUTE_TYPE}
    if settings is None:
        per_route["disabled"] = True
    else:
        per_route["check_settings"] = settings
    return {EXT_AUTHZ: per_route}


def _path_matches(path: str) -> list[dict[str, str]]:
    """``<path>`` exactly and everything under ``<path>/`` (Envoy matches without the query string)."""
    base = path.rstrip("/")
    if not base:
        return [{"prefix": "/"}]
    return [{"path": base}, {"prefix": base + "/"}]


def server_routes(server: Server, *, http_authorizer: bool = False) -> list[dict[str, Any]]:
    """The routes of one MCP server: header-only ones first (if enabled), then the body-checked ones.

    With the HTTP authorizer, each route also carries ``metadata.filter_metadata.mcp_authz.server``:
    context extensions travel over gRPC only, so the filter copies this metadata into the
    ``x-mcp-authz-server`` header of the authorization request (see ``http_ext_authz_filter``).
    """
    context = {"context_extensions": {CONTEXT_EXTENSION: server.name}}
    metadata = {"metadata": {"filter_metadata": {ROUTE_METADATA_NAMESPACE: {"server": server.name}}}}
    extra = metadata if http_authorizer else {}
    action = {
        "cluster": upstream_cluster_name(server),
        "timeout": "0s",  # responses may be SSE streams: no overall limit
        "idle_timeout": MCP_IDLE_TIMEOUT,
    }
    routes: list[dict[str, Any]] = []
    if server.header_only:
        headers = [
            {"name": "mcp-protocol-version", "string_match": {"exact": STATELESS_REVISION}},
            {"name": "mcp-method", "present_match": True},
        ]
        for match in _path_matches(server.path):
            routes.append(
                {
                    "name": f"{server.name}/header-only",
                    "match": {**match, "headers": headers},
                    **extra,
                    "route": action,
                    "typed_per_filter_config": _ext_authz_per_route(
                        {**context, "disable_request_body_buffering": True}
                    ),
                }
            )
    for match in _path_matches(server.path):
        routes.append(
            {
                "name": server.name,
                "match": match,
                **extra,
                "route": action,
                "typed_per_filter_config": _ext_authz_per_route(context),
            }
        )
    return routes


def discovery_routes() -> list[dict[str, Any]]:
    """Discovery documents and dev JWKS: public, never checked."""
    return [
        {
            "name": f"discovery{prefix.rstrip('/')}",
            "match": {"prefix": prefix},
            "route": {"cluster": DISCOVERY_CLUSTER, "timeout": "10s"},
            "typed_per_filter_config": _ext_authz_per_route(None),
        }
        for prefix in DISCOVERY_PREFIXES
    ]


def not_found_route() -> dict[str, Any]:
    """Paths that are no MCP server: 404 from Envoy, without asking the authorizer."""
    return {
        "name": "not-found",
        "match": {"prefix": "/"},
        "direct_response": {"status": 404},
        "typed_per_filter_config": _ext_authz_per_route(None),
    }


def route_config(config: Config, *, with_discovery: bool) -> dict[str, Any]:
    # Longest path first, so a server at "/" never shadows one at "/a".
    servers = sorted(config.servers.values(), key=lambda s: -len(s.path.rstrip("/")))
    routes = discovery_routes() if with_discovery else []
    http_authorizer = config.spec.envoy.authorizer == "http"
    for server in servers:
        routes.extend(server_routes(server, http_authorizer=http_authorizer))
    routes.append(not_found_route())
    return {
        "name": "mcp",
        "virtual_hosts": [{"name": "mcp", "domains": ["*"], "routes": routes}],
    }


# ---------------------------------------------------------------- filters and listener


def _exact(names: list[str]) -> dict[str, Any]:
    return {"patterns": [{"exact": name} for name in names]}


def proxy_headers(config: Config) -> list[str]:
    """The trusted proxies' identity headers (and Cloudflare's assertion), which the authorizer must read.

    The source address and mTLS peer come from the Envoy-set ``x-mcp-authz-*`` headers, never from a
    client-settable ``x-forwarded-for``; passthrough headers need no Check (they are removed upstream
    through ``x-envoy-auth-headers-to-remove`` unless the caller is proxy-identified).
    """
    names = {h for s in config.servers.values() if s.proxy is not None for h in s.proxy.headers}
    return sorted(names - set(HTTP_ALLOWED_HEADERS))


def http_ext_authz_filter(config: Config, authorizer: str) -> dict[str, Any]:
    """ext_authz over HTTP/1.1 (``http_service``) to ``authz.httpfront`` at ``authorizer`` (host:port).

    The contract is the docstring of ``authz.httpfront``: which request headers go to the
    authorizer (``allowed_headers``; never an ``x-mcp-authz-*`` one), the Envoy-set
    ``x-mcp-authz-*`` headers naming the server and the peer, the identity headers taken
    upstream on allow (``allowed_upstream_headers``; the authorizer removes ``authorization``
    with ``x-envoy-auth-headers-to-remove``), the headers given to the client on deny.
    Body, timeout and failure settings are those of the gRPC filter.
    """
    envoy = config.spec.envoy
    host, port = _connect_address(authorizer)
    identity = sorted({name for server in config.servers.values() for _, name in server.identity_headers})
    identity += sorted({h for s in config.servers.values() for h in s.injected_headers} - set(identity))
    return {
        "name": EXT_AUTHZ,
        "typed_config": {
            "@type": _EXT_AUTHZ_TYPE,
            "http_service": {
                "server_uri": {
                    "uri": f"http://{f'[{host}]' if ':' in host else host}:{port}",
                    "cluster": AUTHZ_CLUSTER,
                    "timeout": _duration(envoy.timeout_ms),
                },
                "authorization_request": {
                    "headers_to_add": [{"key": key, "value": value} for key, value in HTTP_CONTEXT_HEADERS]
                },
                "authorization_response": {
                    "allowed_upstream_headers": _exact(identity),
                    "allowed_client_headers": _exact(list(HTTP_CLIENT_HEADERS)),
                },
            },
            "allowed_headers": _exact(list(HTTP_ALLOWED_HEADERS) + proxy_headers(config)),
            "transport_api_version": "V3",
            "failure_mode_allow": False,
            "status_on_error": {"code": "ServiceUnavailable"},  # unreachable or 5xx: deny with 503
            "with_request_body": {
                "max_request_bytes": envoy.max_request_bytes,
                "allow_partial_message": False,
                "pack_as_bytes": True,
            },
        },
    }


def ext_authz_filter(config: Config) -> dict[str, Any]:
    envoy = config.spec.envoy
    return {
        "name": EXT_AUTHZ,
        "typed_config": {
            "@type": _EXT_AUTHZ_TYPE,
            "grpc_service": {"envoy_grpc": {"cluster_name": AUTHZ_CLUSTER}, "timeout": _duration(envoy.timeout_ms)},
            "transport_api_version": "V3",
            "failure_mode_allow": False,
            "status_on_error": {"code": "ServiceUnavailable"},  # authorizer unreachable: deny with 503
            "with_request_body": {
                "max_request_bytes": envoy.max_request_bytes,
                "allow_partial_message": False,  # larger bodies get 413 before any Check
                "pack_as_bytes": True,
            },
            "include_peer_certificate": True,
            # Headers as a list in attributes.request.http.header_map, one entry per header line:
            # a header sent twice (two Mcp-Name) reaches the authorizer as two values, not joined.
            "encode_raw_headers": True,
        },
    }


def router_filter() -> dict[str, Any]:
    return {"name": "envoy.filters.http.router", "typed_config": {"@type": _ROUTER_TYPE}}


def http_connection_manager(routes: dict[str, Any], filters: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": _HCM_TYPE,
            "stat_prefix": "mcp",
            "codec_type": "AUTO",
            "use_remote_address": True,
            "normalize_path": True,
            "merge_slashes": True,
            "path_with_escaped_slashes_action": "UNESCAPE_AND_REDIRECT",
            "stream_idle_timeout": STREAM_IDLE_TIMEOUT,
            "request_timeout": "0s",  # long POSTs answered with SSE
            "request_headers_timeout": REQUEST_HEADERS_TIMEOUT,
            "common_http_protocol_options": {
                "idle_timeout": CONNECTION_IDLE_TIMEOUT,
                # x_mcp_subject would reach some frameworks as x-mcp-subject: drop such headers.
                "headers_with_underscores_action": "DROP_HEADER",
            },
            "route_config": routes,
            "http_filters": filters,
        },
    }


def listener(address: str, manager: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "mcp",
        "address": _listen_address(address),
        "filter_chains": [{"filters": [manager]}],
    }


# ---------------------------------------------------------------- bootstrap


def overload_manager() -> dict[str, Any]:
    """A bound on open client connections (Envoy warns at start-up without one)."""
    return {
        "resource_monitors": [
            {
                "name": _CONNECTIONS_MONITOR,
                "typed_config": {
                    "@type": _CONNECTIONS_MONITOR_TYPE,
                    "max_active_downstream_connections": MAX_DOWNSTREAM_CONNECTIONS,
                },
            }
        ]
    }


def render_envoy(config: Config, *, authorizer: str | None = None, discovery: str | None = None) -> dict[str, Any]:
    """The Envoy bootstrap for ``config``.

    ``authorizer`` and ``discovery`` (host:port) default to ``config.listen.grpc`` (``listen.http``
    with ``envoy.authorizer: http``) and ``config.listen.discovery``; with no discovery address,
    the discovery routes are left out.
    """
    http_authorizer = config.spec.envoy.authorizer == "http"
    authorizer = authorizer or (config.listen.http if http_authorizer else config.listen.grpc)
    discovery = discovery if discovery is not None else config.listen.discovery
    envoy = config.spec.envoy
    routes = route_config(config, with_discovery=bool(discovery))
    authz = http_ext_authz_filter(config, authorizer) if http_authorizer else ext_authz_filter(config)
    manager = http_connection_manager(routes, [authz, router_filter()])
    clusters = [cluster(AUTHZ_CLUSTER, authorizer, http2=not http_authorizer)]
    if discovery:
        clusters.append(cluster(DISCOVERY_CLUSTER, discovery))
    clusters.extend(cluster(upstream_cluster_name(s), s.upstream) for s in config.servers.values())
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": envoy.admin_port}}},
        "static_resources": {"listeners": [listener(envoy.listen, manager)], "clusters": clusters},
        "overload_manager": overload_manager(),
    }


class _Dumper(yaml.SafeDumper):
    """Safe YAML without anchors: routes share dicts, the file should still read plainly."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render_envoy_yaml(config: Config, *, authorizer: str | None = None, discovery: str | None = None) -> str:
    """``render_envoy`` as YAML, with a header naming the source; same input, same bytes."""
    source = config.source or "<config>"
    header = (
        f"# Envoy bootstrap generated by mcp-authz from {source}. Do not edit by hand.\n"
        f"# Regenerate: mcp-authz render envoy -c {source} -o <this file>\n"
    )
    body = yaml.dump(
        render_envoy(config, authorizer=authorizer, discovery=discovery),
        Dumper=_Dumper,
        sort_keys=False,
        default_flow_style=False,
        width=120,
        allow_unicode=True,
    )
    return header + body
