"""Kubernetes pieces shared by ``render istio`` and ``render kubernetes``: the authorizer's pod config,
its container, probes and security context, and byte-stable multi-document YAML.

Objects are plain dicts in the Kubernetes API's camelCase (tests load every one into the
``kubernetes`` client's models). The authorizer's config reaches a pod as a ConfigMap holding the
operator's own YAML with only what must differ in a cluster rewritten (listen addresses, key file
paths); ``${NAME}`` references stay as written and are filled from a Secret through the environment,
so no secret value is ever rendered.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import yaml

from authz import __version__
from authz.config.load import env_names
from authz.config.runtime import Config, HostPort

REPOSITORY = "mcp-authz"  # the image the Dockerfile builds (docs/install.md); `--image` sets another
IMAGE = f"{REPOSITORY}:{__version__.replace('+', '-')}"  # tagged with the package version ("+" is no tag character)
UID = 10001  # the image's numeric non-root user
CONFIG_DIR = "/etc/mcp-authz"
CONFIG_FILE = "config.yaml"  # the image's ENTRYPOINT reads CONFIG_DIR/CONFIG_FILE
KEYS_DIR = "/var/run/secrets/mcp-authz"  # local_key_file PEMs from the Secret, one file per issuer
CONTAINER = "mcp-authz"


@dataclass(frozen=True, slots=True)
class Ports:
    """The authorizer's ports in a pod (from the config's listen addresses)."""

    grpc: int
    discovery: int
    http: int  # 0: the HTTP ext_authz front is off

    @classmethod
    def of(cls, config: Config) -> Ports:
        def port(address: HostPort | None) -> int:
            return address.port if address is not None else 0

        discovery = port(config.listen.discovery)
        if not discovery:
            raise ValueError("listen.discovery is empty: a pod needs it for /healthz, /readyz and discovery")
        return cls(grpc=port(config.listen.grpc), discovery=discovery, http=port(config.listen.http))


# ---------------------------------------------------------------- the config a pod runs


def raw_config(path: str) -> dict[str, Any]:
    """The config file as written (``${NAME}`` references not substituted: they stay references)."""
    with open(path, encoding="utf-8") as file:
        raw = yaml.safe_load(file)
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return raw


def env_references(raw: dict[str, Any]) -> list[str]:
    """Names of the ``${NAME}`` environment references in the raw config: the Secret's keys."""
    text = yaml.safe_dump(raw, sort_keys=True)
    return env_names(text)


def key_files(raw: dict[str, Any]) -> dict[str, str]:
    """Issuer name → Secret key of its ``local_key_file`` (development issuers only)."""
    return {
        str(issuer["name"]): f"{issuer['name']}.pem"
        for issuer in raw.get("issuers") or []
        if isinstance(issuer, dict) and issuer.get("local_key_file")
    }


def pod_config(
    raw: dict[str, Any],
    *,
    grpc: str,
    discovery: str,
    http: str,
    servers: list[str] | None = None,
    mesh_mtls: bool = False,
    shared_secret: bool = False,
) -> str:
    """The operator's config as a pod runs it: listen addresses and key paths rewritten, optionally
    only some ``servers`` (a sidecar serves one). Everything else is kept as written.

    With an HTTP front: ``mesh_mtls`` sets ``listen.http_mesh_mtls`` (a sidecar enforcing mTLS and the
    rendered ALLOW policy guard the port); ``shared_secret`` keeps the config's ``listen.http_shared_secret``
    (the pod's Envoy sends it; Istio's providers cannot, so the mesh layouts drop it).
    """
    result = copy.deepcopy(raw)
    listen: dict[str, Any] = {"grpc": grpc, "discovery": discovery, "http": http}
    secret = (raw.get("listen") or {}).get("http_shared_secret")
    if http and shared_secret and secret:
        listen["http_shared_secret"] = secret
    if http and mesh_mtls:
        listen["http_mesh_mtls"] = True
    result["listen"] = listen
    keys = key_files(raw)
    for issuer in result.get("issuers") or []:
        if isinstance(issuer, dict) and issuer.get("name") in keys:
            issuer["local_key_file"] = f"{KEYS_DIR}/{keys[issuer['name']]}"
    if servers is not None:
        result["servers"] = [s for s in result.get("servers") or [] if s.get("name") in servers]
    return yaml.safe_dump(result, sort_keys=False, default_flow_style=False, width=120, allow_unicode=True)


# ---------------------------------------------------------------- replicas


def replicas(config: Config, requested: int | None) -> int:
    """How many authorizer pods to render: ``requested``, else 2 with a shared store (Redis) and 1 with
    the in-memory one. More than one with the in-memory store is refused unless the config accepts it
    (``store.allow_inconsistent_state``): each replica would keep its own state."""
    shared = config.store.topology != "memory"
    count = requested if requested is not None else (2 if shared else 1)
    if count < 1:
        raise ValueError(f"--replicas {count}: at least 1")
    if count > 1 and not shared and not config.store.allow_inconsistent_state:
        raise ValueError(
            f"--replicas {count} with the in-memory store: {INCONSISTENT_STATE} Set store.url (Redis, shared by "
            "the replicas), or store.allow_inconsistent_state: true to accept it, or render one replica"
        )
    return count


