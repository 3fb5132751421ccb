"""A standalone Envoy v3 bootstrap (static resources) for the authorizer's config.

The chain, for each request on ``config.envoy.listen``:

1. ``/.well-known/*`` and ``/jwks/*`` go to the discovery service with ext_authz disabled
   (RFC 9728 / RFC 8414 documents and the dev issuer's JWKS must be readable without a token).
2. A request for an MCP server's path (``<path>`` exactly, or under ``<path>/``) is checked by
   ``envoy.filters.http.ext_authz`` over gRPC, the body included up to ``envoy.max_request_bytes``.
   Each route names its server in the per-route context extension ``mcp_server``: that is how the
   authorizer learns which server (resource, policy) a Check is for. With ``envoy.authorizer: http``
   the filter uses ``http_service`` instead (the fast path, ``authz.front.http_service``), and the server's
   name travels from route metadata in the ``x-mcp-authz-server`` header.
3. For ``header_only`` servers, a 2026-07-28 request carrying ``Mcp-Method`` matches an earlier
   route that turns body buffering off: the decision is made on the routing headers, which such
   upstreams must validate against the body themselves.
4. Anything else gets a 404 from Envoy without a Check.
5. With a ``filter_lists`` server, ``envoy.filters.http.ext_proc`` follows ext_authz (cluster
   ``mcp_extproc``, the authorizer's gRPC address) and filters list responses
   (``authz.extproc``); the Check's dynamic metadata reaches it through
   ``metadata_options.forwarding_namespaces``. It is disabled per route everywhere else
   (discovery, 404, servers without ``filter_lists``), and on an earlier route for requests whose
   ``Mcp-Method`` header names no list method (``<server>/no-list``). Fail closed (``ext_proc.failure``): an
   unreachable or slow processor gets a 503 whose body a local reply mapper turns into a JSON-RPC
   error carrying the request's id (from the metadata).

Fail closed: ``failure_mode_allow: false`` and ``status_on_error: 503`` (an unreachable
authorizer denies). Upstream responses may be long SSE streams: routes have no overall timeout,
only an idle timeout.

The config is built from the typed ``envoy-data-plane`` classes (pydantic dataclasses of Envoy's
API: an unknown field, a wrong type or an out-of-range value fails at render time), one helper per
piece and one function per HTTP filter (``http_filters`` lists them in order). ``render_envoy``
gives its proto3 JSON form with proto field names, the fail-closed defaults spelled out;
``render_envoy_yaml`` byte-stable YAML.
"""

from __future__ import annotations

import ipaddress
import re
from copy import deepcopy
from datetime import timedelta
from typing import Any

import betterproto2
import yaml
from envoy_data_plane.envoy.config.accesslog.v3 import AccessLog, AccessLogFilter, ExtensionFilter
from envoy_data_plane.envoy.config.bootstrap.v3 import Admin, Bootstrap, BootstrapStaticResources
from envoy_data_plane.envoy.config.cluster.v3 import Cluster, ClusterDiscoveryType, ClusterDnsLookupFamily
from envoy_data_plane.envoy.config.common.mutation_rules.v3 import HeaderMutation as MutationRule
from envoy_data_plane.envoy.config.common.mutation_rules.v3 import HeaderMutationRemoveOnMatch
from envoy_data_plane.envoy.config.core.v3 import (
    Address,
    ApiVersion,
    GrpcService,
    GrpcServiceEnvoyGrpc,
    HeaderValue,
    Http1ProtocolOptions,
    Http2ProtocolOptions,
    HttpProtocolOptions,
    HttpProtocolOptionsHeadersWithUnderscoresAction,
    HttpUri,
    Metadata,
    SocketAddress,
    SubstitutionFormatString,
)
from envoy_data_plane.envoy.config.endpoint.v3 import ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints
from envoy_data_plane.envoy.config.listener.v3 import Filter, FilterChain, Listener
from envoy_data_plane.envoy.config.overload.v3 import OverloadManager, ResourceMonitor
from envoy_data_plane.envoy.config.route.v3 import (
    DirectResponseAction,
    HeaderMatcher,
    Route,
    RouteAction,
    RouteConfiguration,
    RouteMatch,
    VirtualHost,
)
from envoy_data_plane.envoy.extensions.access_loggers.filters.cel.v3 import ExpressionFilter
from envoy_data_plane.envoy.extensions.access_loggers.stream.v3 import StdoutAccessLog
from envoy_data_plane.envoy.extensions.filters.http.cors.v3 import Cors, CorsPolicy
from envoy_data_plane.envoy.extensions.filters.http.ext_authz.v3 import (
    AuthorizationRequest,
    AuthorizationResponse,
    BufferSettings,
    CheckSettings,
    ExtAuthz,
    ExtAuthzPerRoute,
    HttpService,
)
from envoy_data_plane.envoy.extensions.filters.http.ext_proc.v3 import (
    ExternalProcessor,
    ExtProcPerRoute,
    MetadataOptions,
    MetadataOptionsMetadataNamespaces,
    ProcessingMode,
    ProcessingModeBodySendMode,
    ProcessingModeHeaderSendMode,
)
from envoy_data_plane.envoy.extensions.filters.http.header_mutation.v3 import HeaderMutation as HeaderMutationFilter
from envoy_data_plane.envoy.extensions.filters.http.header_mutation.v3 import Mutations as HeaderMutations
from envoy_data_plane.envoy.extensions.filters.http.router.v3 import Router
from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3 import (
    HttpConnectionManager,
    HttpConnectionManagerCodecType,
    HttpConnectionManagerPathWithEscapedSlashesAction,
    HttpFilter,
    LocalReplyConfig,
    ResponseMapper,
)
from envoy_data_plane.envoy.extensions.resource_monitors.downstream_connections.v3 import (
    DownstreamConnectionsConfig,
)
from envoy_data_plane.envoy.extensions.upstreams.http.v3 import (
    HttpProtocolOptions as UpstreamHttpProtocolOptions,
)
from envoy_data_plane.envoy.extensions.upstreams.http.v3 import HttpProtocolOptionsExplicitHttpConfig
from envoy_data_plane.envoy.type.matcher.v3 import ListStringMatcher, StringMatcher
from envoy_data_plane.envoy.type.v3 import HttpStatus, StatusCode
from envoy_data_plane.google.protobuf import Any as AnyMessage
from envoy_data_plane.google.protobuf import Struct

