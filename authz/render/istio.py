"""Istio objects for the authorizer's config (``mcp-authz render istio``), two layouts.

Shared authorizer: one ``mcp-authz`` Deployment; every MCP workload labelled
``mcp-authz.io/server: <server name>`` gets an ``AuthorizationPolicy`` with ``action: CUSTOM``.
Sidecar: the authorizer runs as a second container in each MCP server's pod (an Istio custom
injection template adds it to pods annotated ``inject.istio.io/templates: sidecar,mcp-authz``),
reached on 127.0.0.1 through the ``ext-authz-grpc.local`` ServiceEntry, one config per pod from the
ConfigMap named by the pod's ``mcp-authz.io/config`` annotation.

Which MCP server a Check is for: Istio sets no per-route ``context_extensions``. With the gRPC provider
the authorizer picks the server by host and path (``authz/routing.py``: the resource's path, and the
server's ``hosts``, which must list the names clients use in the mesh); with ``envoy.authorizer: http``
each server gets its own HTTP provider that names it in ``x-mcp-authz-server``
(``includeAdditionalHeadersInCheck``, which Envoy sets on the authorization request, overwriting any
client copy). The HTTP provider's header lists are those of the standalone Envoy chain
(``authz.render.envoy``); the gRPC provider has no header lists: Envoy sends every request header and
applies the CheckResponse's headers as they are.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from authz import contract
from authz.config.runtime import Config, Server
from authz.render import authorizer_pod, envoy
from discovery import rfc8414, rfc9728

NAMESPACE = "mcp-authz"  # the shared authorizer's namespace
MCP_NAMESPACE = "mcp"  # the MCP servers' namespace
ROOT_NAMESPACE = "istio-system"  # policies here apply mesh-wide to the workloads they select
GATEWAY = "mcp-gateway"  # the ingress Gateway (Istio and Gateway API) in ROOT_NAMESPACE
APP = "mcp-authz"
SECRET = "mcp-authz-secrets"
PROVIDER = "mcp-authz"  # shared gRPC provider; HTTP: PROVIDER-<server>
LOCAL_PROVIDER = "mcp-authz-local"  # the sidecar's provider
LOCAL_GRPC_HOST = "ext-authz-grpc.local"
LOCAL_HTTP_HOST = "ext-authz-http.local"
SERVER_LABEL = "mcp-authz.io/server"  # shared layout: selects a workload, names its MCP server
SIDECAR_LABEL = "mcp-authz.io/sidecar"  # set by the injection template
CONFIG_ANNOTATION = "mcp-authz.io/config"  # sidecar layout: ConfigMap (and optional Secret) of the pod
CONFIG_LABEL = "mcp-authz.io/config"  # set by the injection template from the annotation: selects one server's pods
INJECT_LABEL = "sidecar.istio.io/inject"  # on the authorizer's pods: its own sidecar enforces mTLS and the ALLOW
TEMPLATES_ANNOTATION = "inject.istio.io/templates"
TEMPLATE = "mcp-authz"
EXCLUDED_PATHS = ["/.well-known/*"]  # discovery: never checked
PROTECTED_RESOURCE_PREFIX = rfc9728.WELL_KNOWN
AUTHORIZATION_SERVER_PREFIXES = rfc8414.ROOT_PATHS
TRUST_DOMAIN = "cluster.local"
ACCESS_LOG_PROVIDER = "mcp-authz-access-log"  # + -<server>: the provider names its server in the log
SIDECAR_DIR = "sidecar"  # the sidecar layout's files: `kubectl apply -f DIR/sidecar`
# Files of DIR the sidecar layout applies too (the shared authorizer serves discovery; the routing).
SIDECAR_LAYOUT_SHARES = (
    "authorizer.yaml",
    "authorizer-access.yaml",
    "secret.yaml",
    "virtual-service.yaml",
    "http-route.yaml",
)
# A Gateway API hostname (RFC 1123 labels, a leading `*.` allowed); IP addresses are not hostnames there.
_DNS_NAME = re.compile(r"(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


@dataclass(frozen=True, slots=True)
class Options:
    image: str = authorizer_pod.IMAGE
    namespace: str = NAMESPACE
    mcp_namespace: str = MCP_NAMESPACE
    sidecar_only: bool = False  # no shared CUSTOM provider and policies (the shared Deployment serves discovery)
    replicas: int | None = None  # the shared authorizer's; None: 2 with Redis, 1 with the in-memory store
    trust_domain: str = TRUST_DOMAIN  # of the mesh's SPIFFE identities (the ALLOW policy's principals)


def _service_host(options: Options) -> str:
    return f"{APP}.{options.namespace}.svc.cluster.local"


def _http_mode(config: Config) -> bool:
    return config.envoy.authorizer == "http"


# ---------------------------------------------------------------- MeshConfig extension providers


def request_body(config: Config) -> dict[str, Any]:
    """The body bound, as the standalone chain has it (a larger body: 413 before any Check)."""
    return {"maxRequestBytes": config.envoy.max_request_bytes, "allowPartialMessage": False, "packAsBytes": True}


def _common(config: Config, service: str, port: int) -> dict[str, Any]:
    return {
        "service": service,
        "port": port,
        "timeout": f"{config.envoy.timeout_ms / 1000:g}s",  # Istio's default is 600 s
        "failOpen": False,
        "statusOnError": "503",
        "includeRequestBodyInCheck": request_body(config),
    }


def grpc_provider(config: Config, name: str, service: str, port: int) -> dict[str, Any]:
    return {"name": name, "envoyExtAuthzGrpc": _common(config, service, port)}


def http_provider(config: Config, name: str, service: str, port: int, server: Server | None) -> dict[str, Any]:
    """The HTTP provider with the header lists ``authz.front.http_service`` needs; ``server`` is named in a header."""
    added = dict(envoy.HTTP_CONTEXT_HEADERS)
    if server is None:
        added.pop(contract.SERVER_HEADER)
    else:
        added[contract.SERVER_HEADER] = server.name
    return {
        "name": name,
        "envoyExtAuthzHttp": {
            **_common(config, service, port),
            "includeRequestHeadersInCheck": envoy.http_request_headers(config),
            "includeAdditionalHeadersInCheck": added,
            "headersToUpstreamOnAllow": envoy.http_upstream_headers(config),
            "headersToDownstreamOnDeny": list(envoy.HTTP_CLIENT_HEADERS),
        },
    }


def shared_providers(config: Config, options: Options) -> list[dict[str, Any]]:
    ports = authorizer_pod.Ports.of(config)
    host = _service_host(options)
    if not _http_mode(config):
        return [grpc_provider(config, PROVIDER, host, ports.grpc)]
    return [http_provider(config, f"{PROVIDER}-{s.name}", host, ports.http, s) for s in config.servers.values()]


def local_provider(config: Config) -> dict[str, Any]:
    ports = authorizer_pod.Ports.of(config)
    if _http_mode(config):
        return http_provider(config, LOCAL_PROVIDER, LOCAL_HTTP_HOST, ports.http, None)
    return grpc_provider(config, LOCAL_PROVIDER, LOCAL_GRPC_HOST, ports.grpc)


def shared_provider_name(config: Config, server: Server) -> str:
    return f"{PROVIDER}-{server.name}" if _http_mode(config) else PROVIDER


def access_log_provider(server: str) -> str:
    return f"{ACCESS_LOG_PROVIDER}-{server}"


def access_log_providers(config: Config) -> list[dict[str, Any]]:
    """Envoy's JSON access log on the MCP workloads' sidecars, one provider per server (it names the server:
    Istio builds the routes, so no route metadata can): the fields of the standalone chain
    (``envoy.ACCESS_LOG_FORMAT``), never a credential."""
    return [
        {
            "name": access_log_provider(server.name),
            "envoyFileAccessLog": {
                "path": "/dev/stdout",
                "logFormat": {"labels": {**envoy.ACCESS_LOG_FORMAT, "mcp_server": server.name}},
            },
        }
        for server in config.servers.values()
    ]


def telemetry(name: str, namespace: str, selector: dict[str, str], provider: str) -> dict[str, Any]:
    """Turns a provider's access log on for the selected workloads (of ``namespace``, theirs)."""
    return {
        "apiVersion": "telemetry.istio.io/v1",
        "kind": "Telemetry",
        "metadata": authorizer_pod.meta(name, namespace),
        "spec": {"selector": {"matchLabels": selector}, "accessLogging": [{"providers": [{"name": provider}]}]},
    }