INCONSISTENT_STATE = (
    "each replica would keep its own state: a token revoked through one replica is still accepted by the others, "
    "a session bound on one replica can be taken over through another, and every replica counts rate limits "
    "alone (N replicas allow N times each limit)."
)


def state_warning(config: Config, count: int) -> str | None:
    """What goes wrong with ``count`` replicas sharing no state (printed by ``render``), or None."""
    if count > 1 and config.store.topology == "memory":
        return (
            f"warning: {count} replicas with the in-memory store (store.allow_inconsistent_state): {INCONSISTENT_STATE}"
        )
    return None


# ---------------------------------------------------------------- objects


def meta(name: str, namespace: str | None, **labels: str) -> dict[str, Any]:
    result: dict[str, Any] = {"name": name}
    if namespace:
        result["namespace"] = namespace
    result["labels"] = {"app.kubernetes.io/name": CONTAINER, "app.kubernetes.io/part-of": "mcp-authz", **labels}
    return result


def config_map(name: str, namespace: str | None, text: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta(name, namespace), "data": {CONFIG_FILE: text}}


def secret(name: str, namespace: str | None, raw: dict[str, Any]) -> dict[str, Any]:
    """The Secret the authorizer reads: one empty key per ``${NAME}`` and per development key file.

    Fill it out of band (``kubectl create secret generic ... --dry-run=client -o yaml | kubectl apply -f -``).
    """
    keys = [*env_references(raw), *key_files(raw).values()]
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": meta(name, namespace),
        "type": "Opaque",
        "stringData": dict.fromkeys(keys, ""),
    }


def security_context() -> dict[str, Any]:
    """Non-root, read-only root filesystem, no privilege escalation, no capabilities."""
    return {
        "runAsNonRoot": True,
        "runAsUser": UID,
        "runAsGroup": UID,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def resources(cpu: str = "250m", memory: str = "128Mi", memory_limit: str = "512Mi") -> dict[str, Any]:
    return {"requests": {"cpu": cpu, "memory": memory}, "limits": {"memory": memory_limit}}


def container_ports(ports: Ports) -> list[dict[str, Any]]:
    result = [
        {"name": "grpc-authz", "containerPort": ports.grpc, "protocol": "TCP"},
        {"name": "http-discovery", "containerPort": ports.discovery, "protocol": "TCP"},
    ]
    if ports.http:
        result.append({"name": "http-authz", "containerPort": ports.http, "protocol": "TCP"})
    return result


def probes(ports: Ports, *, grpc_probe: bool) -> dict[str, Any]:
    """/readyz and /healthz on the discovery port; grpc.health.v1 on the gRPC port when kubelet can reach it."""
    result: dict[str, Any] = {
        "startupProbe": {
            "httpGet": {"path": "/healthz", "port": ports.discovery},
            "periodSeconds": 2,
            "failureThreshold": 30,
        },
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": ports.discovery}, "periodSeconds": 5},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": ports.discovery}, "periodSeconds": 10},
    }
    if grpc_probe:
        result["livenessProbe"] = {"grpc": {"port": ports.grpc}, "periodSeconds": 10}
    return result


def env_from_secret(secret_name: str, raw: dict[str, Any], *, optional: bool = False) -> list[dict[str, Any]]:
    return [
        {"name": name, "valueFrom": {"secretKeyRef": {"name": secret_name, "key": name, "optional": optional}}}
        for name in env_references(raw)
    ]


def volumes(config_name: str, secret_name: str, raw: dict[str, Any]) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": config_name}},
        {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
    ]
    files = key_files(raw)
    if files:
        items = [{"key": key, "path": key} for key in files.values()]
        result.append({"name": "keys", "secret": {"secretName": secret_name, "items": items}})
    return result


def volume_mounts(raw: dict[str, Any]) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    if key_files(raw):
        result.append({"name": "keys", "mountPath": KEYS_DIR, "readOnly": True})
    return result


def authorizer_container(
    image: str, ports: Ports, raw: dict[str, Any], secret_name: str, *, grpc_probe: bool
) -> dict[str, Any]:
    """The authorizer container; the image's ENTRYPOINT runs ``mcp-authz serve -c CONFIG_DIR/CONFIG_FILE``."""
    env = env_from_secret(secret_name, raw)
    return {
        "name": CONTAINER,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "ports": container_ports(ports),
        **({"env": env} if env else {}),
        **probes(ports, grpc_probe=grpc_probe),
        "resources": resources(),
        "securityContext": security_context(),
        "volumeMounts": volume_mounts(raw),
    }


# ---------------------------------------------------------------- YAML


class _Dumper(yaml.SafeDumper):
    """Safe YAML without anchors, block style for multi-line strings (configs, templates)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump(objects: list[dict[str, Any]], header: str) -> str:
    """Several objects as one multi-document YAML file; same input, same bytes."""
    docs = [
        yaml.dump(o, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=120, allow_unicode=True)
        for o in objects
    ]
    return header + "---\n".join(docs)