from authz import contract
from authz.config.runtime import Config, HostPort, Server

AUTHZ_CLUSTER = "mcp_authz"
DISCOVERY_CLUSTER = "mcp_discovery"
EXT_AUTHZ = "envoy.filters.http.ext_authz"
ROUTER = "envoy.filters.http.router"
EXT_PROC = "envoy.filters.http.ext_proc"
CORS = "envoy.filters.http.cors"
HEADER_MUTATION = "envoy.filters.http.header_mutation"
# CORS for browser MCP clients, on the routes of servers with `origins`: what they send and may read.
CORS_ALLOW_HEADERS = (
    "authorization, content-type, accept, last-event-id, mcp-protocol-version, mcp-session-id, mcp-method, mcp-name"
)
CORS_EXPOSE_HEADERS = "mcp-session-id, www-authenticate, retry-after"
EXTPROC_CLUSTER = "mcp_extproc"  # the list filter: the authorizer's gRPC address unless pointed elsewhere
STATELESS_REVISION = "2026-07-28"  # requests of this revision mirror the JSON-RPC method in headers
DISCOVERY_PREFIXES = ("/.well-known/", "/jwks/")

# HTTP ext_authz (envoy.authorizer: http): the contract with authz.front.http_service.
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
    (
        contract.SERVER_HEADER,
        f"%METADATA(ROUTE:{contract.ROUTE_METADATA_NAMESPACE}:{contract.ROUTE_METADATA_SERVER})%",
    ),
    (contract.SOURCE_HEADER, "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"),
    (contract.PEER_URI_SAN_HEADER, "%DOWNSTREAM_PEER_URI_SAN%"),
    (contract.PEER_DNS_SAN_HEADER, "%DOWNSTREAM_PEER_DNS_SAN%"),
    (contract.PEER_SUBJECT_HEADER, "%DOWNSTREAM_PEER_SUBJECT%"),
)
HTTP_CLIENT_HEADERS = ("content-type", "www-authenticate", "retry-after")  # on deny, with status and body
# listen.http_shared_secret: Envoy reads it from its environment, so the rendered file never holds it.
SHARED_SECRET_VALUE = f"%ENVIRONMENT({contract.SHARED_SECRET_ENV})%"

# The access log of every rendered Envoy (standalone, Kubernetes, Istio's sidecars through
# ``authz.render.istio.access_log_providers``): one JSON object per request on stdout. The ext_authz outcome
# is in ``response_code_details`` (``ext_authz_denied``: the Check refused; ``ext_authz_error``: the authorizer
# failed or was unreachable, fail closed) and ``response_flags`` (``UAEX``). Never a credential: no
# Authorization or Cookie header, the path without its query string (a token sent there stays out).
ACCESS_LOG_STDOUT = "envoy.access_loggers.stdout"
ACCESS_LOG_FORMAT: dict[str, str] = {
    "start_time": "%START_TIME%",
    "mcp_server": f"%METADATA(ROUTE:{contract.ROUTE_METADATA_NAMESPACE}:{contract.ROUTE_METADATA_SERVER})%",
    "method": "%REQ(:METHOD)%",
    "path": "%PATH(NQ)%",
    "protocol": "%PROTOCOL%",
    "mcp_method": "%REQ(MCP-METHOD)%",
    "mcp_name": "%REQ(MCP-NAME)%",
    "mcp_protocol_version": "%REQ(MCP-PROTOCOL-VERSION)%",
    "response_code": "%RESPONSE_CODE%",
    "response_flags": "%RESPONSE_FLAGS%",
    "response_code_details": "%RESPONSE_CODE_DETAILS%",
    "duration_ms": "%DURATION%",
    "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%",
    "upstream_host": "%UPSTREAM_HOST%",
    "downstream_address": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "traceparent": "%REQ(TRACEPARENT)%",
    "user_agent": "%REQ(USER-AGENT)%",
}