def shared_access_logs(config: Config, options: Options) -> list[dict[str, Any]]:
    return [
        telemetry(
            f"mcp-authz-{s.name}-access-log", options.mcp_namespace, {SERVER_LABEL: s.name}, access_log_provider(s.name)
        )
        for s in config.servers.values()
    ]


# ---------------------------------------------------------------- AuthorizationPolicy


def authorization_policy(name: str, selector: dict[str, str], provider: str) -> dict[str, Any]:
    """CUSTOM: every request to the selected workloads goes to ``provider`` except discovery paths."""
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": authorizer_pod.meta(name, ROOT_NAMESPACE),
        "spec": {
            "selector": {"matchLabels": selector},
            "action": "CUSTOM",
            "provider": {"name": provider},
            "rules": [{"to": [{"operation": {"notPaths": list(EXCLUDED_PATHS)}}]}],
        },
    }


def shared_policies(config: Config) -> list[dict[str, Any]]:
    return [
        authorization_policy(f"mcp-authz-{s.name}", {SERVER_LABEL: s.name}, shared_provider_name(config, s))
        for s in config.servers.values()
    ]


# ---------------------------------------------------------------- list filtering (ext_proc)


def list_filter(config: Config, name: str, selector: dict[str, str], cluster: str) -> dict[str, Any]:
    """An EnvoyFilter putting the list filter of ``render envoy`` (``envoy.ext_proc_filter``) right after the CUSTOM
    ext_authz filter of the selected sidecars (inbound), at ``cluster`` (Istio's name for the authorizer's gRPC
    port), and the local reply that turns a failing processor into a JSON-RPC error carrying the request's id.

    Needs the gRPC provider: the caller reaches the processor as the Check's dynamic metadata. With
    ``ext_proc.failure: closed`` a request without that metadata is refused, so only workloads whose every path
    the CUSTOM policy checks are selected (discovery goes to the authorizer through the gateway's routing).
    """
    processor = envoy.to_json(envoy.ext_proc_filter(config))
    processor["typed_config"]["grpc_service"] = {"envoy_grpc": {"cluster_name": cluster}}
    manager_filter = {"name": "envoy.filters.network.http_connection_manager"}
    return {
        "apiVersion": "networking.istio.io/v1alpha3",
        "kind": "EnvoyFilter",
        "metadata": authorizer_pod.meta(name, ROOT_NAMESPACE),
        "spec": {
            "workloadSelector": {"labels": selector},
            "configPatches": [
                {
                    "applyTo": "HTTP_FILTER",
                    "match": {
                        "context": "SIDECAR_INBOUND",
                        "listener": {
                            "filterChain": {"filter": {**manager_filter, "subFilter": {"name": envoy.EXT_AUTHZ}}}
                        },
                    },
                    "patch": {"operation": "INSERT_AFTER", "value": processor},
                },
                {
                    "applyTo": "NETWORK_FILTER",
                    "match": {"context": "SIDECAR_INBOUND", "listener": {"filterChain": {"filter": manager_filter}}},
                    "patch": {
                        "operation": "MERGE",
                        "value": {
                            "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager"
                                ".v3.HttpConnectionManager",
                                "local_reply_config": envoy.to_json(envoy.extproc_local_reply()),
                            }
                        },
                    },
                },
            ],
        },
    }


