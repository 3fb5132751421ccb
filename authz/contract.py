"""The contract between Envoy (as ``mcp-authz render`` configures it) and the authorizer: the names both
sides must spell alike. The renderer writes them into Envoy's config; the fronts, the Check, the list
filter and config validation read them from here. Imports nothing from ``authz``.
"""

from __future__ import annotations

# ---------------------------------------------------------------- which MCP server a Check is for

# gRPC ext_authz: each rendered route names its server in this per-route context extension
# (``check_settings.context_extensions``).
SERVER_CONTEXT_KEY = "mcp_server"

# HTTP ext_authz cannot send context extensions: each route carries
# ``metadata.filter_metadata.<ROUTE_METADATA_NAMESPACE>.<ROUTE_METADATA_SERVER>: <name>`` and the filter
# copies it into SERVER_HEADER.
ROUTE_METADATA_NAMESPACE = "mcp_authz"
ROUTE_METADATA_SERVER = "server"

# ---------------------------------------------------------------- headers only Envoy may set

# On an authorization request (HTTP front), Envoy sets these with ``headers_to_add`` (overwriting any
# copy) and never forwards a client's own (``allowed_headers`` lists none of them). The authorizer
# trusts them for that reason only; config validation refuses them as identity-proxy headers.
ENVOY_HEADER_PREFIX = "x-mcp-authz-"
SERVER_HEADER = "x-mcp-authz-server"  # the MCP server's name (from route metadata)
SOURCE_HEADER = "x-mcp-authz-source"  # the downstream address, without port
PEER_URI_SAN_HEADER = "x-mcp-authz-peer-uri-san"  # the mTLS peer certificate's URI SAN
PEER_DNS_SAN_HEADER = "x-mcp-authz-peer-dns-san"  # ... its DNS SAN
PEER_SUBJECT_HEADER = "x-mcp-authz-peer-subject"  # ... its Subject
# In the order Envoy picks ``source.principal``: URI SAN, else DNS SAN, else Subject.
PEER_HEADERS = (PEER_URI_SAN_HEADER, PEER_DNS_SAN_HEADER, PEER_SUBJECT_HEADER)
# Envoy >= 1.40 with envoy.mcp_filter: its MCP filter's metadata as JSON (authz.mcp_metadata), on the metadata routes
MCP_METADATA_HEADER = "x-mcp-authz-mcp"
MCP_METADATA_NAMESPACE = "envoy.filters.http.mcp"  # the filter's dynamic metadata namespace
AUTHORIZATION_REQUEST_HEADERS = (SERVER_HEADER, SOURCE_HEADER, *PEER_HEADERS)

# ``listen.http_shared_secret``: Envoy proves it is Envoy by sending the secret in this header on every
# authorization request, read from its own environment (``%ENVIRONMENT(SHARED_SECRET_ENV)%``, so the rendered
# config never holds it). The HTTP front refuses a request without it before anything else.
SHARED_SECRET_HEADER = "x-mcp-authz-secret"
SHARED_SECRET_ENV = "MCP_AUTHZ_HTTP_SHARED_SECRET"

# Set by the Check on every allowed request of a ``filter_lists`` server ("1": it has a list request,
# "0": none), replacing any client copy; Envoy re-picks the route (ext_authz ``clear_route_cache``) and a
# "0" route has ext_proc disabled. Removed before the request goes upstream.
LIST_ROUTE_HEADER = "x-mcp-authz-list"

# ---------------------------------------------------------------- hand-over to the list filter (ext_proc)

# Envoy keeps a CheckResponse's ``dynamic_metadata`` under the ext_authz filter's namespace and forwards
# that namespace to ext_proc (``metadata_options.forwarding_namespaces.untyped``).
HANDOVER_NAMESPACE = "envoy.filters.http.ext_authz"
HANDOVER_KEY = "mcp_authz"  # our struct inside it: ``server``, ``id`` and, with a list request, ``handover``
HANDOVER_ID = "id"  # the request's JSON-RPC id, for Envoy's fail-closed local reply
