"""Standalone Envoy and the authorizer in front of an MCP server on Kubernetes, no mesh
(``mcp-authz render kubernetes``, deploy/envoy/kubernetes.yaml).

One pod holds three containers that talk over localhost: Envoy (the chain of ``render envoy``,
listening on all addresses), the authorizer (gRPC / HTTP ext_authz on 127.0.0.1, discovery on all
addresses for the kubelet's probes) and the MCP server at ``servers[].upstream``. The Service
exposes Envoy's port only. The Secret the authorizer reads (``mcp-gateway-secrets``: one key per
``${NAME}`` of the config, ``<issuer>.pem`` per development key) is created out of band, never rendered.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from authz import contract
from authz.config.runtime import Config, HostPort
from authz.render import authorizer_pod, envoy

NAME = "mcp-gateway"
NAMESPACE = "mcp"
ENVOY_IMAGE = "envoyproxy/envoy:v1.40.0"
ENVOY_CONFIG = "/etc/envoy/envoy.yaml"
SECRET = "mcp-gateway-secrets"


def _listen_port(config: Config) -> int:
    return config.envoy.listen.port


def pod_envoy(config: Config) -> str:
    """``render envoy`` for the pod: listening on all addresses, the authorizer on loopback."""
    ports = authorizer_pod.Ports.of(config)
    everywhere = HostPort("0.0.0.0", _listen_port(config))
    in_pod = dataclasses.replace(config, envoy=dataclasses.replace(config.envoy, listen=everywhere))
    http = config.envoy.authorizer == "http"
    authorizer = f"127.0.0.1:{ports.http if http else ports.grpc}"
    bootstrap = envoy.render_envoy(in_pod, authorizer=authorizer, discovery=f"127.0.0.1:{ports.discovery}")
    return authorizer_pod.dump([bootstrap], "")


def manifests(
    config: Config, raw: dict[str, Any], image: str = authorizer_pod.IMAGE, *, replicas: int | None = None
) -> list[dict[str, Any]]:
    """ConfigMaps (Envoy's, the authorizer's), the Deployment and its Service. ``replicas`` as
    ``authorizer_pod.replicas`` decides: each pod holds an authorizer, so the in-memory store allows one."""
    ports = authorizer_pod.Ports.of(config)
    listen = _listen_port(config)
    count = authorizer_pod.replicas(config, replicas)
    authz_config = authorizer_pod.pod_config(
        raw,
        grpc=f"127.0.0.1:{ports.grpc}",
        discovery=f"0.0.0.0:{ports.discovery}",
        http=f"127.0.0.1:{ports.http}" if ports.http else "",
        shared_secret=True,
    )
    selector = {"app.kubernetes.io/name": NAME}
    proxy = {
        "name": "envoy",
        "image": ENVOY_IMAGE,
        "args": ["-c", ENVOY_CONFIG, "--concurrency", "2", "--log-level", "warn", "--disable-hot-restart"],
        "ports": [{"name": "http-mcp", "containerPort": listen, "protocol": "TCP"}],
        "readinessProbe": {"tcpSocket": {"port": listen}, "periodSeconds": 5},
        "resources": authorizer_pod.resources(cpu="250m", memory="64Mi", memory_limit="256Mi"),
        "securityContext": authorizer_pod.security_context(),
        "volumeMounts": [{"name": "envoy", "mountPath": "/etc/envoy", "readOnly": True}],
    }
    if config.listen.http_shared_secret is not None:  # the rendered Envoy reads it from its environment
        ref = {"name": SECRET, "key": contract.SHARED_SECRET_ENV, "optional": False}
        proxy["env"] = [{"name": contract.SHARED_SECRET_ENV, "valueFrom": {"secretKeyRef": ref}}]
    authorizer = authorizer_pod.authorizer_container(image, ports, raw, SECRET, grpc_probe=False)
    upstreams = sorted({str(s.upstream.port) for s in config.servers.values()})
    server = {
        "name": "mcp-server",
        "image": "registry.example/your-mcp-server:latest",
        "ports": [{"name": f"mcp-{port}", "containerPort": int(port), "protocol": "TCP"} for port in upstreams],
    }
    volumes = [
        {"name": "envoy", "configMap": {"name": f"{NAME}-envoy"}},
        *authorizer_pod.volumes(f"{NAME}-authz", SECRET, raw),
    ]
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": authorizer_pod.meta(f"{NAME}-envoy", NAMESPACE),
            "data": {"envoy.yaml": pod_envoy(config)},
        },
        authorizer_pod.config_map(f"{NAME}-authz", NAMESPACE, authz_config),
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": authorizer_pod.meta(NAME, NAMESPACE),
            "spec": {
                "replicas": count,
                "selector": {"matchLabels": selector},
                "template": {
                    "metadata": {"labels": selector},
                    "spec": {
                        "automountServiceAccountToken": False,
                        "containers": [proxy, authorizer, server],
                        "volumes": volumes,
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": authorizer_pod.meta(NAME, NAMESPACE),
            "spec": {
                "selector": selector,
                "ports": [{"name": "http-mcp", "port": listen, "targetPort": listen, "appProtocol": "http"}],
            },
        },
    ]


def render_kubernetes(
    config: Config, raw: dict[str, Any], image: str = authorizer_pod.IMAGE, *, replicas: int | None = None
) -> str:
    source = config.source or "<config>"
    header = (
        f"# Generated by mcp-authz from {source}. Do not edit by hand.\n"
        f"# Regenerate: mcp-authz render kubernetes -c {source} -o <this file>\n"
    )
    return authorizer_pod.dump(manifests(config, raw, image, replicas=replicas), header)