def shared_list_filters(config: Config, options: Options) -> list[dict[str, Any]]:
    ports = authorizer_pod.Ports.of(config)
    cluster = f"outbound|{ports.grpc}||{_service_host(options)}"
    return [
        list_filter(config, f"mcp-authz-{s.name}-list-filter", {SERVER_LABEL: s.name}, cluster)
        for s in config.servers.values()
        if s.filter_lists
    ]


# ---------------------------------------------------------------- discovery routing


def discovery_matches(config: Config) -> list[tuple[str, str]]:
    """(``prefix`` | ``exact``, path) for what the discovery service answers: RFC 9728 documents, the
    mirrored RFC 8414 / OIDC documents (root forms by prefix, others exactly), development JWKS."""
    result = [("prefix", PROTECTED_RESOURCE_PREFIX), *(("prefix", p) for p in AUTHORIZATION_SERVER_PREFIXES)]
    for path in rfc8414.routes(config):
        if not path.startswith(AUTHORIZATION_SERVER_PREFIXES):
            result.append(("exact", path))
    if any(i.local_key_file for i in config.issuers.values()):
        result.append(("prefix", "/jwks/"))
    return result


def gateway_hostname(host: str) -> str | None:
    """Why Gateway API refuses ``host`` as an HTTPRoute hostname (IP addresses, non-DNS names), or None."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return "an IP address (Gateway API hostnames are DNS names)"
    if len(host) > 253 or not _DNS_NAME.fullmatch(host):
        return "not a DNS name of lowercase letters, digits, '-' and '.'"
    return None


def _hosts(config: Config) -> dict[str, list[Server]]:
    """Public host → its servers. A host the gateway routing cannot carry is refused, naming the key."""
    hosts: dict[str, list[Server]] = {}
    for index, server in enumerate(config.servers.values()):
        host = urlsplit(server.resource).hostname or ""
        problem = gateway_hostname(host)
        if problem is not None:
            raise ValueError(
                f"servers[{index}].resource: host {host!r} is {problem}: the HTTPRoute and VirtualService that "
                "route clients to it need the public DNS name clients use (e.g. https://mcp.example.com/mcp)"
            )
        hosts.setdefault(host, []).append(server)
    return hosts


def _upstream_port(server: Server) -> int:
    return server.upstream.port


def _slug(host: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in host.lower()).strip("-")


def _server_paths(server: Server) -> tuple[str, str] | None:
    base = server.path.rstrip("/")
    return (base, base + "/") if base else None


def cors_policy(server: Server) -> dict[str, Any]:
    """The gateway answers the CORS preflights of the server's ``origins`` (a preflight carries no token, so
    it must not reach the CUSTOM check), with the lists of the standalone chain (``envoy._cors_per_route``)."""
    return {
        "allowOrigins": [{"exact": origin} for origin in sorted(server.origins or ())],
        "allowMethods": ["GET", "POST", "DELETE", "OPTIONS"],
        "allowHeaders": envoy.cors_allow_headers(server),
        "exposeHeaders": [h.strip() for h in envoy.CORS_EXPOSE_HEADERS.split(",")],
        "maxAge": "24h",
    }


def virtual_services(config: Config, options: Options) -> list[dict[str, Any]]:
    """Istio routing at the gateway: discovery paths to the discovery service, MCP paths to the servers."""
    result = []
    for host, servers in _hosts(config).items():
        discovery = {
            "name": "discovery",
            "match": [{"uri": {kind: path}} for kind, path in discovery_matches(config)],
            "route": [
                {
                    "destination": {
                        "host": _service_host(options),
                        "port": {"number": authorizer_pod.Ports.of(config).discovery},
                    }
                }
            ],
        }
        routes = [discovery]
        for server in sorted(servers, key=lambda s: -len(s.path.rstrip("/"))):
            paths = _server_paths(server)
            match = (
                [{"uri": {"exact": paths[0]}}, {"uri": {"prefix": paths[1]}}] if paths else [{"uri": {"prefix": "/"}}]
            )
            destination = {
                "host": f"{server.name}.{options.mcp_namespace}.svc.cluster.local",
                "port": {"number": _upstream_port(server)},
            }
            route: dict[str, Any] = {
                "name": server.name,
                "match": match,
                "route": [{"destination": destination}],
                "timeout": "0s",
            }
            if server.origins:
                route["corsPolicy"] = cors_policy(server)
            routes.append(route)
        result.append(
            {
                "apiVersion": "networking.istio.io/v1",
                "kind": "VirtualService",
                "metadata": authorizer_pod.meta(f"mcp-{_slug(host)}", options.mcp_namespace),
                "spec": {"hosts": [host], "gateways": [f"{ROOT_NAMESPACE}/{GATEWAY}"], "http": routes},
            }
        )
    return result


def http_routes(config: Config, options: Options) -> list[dict[str, Any]]:
    """The same routing as Gateway API ``HTTPRoute`` objects (and the ReferenceGrant the discovery
    backend in the authorizer's namespace needs)."""
    kinds = {"prefix": "PathPrefix", "exact": "Exact"}
    discovery_backend = {"name": APP, "namespace": options.namespace, "port": authorizer_pod.Ports.of(config).discovery}
    result: list[dict[str, Any]] = []
    for host, servers in _hosts(config).items():
        rules: list[dict[str, Any]] = [
            {
                "matches": [{"path": {"type": kinds[kind], "value": path}} for kind, path in discovery_matches(config)],
                "backendRefs": [discovery_backend],
            }
        ]
        for server in servers:
            paths = _server_paths(server)
            value = paths[0] if paths else "/"
            rules.append(
                {
                    "matches": [{"path": {"type": "PathPrefix", "value": value}}],
                    "backendRefs": [{"name": server.name, "port": _upstream_port(server)}],
                    "timeouts": {"request": "0s"},  # SSE responses
                }
            )
        result.append(
            {
                "apiVersion": "gateway.networking.k8s.io/v1",
                "kind": "HTTPRoute",
                "metadata": authorizer_pod.meta(f"mcp-{_slug(host)}", options.mcp_namespace),
                "spec": {
                    "parentRefs": [{"name": GATEWAY, "namespace": ROOT_NAMESPACE}],
                    "hostnames": [host],
                    "rules": rules,
                },
            }
        )
    result.append(
        {
            "apiVersion": "gateway.networking.k8s.io/v1beta1",
            "kind": "ReferenceGrant",
            "metadata": authorizer_pod.meta("mcp-discovery", options.namespace),
            "spec": {
                "from": [
                    {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": options.mcp_namespace}
                ],
                "to": [{"group": "", "kind": "Service", "name": APP}],
            },
        }
    )
    return result


# ---------------------------------------------------------------- the shared authorizer


SELECTOR = {"app.kubernetes.io/name": APP}  # the shared authorizer's pods


def shared_authorizer(config: Config, raw: dict[str, Any], options: Options) -> list[dict[str, Any]]:
    """ConfigMap, ServiceAccount, Deployment, Service and, with more than one replica, HorizontalPodAutoscaler
    and PodDisruptionBudget (the Secret they read is rendered apart, ``secret.yaml``: a template to fill once).

    The pods get an Istio sidecar of their own: it enforces mTLS and the ALLOW policy of ``authorizer_access``
    on the Check ports, which listen on all addresses (the HTTP front trusts that: ``listen.http_mesh_mtls``)."""
    ports = authorizer_pod.Ports.of(config)
    ns = options.namespace
    count = authorizer_pod.replicas(config, options.replicas)
    text = authorizer_pod.pod_config(
        raw,
        grpc=f"0.0.0.0:{ports.grpc}",
        discovery=f"0.0.0.0:{ports.discovery}",
        http=f"0.0.0.0:{ports.http}" if ports.http else "",
        mesh_mtls=True,
    )
    selector = SELECTOR
    container = authorizer_pod.authorizer_container(options.image, ports, raw, SECRET, grpc_probe=True)
    pod = {
        "metadata": {"labels": {**selector, INJECT_LABEL: "true"}},
        "spec": {
            "serviceAccountName": APP,
            "automountServiceAccountToken": False,
            "securityContext": {"runAsNonRoot": True, "fsGroup": authorizer_pod.UID},
            "containers": [container],
            "volumes": authorizer_pod.volumes(APP, SECRET, raw),
        },
    }
    service_ports = [
        {"name": "grpc-authz", "port": ports.grpc, "targetPort": ports.grpc, "appProtocol": "grpc"},
        {"name": "http-discovery", "port": ports.discovery, "targetPort": ports.discovery, "appProtocol": "http"},
    ]
    if ports.http:
        service_ports.append(
            {"name": "http-authz", "port": ports.http, "targetPort": ports.http, "appProtocol": "http"}
        )
    objects: list[dict[str, Any]] = [
        authorizer_pod.config_map(APP, ns, text),
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": authorizer_pod.meta(APP, ns)},
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": authorizer_pod.meta(APP, ns),
            "spec": {"replicas": count, "selector": {"matchLabels": selector}, "template": pod},
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": authorizer_pod.meta(APP, ns),
            "spec": {"selector": selector, "ports": service_ports},
        },
    ]
    if count > 1:  # one replica: no autoscaling (state in memory) and no budget that would block every drain
        objects += [
            {
                "apiVersion": "autoscaling/v2",
                "kind": "HorizontalPodAutoscaler",
                "metadata": authorizer_pod.meta(APP, ns),
                "spec": {
                    "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": APP},
                    "minReplicas": count,
                    "maxReplicas": max(10, count),
                    "metrics": [
                        {
                            "type": "Resource",
                            "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}},
                        }
                    ],
                },
            },
            {
                "apiVersion": "policy/v1",
                "kind": "PodDisruptionBudget",
                "metadata": authorizer_pod.meta(APP, ns),
                "spec": {"minAvailable": 1, "selector": {"matchLabels": selector}},
            },
        ]
    return objects