_HTTP_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_CONNECTIONS_MONITOR = "envoy.resource_monitors.global_downstream_max_connections"

STREAM_IDLE_TIMEOUT = timedelta(seconds=300)  # HCM default for routes that set none (discovery, 404)
MCP_IDLE_TIMEOUT = timedelta(seconds=3600)  # an SSE stream may stay quiet this long before Envoy resets it
CONNECTION_IDLE_TIMEOUT = timedelta(seconds=3600)
REQUEST_HEADERS_TIMEOUT = timedelta(seconds=10)  # slow-header clients
NO_TIMEOUT = timedelta(0)  # Envoy: 0s disables the timeout
MAX_DOWNSTREAM_CONNECTIONS = 50_000


# ---------------------------------------------------------------- addresses


def _split_host_port(value: str | HostPort) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` → (host, port)."""
    address = HostPort.of(value)
    return address.host, address.port


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _socket(host: str, port: int) -> Address:
    return Address(socket_address=SocketAddress(address=host, port_value=port))


def _listen_address(value: str | HostPort) -> Address:
    """A socket address Envoy binds (must be an IP; ``localhost`` is taken as 127.0.0.1)."""
    host, port = _split_host_port(value)
    if host == "localhost":
        host = "127.0.0.1"
    if not _is_ip(host):
        raise ValueError(f"envoy.listen must be an IP address and port, got {str(value)!r}")
    return _socket(host, port)


def _connect_address(value: str | HostPort) -> tuple[str, int]:
    """A host:port to connect to; a wildcard bind address means this host's loopback."""
    host, port = _split_host_port(value)
    wildcard = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}
    return wildcard.get(host, host), port


def _milliseconds(value: int) -> timedelta:
    return timedelta(milliseconds=value)


# ---------------------------------------------------------------- clusters


def cluster(name: str, address: str | HostPort, *, http2: bool = False) -> Cluster:
    """One upstream cluster: STATIC for an IP, STRICT_DNS for a host name; HTTP/2 for gRPC."""
    host, port = _connect_address(address)
    ip = _is_ip(host)
    if http2:
        options = UpstreamHttpProtocolOptions(
            explicit_http_config=HttpProtocolOptionsExplicitHttpConfig(http2_protocol_options=Http2ProtocolOptions())
        )
    else:
        options = UpstreamHttpProtocolOptions(
            common_http_protocol_options=HttpProtocolOptions(idle_timeout=CONNECTION_IDLE_TIMEOUT),
            explicit_http_config=HttpProtocolOptionsExplicitHttpConfig(http_protocol_options=Http1ProtocolOptions()),
        )
    return Cluster(
        name=name,
        type=ClusterDiscoveryType.STATIC if ip else ClusterDiscoveryType.STRICT_DNS,
        connect_timeout=timedelta(seconds=1),
        dns_lookup_family=ClusterDnsLookupFamily.AUTO if ip else ClusterDnsLookupFamily.V4_PREFERRED,
        typed_extension_protocol_options={_HTTP_OPTIONS_KEY: AnyMessage.pack(options)},
        load_assignment=ClusterLoadAssignment(
            cluster_name=name,
            endpoints=[LocalityLbEndpoints(lb_endpoints=[LbEndpoint(endpoint=Endpoint(address=_socket(host, port)))])],
        ),
    )


def upstream_cluster_name(server: Server) -> str:
    return f"mcp_server_{server.name}"


# ---------------------------------------------------------------- routes


def _ext_authz_per_route(settings: CheckSettings | None) -> dict[str, AnyMessage]:
    """``typed_per_filter_config`` for ext_authz: ``None`` disables the Check on the route."""
    per_route = ExtAuthzPerRoute(disabled=True) if settings is None else ExtAuthzPerRoute(check_settings=settings)
    return {EXT_AUTHZ: AnyMessage.pack(per_route)}


def _cors_per_route(server: Server) -> dict[str, AnyMessage]:
    """``typed_per_filter_config`` for the CORS filter: the server's ``origins`` may call it from a browser.

    Envoy answers their preflights itself (before ext_authz: a preflight carries no token); a preflight
    from another origin is answered without CORS headers and never reaches the authorizer. The Check
    still refuses a request whose ``Origin`` is not listed.
    """
    if not server.origins:
        return {}
    policy = CorsPolicy(
        allow_origin_string_match=[StringMatcher(exact=origin) for origin in sorted(server.origins)],
        allow_methods="GET, POST, DELETE, OPTIONS",  # the same lists in Istio: authz.render.istio.cors_policy
        allow_headers=", ".join(cors_allow_headers(server)),
        expose_headers=CORS_EXPOSE_HEADERS,
        max_age="86400",
        forward_not_matching_preflights=False,
    )
    return {CORS: AnyMessage.pack(policy)}


def _path_matches(path: str, headers: list[HeaderMatcher] | None = None) -> list[RouteMatch]:
    """``<path>`` exactly and everything under ``<path>/`` (Envoy matches without the query string)."""
    base = path.rstrip("/")
    if not base:
        return [RouteMatch(prefix="/", headers=headers or [])]
    return [RouteMatch(path=base, headers=headers or []), RouteMatch(prefix=base + "/", headers=headers or [])]


def server_routes(server: Server, *, http_authorizer: bool = False) -> list[Route]:
    """The routes of one MCP server: header-only ones first (if enabled), then the body-checked ones.

    Each route also carries ``metadata.filter_metadata.mcp_authz.server``: the access log names the server
    from it, and with the HTTP authorizer (context extensions travel over gRPC only) the filter copies it
    into the ``x-mcp-authz-server`` header of the authorization request (see ``http_ext_authz_filter``).
    """
    context = {contract.SERVER_CONTEXT_KEY: server.name}
    metadata = Metadata(
        filter_metadata={
            contract.ROUTE_METADATA_NAMESPACE: Struct.from_dict({contract.ROUTE_METADATA_SERVER: server.name})
        }
    )
    action = RouteAction(
        cluster=upstream_cluster_name(server),
        timeout=NO_TIMEOUT,  # responses may be SSE streams: no overall limit
        idle_timeout=MCP_IDLE_TIMEOUT,
    )
    routes: list[Route] = []
    if server.header_only:
        headers = [
            HeaderMatcher(name="mcp-protocol-version", string_match=StringMatcher(exact=STATELESS_REVISION)),
            HeaderMatcher(name="mcp-method", present_match=True),
        ]
        settings = CheckSettings(context_extensions=context, disable_request_body_buffering=True)
        routes.extend(
            Route(
                name=f"{server.name}/header-only",
                match=match,
                metadata=metadata,
                route=action,
                typed_per_filter_config={**_ext_authz_per_route(settings), **_cors_per_route(server)},
            )
            for match in _path_matches(server.path, headers)
        )
    routes.extend(
        Route(
            name=server.name,
            match=match,
            metadata=metadata,
            route=action,
            typed_per_filter_config={
                **_ext_authz_per_route(CheckSettings(context_extensions=context)),
                **_cors_per_route(server),
            },
        )
        for match in _path_matches(server.path)
    )
    return routes


def discovery_routes() -> list[Route]:
    """Discovery documents and dev JWKS: public, never checked."""
    return [
        Route(
            name=f"discovery{prefix.rstrip('/')}",
            match=RouteMatch(prefix=prefix),
            route=RouteAction(cluster=DISCOVERY_CLUSTER, timeout=timedelta(seconds=10)),
            typed_per_filter_config=_ext_authz_per_route(None),
        )
        for prefix in DISCOVERY_PREFIXES
    ]


def not_found_route() -> Route:
    """Paths that are no MCP server: 404 from Envoy, without asking the authorizer."""
    return Route(
        name="not-found",
        match=RouteMatch(prefix="/"),
        direct_response=DirectResponseAction(status=404),
        typed_per_filter_config=_ext_authz_per_route(None),
    )


def filters_lists(config: Config) -> bool:
    """Whether the chain has the list filter (ext_proc): some server has ``filter_lists``."""
    return any(s.filter_lists for s in config.servers.values())


def _without_extproc(routes: list[Route]) -> list[Route]:
    """ext_proc disabled on these routes (no list response can come from them)."""
    off = AnyMessage.pack(ExtProcPerRoute(disabled=True))
    for route in routes:
        route.typed_per_filter_config = {**route.typed_per_filter_config, EXT_PROC: off}
    return routes


def _copies(routes: list[Route], suffix: str, headers: list[HeaderMatcher]) -> list[Route]:
    copies = []
    for route in routes:
        copy = deepcopy(route)
        copy.name = f"{route.name}/{suffix}"
        if copy.match is not None:
            copy.match.headers = [*copy.match.headers, *headers]
            copies.append(copy)
    return _without_extproc(copies)


def _unless_listing(server: Server, routes: list[Route]) -> list[Route]:
    """A filter_lists server's routes, preceded by copies with ext_proc disabled for requests that
    cannot be answered with a list:

    - ``<route>/no-list``: ``Mcp-Method`` names no list method (picked before the Check; the Check
      holds that header to the body, or, header-only, the upstream does);
    - ``<route>/checked-no-list``: the Check found no list request and said so in
      ``x-mcp-authz-list: 0`` (it overwrites any client copy; ext_authz ``clear_route_cache`` makes
      Envoy pick the route again): clients that send no ``Mcp-Method`` (session-based revisions).

    The header never reaches the MCP server.
    """
    not_a_list = [
        HeaderMatcher(name="mcp-method", present_match=True),
        HeaderMatcher(name="mcp-method", string_match=StringMatcher(suffix="/list"), invert_match=True),
    ]
    checked = [HeaderMatcher(name=contract.LIST_ROUTE_HEADER, string_match=StringMatcher(exact="0"))]
    shadowed = [r for r in routes if r.name.endswith("/header-only")] if server.header_only else routes
    result = _copies(shadowed, "no-list", not_a_list) + _copies(routes, "checked-no-list", checked) + routes
    for route in result:
        route.request_headers_to_remove = [*route.request_headers_to_remove, contract.LIST_ROUTE_HEADER]
    return result


def route_config(config: Config, *, with_discovery: bool) -> RouteConfiguration:
    # Longest path first, so a server at "/" never shadows one at "/a".
    servers = sorted(config.servers.values(), key=lambda s: -len(s.path.rstrip("/")))
    lists = filters_lists(config)
    routes = discovery_routes() if with_discovery else []
    if lists:
        _without_extproc(routes)
    http_authorizer = config.envoy.authorizer == "http"
    for server in servers:
        own = server_routes(server, http_authorizer=http_authorizer)
        if lists:
            own = _unless_listing(server, own) if server.filter_lists else _without_extproc(own)
        routes.extend(own)
    routes.extend(_without_extproc([not_found_route()]) if lists else [not_found_route()])
    return RouteConfiguration(name="mcp", virtual_hosts=[VirtualHost(name="mcp", domains=["*"], routes=routes)])


# ---------------------------------------------------------------- HTTP filters, one function each


def _exact(names: list[str]) -> ListStringMatcher:
    return ListStringMatcher(patterns=[StringMatcher(exact=name) for name in names])


def proxy_headers(config: Config) -> list[str]:
    """The trusted proxies' identity headers (and Cloudflare's assertion), which the authorizer must read.

    The source address and mTLS peer come from the Envoy-set ``x-mcp-authz-*`` headers, never from a
    client-settable ``x-forwarded-for``; passthrough headers need no Check (they are removed upstream
    through ``x-envoy-auth-headers-to-remove`` unless the caller is proxy-identified).
    """
    names = {h for s in config.servers.values() if s.proxy is not None for h in s.proxy.headers}
    return sorted(names - set(HTTP_ALLOWED_HEADERS))


def param_headers(*servers: Server) -> list[str]:
    """The declared MCP 2026-07-28 ``Mcp-Param-*`` headers (``servers[].param_headers``), lower-case, sorted:
    the Check compares them with the body; undeclared ones travel upstream unread."""
    return sorted({p.header for s in servers for declared in s.param_headers.values() for p in declared})


def http_request_headers(config: Config) -> list[str]:
    """HTTP ext_authz: the client request headers sent to the authorizer (Envoy ``allowed_headers``,
    Istio ``includeRequestHeadersInCheck``)."""
    return list(HTTP_ALLOWED_HEADERS) + param_headers(*config.servers.values()) + proxy_headers(config)


def cors_allow_headers(server: Server) -> list[str]:
    """What the server's ``origins`` may send from a browser: the MCP headers and its declared ``Mcp-Param-*``."""
    return [h.strip() for h in CORS_ALLOW_HEADERS.split(",")] + param_headers(server)


def http_upstream_headers(config: Config) -> list[str]:
    """HTTP ext_authz: the authorizer's headers set on the upstream request on allow (Envoy
    ``allowed_upstream_headers``, Istio ``headersToUpstreamOnAllow``): identity, then injected headers."""
    identity = sorted({name for server in config.servers.values() for name in server.identity_headers.names})
    identity += sorted({h for s in config.servers.values() for h in s.injected_headers} - set(identity))
    return identity


def _body(config: Config) -> BufferSettings:
    """The JSON-RPC body goes to the Check up to the bound; a larger one gets 413 before any Check."""
    return BufferSettings(
        max_request_bytes=config.envoy.max_request_bytes,
        allow_partial_message=False,
        pack_as_bytes=True,  # byte-exact JSON
    )


def _deny_on_error() -> HttpStatus:
    return HttpStatus(code=StatusCode.ServiceUnavailable)  # authorizer unreachable, slow or 5xx: deny with 503


def http_ext_authz_filter(config: Config, authorizer: str | HostPort) -> HttpFilter:
    """ext_authz over HTTP/1.1 (``http_service``) to ``authz.front.http_service`` at ``authorizer`` (host:port).

    The contract is the docstring of ``authz.front.http_service``: which request headers go to the
    authorizer (``allowed_headers``; never an ``x-mcp-authz-*`` one), the Envoy-set
    ``x-mcp-authz-*`` headers naming the server and the peer, the identity headers taken
    upstream on allow (``allowed_upstream_headers``; the authorizer removes ``authorization``
    with ``x-envoy-auth-headers-to-remove``), the headers given to the client on deny.
    Body, timeout and failure settings are those of the gRPC filter.
    """
    host, port = _connect_address(authorizer)
    authz = ExtAuthz(
        http_service=HttpService(
            server_uri=HttpUri(
                uri=f"http://{f'[{host}]' if ':' in host else host}:{port}",
                cluster=AUTHZ_CLUSTER,
                timeout=_milliseconds(config.envoy.timeout_ms),
            ),
            authorization_request=AuthorizationRequest(
                headers_to_add=[HeaderValue(key=key, value=value) for key, value in http_context_headers(config)]
            ),
            authorization_response=AuthorizationResponse(
                allowed_upstream_headers=_exact(http_upstream_headers(config)),
                allowed_client_headers=_exact(list(HTTP_CLIENT_HEADERS)),
            ),
        ),
        allowed_headers=_exact(http_request_headers(config)),
        transport_api_version=ApiVersion.V3,
        failure_mode_allow=False,
        status_on_error=_deny_on_error(),
        with_request_body=_body(config),
    )
    return HttpFilter(name=EXT_AUTHZ, typed_config=AnyMessage.pack(authz))


def http_context_headers(config: Config) -> list[tuple[str, str]]:
    """The headers Envoy sets on each HTTP authorization request: the server, the peer, and with
    ``listen.http_shared_secret`` the secret, from Envoy's environment (``$MCP_AUTHZ_HTTP_SHARED_SECRET``)."""
    headers = list(HTTP_CONTEXT_HEADERS)
    if config.listen.http_shared_secret is not None:
        headers.append((contract.SHARED_SECRET_HEADER, SHARED_SECRET_VALUE))
    return headers


def ext_authz_filter(config: Config) -> HttpFilter:
    """ext_authz over gRPC (``envoy.service.auth.v3``) to the ``mcp_authz`` cluster."""
    authz = ExtAuthz(
        grpc_service=GrpcService(
            envoy_grpc=GrpcServiceEnvoyGrpc(cluster_name=AUTHZ_CLUSTER),
            timeout=_milliseconds(config.envoy.timeout_ms),
        ),
        transport_api_version=ApiVersion.V3,
        failure_mode_allow=False,
        status_on_error=_deny_on_error(),
        with_request_body=_body(config),
        include_peer_certificate=True,
        # Headers as a list in attributes.request.http.header_map, one entry per header line:
        # a header sent twice (two Mcp-Name) reaches the authorizer as two values, not joined.
        encode_raw_headers=True,
        # The list filter: the route is picked again after the Check's x-mcp-authz-list header.
        clear_route_cache=filters_lists(config),
    )
    return HttpFilter(name=EXT_AUTHZ, typed_config=AnyMessage.pack(authz))


def ext_proc_filter(config: Config) -> HttpFilter:
    """The list filter (``authz.extproc``): request headers, then response headers and body on demand.

    The processor asks for the response headers and body (``mode_override``, hence
    ``allow_mode_override``) only for the answer to a list request; the Check's handover arrives with each message
    (``forwarding_namespaces``). Failure as ``ext_proc.failure`` says; ``message_timeout`` bounds
    every wait, so a stuck processor never hangs a request longer.
    """
    spec = config.ext_proc
    processor = ExternalProcessor(
        grpc_service=GrpcService(envoy_grpc=GrpcServiceEnvoyGrpc(cluster_name=EXTPROC_CLUSTER)),
        failure_mode_allow=spec.failure == "open",
        status_on_error=_deny_on_error(),
        message_timeout=_milliseconds(spec.message_timeout_ms),
        allow_mode_override=True,
        processing_mode=ProcessingMode(
            request_header_mode=ProcessingModeHeaderSendMode.SEND,
            # Response headers only when the processor asks (a list request): a local reply of an
            # earlier filter (a 401 challenge) never goes to the processor, so it works while it is down.
            response_header_mode=ProcessingModeHeaderSendMode.SKIP,
            request_body_mode=ProcessingModeBodySendMode.NONE,
            response_body_mode=ProcessingModeBodySendMode.NONE,
            request_trailer_mode=ProcessingModeHeaderSendMode.SKIP,
            response_trailer_mode=ProcessingModeHeaderSendMode.SKIP,
        ),
        metadata_options=MetadataOptions(
            forwarding_namespaces=MetadataOptionsMetadataNamespaces(untyped=[contract.HANDOVER_NAMESPACE])
        ),
    )
    return HttpFilter(name=EXT_PROC, typed_config=AnyMessage.pack(processor))


def extproc_local_reply() -> LocalReplyConfig:
    """Envoy's own answer when the list filter fails (unreachable, timeout): a JSON-RPC error
    carrying the request's id, taken from the Check's handover (``null`` for a batch)."""
    only_extproc = ExpressionFilter(expression="response.code_details.startsWith('ext_proc')")
    request_id = f"%DYNAMIC_METADATA({contract.HANDOVER_NAMESPACE}:{contract.HANDOVER_KEY}:{contract.HANDOVER_ID})%"
    body = {"jsonrpc": "2.0", "id": request_id, "error": {"code": -32603, "message": "list filtering unavailable"}}
    return LocalReplyConfig(
        mappers=[
            ResponseMapper(
                filter=AccessLogFilter(
                    extension_filter=ExtensionFilter(
                        name="envoy.access_loggers.extension_filters.cel", typed_config=AnyMessage.pack(only_extproc)
                    )
                ),
                body_format_override=SubstitutionFormatString(
                    json_format=Struct.from_dict(body), content_type="application/json"
                ),
            )
        ]
    )


def router_filter() -> HttpFilter:
    return HttpFilter(name=ROUTER, typed_config=AnyMessage.pack(Router()))


def http_filters(config: Config, authorizer: str | HostPort) -> list[HttpFilter]:
    """The HTTP filter chain in order; the router is last. Add a filter here with a function of its own."""
    http_authorizer = config.envoy.authorizer == "http"
    authz = http_ext_authz_filter(config, authorizer) if http_authorizer else ext_authz_filter(config)
    cors = [cors_filter()] if any(s.origins for s in config.servers.values()) else []  # before ext_authz
    extproc = [ext_proc_filter(config)] if filters_lists(config) else []  # after ext_authz: it needs the metadata
    return [*cors, authz, *extproc, strip_authorizer_headers_filter(), router_filter()]


def strip_authorizer_headers_filter() -> HttpFilter:
    """Removes every ``x-mcp-authz-*`` header before the request goes upstream: the names Envoy and the
    authorizer use between them mean nothing to the MCP server, and a client's own copies must not reach
    it (the HTTP authorizer never sees them, so it cannot name them in ``x-envoy-auth-headers-to-remove``).
    Last before the router, so the route chosen on ``x-mcp-authz-list`` is already fixed."""
    prefix = StringMatcher(prefix=contract.ENVOY_HEADER_PREFIX, ignore_case=True)
    remove = MutationRule(remove_on_match=HeaderMutationRemoveOnMatch(key_matcher=prefix))
    mutation = HeaderMutationFilter(mutations=HeaderMutations(request_mutations=[remove]))
    return HttpFilter(name=HEADER_MUTATION, typed_config=AnyMessage.pack(mutation))


def cors_filter() -> HttpFilter:
    """Envoy's CORS filter; the policy is per route (``_cors_per_route``), so other routes have none."""
    return HttpFilter(name=CORS, typed_config=AnyMessage.pack(Cors()))


# ---------------------------------------------------------------- listener


def access_log() -> AccessLog:
    """JSON to stdout, the fields of ``ACCESS_LOG_FORMAT``."""
    stdout = StdoutAccessLog(log_format=SubstitutionFormatString(json_format=Struct.from_dict(ACCESS_LOG_FORMAT)))
    return AccessLog(name=ACCESS_LOG_STDOUT, typed_config=AnyMessage.pack(stdout))


def http_connection_manager(
    routes: RouteConfiguration,
    filters: list[HttpFilter],
    local_reply: LocalReplyConfig | None = None,
    access_logs: list[AccessLog] | None = None,
) -> Filter:
    """The connection manager of the chain; ``access_logs`` default to ``access_log()``."""
    manager = HttpConnectionManager(
        stat_prefix="mcp",
        codec_type=HttpConnectionManagerCodecType.AUTO,
        use_remote_address=True,
        normalize_path=True,
        merge_slashes=True,
        path_with_escaped_slashes_action=HttpConnectionManagerPathWithEscapedSlashesAction.UNESCAPE_AND_REDIRECT,
        stream_idle_timeout=STREAM_IDLE_TIMEOUT,
        request_timeout=NO_TIMEOUT,  # long POSTs answered with SSE
        request_headers_timeout=REQUEST_HEADERS_TIMEOUT,
        common_http_protocol_options=HttpProtocolOptions(
            idle_timeout=CONNECTION_IDLE_TIMEOUT,
            # x_mcp_subject would reach some frameworks as x-mcp-subject: drop such headers.
            headers_with_underscores_action=HttpProtocolOptionsHeadersWithUnderscoresAction.DROP_HEADER,
        ),
        route_config=routes,
        http_filters=filters,
        local_reply_config=local_reply,
        access_log=[access_log()] if access_logs is None else access_logs,
    )
    return Filter(name="envoy.filters.network.http_connection_manager", typed_config=AnyMessage.pack(manager))


def listener(address: str | HostPort, manager: Filter) -> Listener:
    return Listener(name="mcp", address=_listen_address(address), filter_chains=[FilterChain(filters=[manager])])


# ---------------------------------------------------------------- bootstrap


def overload_manager() -> OverloadManager:
    """A bound on open client connections (Envoy warns at start-up without one)."""
    monitor = DownstreamConnectionsConfig(max_active_downstream_connections=MAX_DOWNSTREAM_CONNECTIONS)
    return OverloadManager(
        resource_monitors=[ResourceMonitor(name=_CONNECTIONS_MONITOR, typed_config=AnyMessage.pack(monitor))]
    )


def bootstrap(
    config: Config, *, authorizer: str | HostPort | None = None, discovery: str | HostPort | None = None
) -> Bootstrap:
    """The typed Envoy bootstrap for ``config``.

    ``authorizer`` and ``discovery`` (host:port) default to ``config.listen.grpc`` (``listen.http``
    with ``envoy.authorizer: http``) and ``config.listen.discovery``; with no discovery address,
    the discovery routes are left out.
    """
    http_authorizer = config.envoy.authorizer == "http"
    listen = config.listen
    authorizer_at = HostPort.of(authorizer) if authorizer else (listen.http if http_authorizer else None) or listen.grpc
    discovery_at = HostPort.of(discovery) if discovery else None  # "": no discovery routes
    if discovery is None:
        discovery_at = listen.discovery
    envoy = config.envoy
    lists = filters_lists(config)
    manager = http_connection_manager(
        route_config(config, with_discovery=discovery_at is not None),
        http_filters(config, authorizer_at),
        extproc_local_reply() if lists else None,
    )
    clusters = [cluster(AUTHZ_CLUSTER, authorizer_at, http2=not http_authorizer)]
    if lists:  # filter_lists needs the gRPC authorizer: the list filter is served next to it
        clusters.append(cluster(EXTPROC_CLUSTER, authorizer_at, http2=True))
    if discovery_at is not None:
        clusters.append(cluster(DISCOVERY_CLUSTER, discovery_at))
    clusters.extend(cluster(upstream_cluster_name(s), s.upstream) for s in config.servers.values())
    return Bootstrap(
        admin=Admin(address=_socket("127.0.0.1", envoy.admin_port)),
        static_resources=BootstrapStaticResources(listeners=[listener(envoy.listen, manager)], clusters=clusters),
        overload_manager=overload_manager(),
    )


_EXT_AUTHZ_TYPE = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"
_EXT_PROC_TYPE = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor"
_FRACTIONAL_SECONDS = re.compile(r"(\d+)\.(\d*?)0+s")


def _readable(node: Any) -> Any:
    """Proto3 JSON as a person reviews it: the fail-closed settings spelled out although they are
    Envoy's defaults (proto3 JSON leaves defaults out), durations without trailing zeros (0.25s)."""
    if isinstance(node, list):
        return [_readable(item) for item in node]
    if isinstance(node, float) and node.is_integer():
        return int(node)  # Struct numbers are doubles: -32603, not -32603.0, in a local reply's JSON
    if isinstance(node, str):
        match = _FRACTIONAL_SECONDS.fullmatch(node)
        return f"{match[1]}{'.' + match[2] if match[2] else ''}s" if match else node
    if not isinstance(node, dict):
        return node
    result = {key: _readable(value) for key, value in node.items()}
    if result.get("@type") == _EXT_AUTHZ_TYPE:
        result.setdefault("failure_mode_allow", False)
        if "with_request_body" in result:
            result["with_request_body"].setdefault("allow_partial_message", False)
    if result.get("@type") == _EXT_PROC_TYPE:
        result.setdefault("failure_mode_allow", False)
    return result


def to_json(message: betterproto2.Message) -> dict[str, Any]:
    """Proto3 JSON of a typed message with the proto field names (as Envoy's docs and YAML use them)."""
    result: dict[str, Any] = _readable(message.to_dict(casing=betterproto2.Casing.SNAKE))
    return result


def render_envoy(
    config: Config, *, authorizer: str | HostPort | None = None, discovery: str | HostPort | None = None
) -> dict[str, Any]:
    """``bootstrap`` as the plain dict Envoy reads."""
    return to_json(bootstrap(config, authorizer=authorizer, discovery=discovery))


class _Dumper(yaml.SafeDumper):
    """Safe YAML without anchors: routes share dicts, the file should still read plainly."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render_envoy_yaml(
    config: Config, *, authorizer: str | HostPort | None = None, discovery: str | HostPort | None = None
) -> str:
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