def check_ports(config: Config) -> list[int]:
    ports = authorizer_pod.Ports.of(config)
    return [ports.grpc, *([ports.http] if ports.http else [])]


def authorizer_access(config: Config, options: Options) -> list[dict[str, Any]]:
    """Who may reach the shared authorizer (issue 21 item 10: its Check ports are a decision oracle, and
    the HTTP front trusts the Envoy-set headers): a NetworkPolicy admitting only the MCP servers' pods to the
    Check ports, STRICT mTLS on its sidecar, and an ALLOW policy by the callers' mesh identities. The discovery
    port stays open to anyone (the gateway routes clients there; probes, metrics)."""
    ports = authorizer_pod.Ports.of(config)
    ns = options.namespace
    check = check_ports(config)
    mcp_pods = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": options.mcp_namespace}},
        "podSelector": {"matchExpressions": [{"key": SERVER_LABEL, "operator": "Exists"}]},
    }
    principals = [f"{options.trust_domain}/ns/{options.mcp_namespace}/sa/*"]
    return [
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": authorizer_pod.meta(APP, ns),
            "spec": {
                "podSelector": {"matchLabels": SELECTOR},
                "policyTypes": ["Ingress"],
                "ingress": [
                    {"from": [mcp_pods], "ports": [{"port": p, "protocol": "TCP"} for p in check]},
                    {"ports": [{"port": ports.discovery, "protocol": "TCP"}]},
                ],
            },
        },
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "PeerAuthentication",
            "metadata": authorizer_pod.meta(APP, ns),
            "spec": {"selector": {"matchLabels": SELECTOR}, "mtls": {"mode": "STRICT"}},
        },
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": authorizer_pod.meta(f"{APP}-callers", ns),
            "spec": {
                "selector": {"matchLabels": SELECTOR},
                "action": "ALLOW",
                "rules": [
                    {
                        "from": [{"source": {"principals": principals}}],
                        "to": [{"operation": {"ports": [str(p) for p in check]}}],
                    },
                    {"to": [{"operation": {"ports": [str(ports.discovery)]}}]},
                ],
            },
        },
    ]


def mcp_servers(config: Config, options: Options, *, sidecar: bool = False) -> list[dict[str, Any]]:
    """Example MCP server workloads: a Service named after each server (the routing's backend) and a
    Deployment, labelled for its CUSTOM policy (shared layout) or annotated for the injection template
    (``sidecar``). Replace the image."""
    result: list[dict[str, Any]] = []
    for server in config.servers.values():
        port = _upstream_port(server)
        labels = {"app": server.name}
        result.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": authorizer_pod.meta(server.name, options.mcp_namespace),
                "spec": {"selector": labels, "ports": [{"name": "http-mcp", "port": port, "targetPort": port}]},
            }
        )
        if sidecar:
            annotations = {TEMPLATES_ANNOTATION: f"sidecar,{TEMPLATE}", CONFIG_ANNOTATION: sidecar_config_name(server)}
            result.append(_mcp_deployment(server, options, labels, annotations))
        else:
            result.append(_mcp_deployment(server, options, {**labels, SERVER_LABEL: server.name}, {}))
    return result


def _mcp_deployment(
    server: Server, options: Options, labels: dict[str, str], annotations: dict[str, str]
) -> dict[str, Any]:
    port = _upstream_port(server)
    metadata: dict[str, Any] = {"labels": labels}
    if annotations:
        metadata["annotations"] = annotations
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": authorizer_pod.meta(server.name, options.mcp_namespace),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": server.name}},
            "template": {
                "metadata": metadata,
                "spec": {
                    "containers": [
                        {
                            "name": "mcp-server",
                            "image": f"registry.example/{server.name}-mcp-server:latest",
                            "ports": [{"name": "http-mcp", "containerPort": port}],
                        }
                    ]
                },
            },
        },
    }


# ---------------------------------------------------------------- the sidecar layout


def _local_config(config: Config, raw: dict[str, Any], server: Server) -> str:
    ports = authorizer_pod.Ports.of(config)
    return authorizer_pod.pod_config(
        raw,
        grpc=f"127.0.0.1:{ports.grpc}",  # only the pod's own Envoy reaches the Check
        discovery=f"0.0.0.0:{ports.discovery}",  # kubelet probes /healthz, /readyz
        http=f"127.0.0.1:{ports.http}" if ports.http else "",
        servers=[server.name],
    )


def sidecar_config_name(server: Server) -> str:
    return f"mcp-authz-{server.name}"


def injection_template(config: Config, raw: dict[str, Any], options: Options) -> str:
    """The custom injection template: a Pod patch Istio merges into annotated pods (Go template).

    The pod's ``mcp-authz.io/config`` annotation names its ConfigMap and (optional) Secret.
    """
    ports = authorizer_pod.Ports.of(config)
    name = "{{ index .ObjectMeta.Annotations `" + CONFIG_ANNOTATION + "` }}"
    container = authorizer_pod.authorizer_container(options.image, ports, raw, name, grpc_probe=False)
    for entry in container.get("env", []):
        entry["valueFrom"]["secretKeyRef"]["optional"] = True
    for mount in container["volumeMounts"]:
        mount["name"] = f"mcp-authz-{mount['name']}"
    pod_volumes = authorizer_pod.volumes(name, name, raw)
    for volume in pod_volumes:
        volume["name"] = f"mcp-authz-{volume['name']}"
        if "secret" in volume:
            volume["secret"]["optional"] = True
    patch = {
        "metadata": {"labels": {SIDECAR_LABEL: "true", CONFIG_LABEL: name}},
        "spec": {"containers": [container], "volumes": pod_volumes},
    }
    return authorizer_pod.dump([patch], "")


def sidecar_selector(server: Server) -> dict[str, str]:
    """The injected pods of one MCP server (the template copies the config annotation into a label)."""
    return {SIDECAR_LABEL: "true", CONFIG_LABEL: sidecar_config_name(server)}


def sidecar_objects(config: Config, raw: dict[str, Any], options: Options) -> list[dict[str, Any]]:
    """ServiceEntry for the local provider, the CUSTOM policy for injected pods, one ConfigMap per MCP
    server, the list filter of each ``filter_lists`` server and each server's access log (the example
    workloads are in ``mcp_servers(..., sidecar=True)``)."""
    ports = authorizer_pod.Ports.of(config)
    http = _http_mode(config)
    entry = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": authorizer_pod.meta(LOCAL_PROVIDER, ROOT_NAMESPACE),
        "spec": {
            "hosts": [LOCAL_HTTP_HOST if http else LOCAL_GRPC_HOST],
            "endpoints": [{"address": "127.0.0.1"}],
            "ports": [
                {"name": "http", "number": ports.http, "protocol": "HTTP"}
                if http
                else {"name": "grpc", "number": ports.grpc, "protocol": "GRPC"}
            ],
            "resolution": "STATIC",
        },
    }
    objects = [entry, authorization_policy(LOCAL_PROVIDER, {SIDECAR_LABEL: "true"}, LOCAL_PROVIDER)]
    for server in config.servers.values():
        objects.append(
            authorizer_pod.config_map(
                sidecar_config_name(server), options.mcp_namespace, _local_config(config, raw, server)
            )
        )
    cluster = f"outbound|{ports.grpc}||{LOCAL_GRPC_HOST}"
    for server in config.servers.values():
        if server.filter_lists:
            name = f"mcp-authz-{server.name}-sidecar-list-filter"
            objects.append(list_filter(config, name, sidecar_selector(server), cluster))
    for server in config.servers.values():
        name = f"mcp-authz-{server.name}-sidecar-access-log"
        objects.append(
            telemetry(name, options.mcp_namespace, sidecar_selector(server), access_log_provider(server.name))
        )
    return objects


# ---------------------------------------------------------------- MeshConfig + injection template


def istio_operator(config: Config, raw: dict[str, Any], options: Options) -> dict[str, Any]:
    """An IstioOperator overlay: the extension providers and the injection template (Helm: the same
    ``meshConfig`` and ``sidecarInjectorWebhook`` values of the istiod chart)."""
    shared = [] if options.sidecar_only else shared_providers(config, options)
    return {
        "apiVersion": "install.istio.io/v1alpha1",
        "kind": "IstioOperator",
        "metadata": {"name": "mcp-authz", "namespace": ROOT_NAMESPACE},
        "spec": {
            "meshConfig": {"extensionProviders": [*shared, local_provider(config), *access_log_providers(config)]},
            "values": {"sidecarInjectorWebhook": {"templates": {TEMPLATE: injection_template(config, raw, options)}}},
        },
    }


# ---------------------------------------------------------------- files


def render_istio(config: Config, raw: dict[str, Any], options: Options | None = None) -> dict[str, str]:
    """File name → text of every file in deploy/istio/ (README.md aside): the shared layout and what both
    layouts use in the directory itself (``kubectl apply -f DIR``), the sidecar layout in ``sidecar/``
    (``kubectl apply -f DIR/sidecar`` with SIDECAR_LAYOUT_SHARES): no (kind, namespace, name) twice in either.
    ``mesh-config.yaml`` is for istioctl (or the istiod chart's values), not kubectl."""
    options = options or Options()
    source = config.source or "<config>"
    header = (
        f"# Generated by mcp-authz from {source}. Do not edit by hand.\n"
        f"# Regenerate: mcp-authz render istio -c {source} -o <this directory>\n"
    )
    sidecar_header = header.replace("<this directory>", "<its parent directory>")
    files = {
        "mesh-config.yaml": authorizer_pod.dump([istio_operator(config, raw, options)], header),
        "authorizer.yaml": authorizer_pod.dump(shared_authorizer(config, raw, options), header),
        "authorizer-access.yaml": authorizer_pod.dump(authorizer_access(config, options), header),
        "secret.yaml": authorizer_pod.dump([authorizer_pod.secret(SECRET, options.namespace, raw)], header),
        "virtual-service.yaml": authorizer_pod.dump(virtual_services(config, options), header),
        "http-route.yaml": authorizer_pod.dump(http_routes(config, options), header),
    }
    if not options.sidecar_only:
        files["authorization-policy.yaml"] = authorizer_pod.dump(shared_policies(config), header)
        lists = shared_list_filters(config, options)
        if lists:
            files["list-filter.yaml"] = authorizer_pod.dump(lists, header)
        files["access-log.yaml"] = authorizer_pod.dump(shared_access_logs(config, options), header)
        files["mcp-servers.yaml"] = authorizer_pod.dump(mcp_servers(config, options), header)
    files[f"{SIDECAR_DIR}/sidecar.yaml"] = authorizer_pod.dump(sidecar_objects(config, raw, options), sidecar_header)
    files[f"{SIDECAR_DIR}/mcp-servers.yaml"] = authorizer_pod.dump(
        mcp_servers(config, options, sidecar=True), sidecar_header
    )
    return files
