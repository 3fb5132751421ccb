"""deploy/: every file parses, Kubernetes objects load into the ``kubernetes`` client's (strict) models,
values that must agree across files agree, and the committed files are a fresh render: deploy/envoy/ of
examples/config.yaml (the local stack), deploy/istio/ of examples/production.yaml. The schema validators
(kubernetes-validate, the CRD schemas) run over the same files in test_manifest_schemas.py."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes.client.models as k8s_models
import manifests
import pytest
import yaml
from pydantic import BaseModel

from authz.config.load import parse_config
from authz.config.runtime import Config
from authz.identity.devkey import ensure_key
from authz.render import authorizer_pod, envoy, istio
from authz.render.kubernetes import render_kubernetes

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy"
EXAMPLE = "examples/config.yaml"
KEY_REF = "../.dev/signing-key.pem"
ENVOY = shutil.which("envoy") or str(Path(sys.executable).parent / "envoy")

# Kubernetes core kinds and their models (apiVersion checked too); anything else must be a known CRD kind.
MODELS: dict[tuple[str, str], type[BaseModel]] = {
    ("v1", "ConfigMap"): k8s_models.V1ConfigMap,
    ("v1", "Secret"): k8s_models.V1Secret,
    ("v1", "Service"): k8s_models.V1Service,
    ("v1", "ServiceAccount"): k8s_models.V1ServiceAccount,
    ("apps/v1", "Deployment"): k8s_models.V1Deployment,
    ("autoscaling/v2", "HorizontalPodAutoscaler"): k8s_models.V2HorizontalPodAutoscaler,
    ("policy/v1", "PodDisruptionBudget"): k8s_models.V1PodDisruptionBudget,
    ("networking.k8s.io/v1", "NetworkPolicy"): k8s_models.V1NetworkPolicy,
}
CRDS = {
    ("install.istio.io/v1alpha1", "IstioOperator"),
    ("security.istio.io/v1", "AuthorizationPolicy"),
    ("security.istio.io/v1", "PeerAuthentication"),
    ("networking.istio.io/v1", "VirtualService"),
    ("networking.istio.io/v1", "ServiceEntry"),
    ("networking.istio.io/v1alpha3", "EnvoyFilter"),
    ("telemetry.istio.io/v1", "Telemetry"),
    ("gateway.networking.k8s.io/v1", "HTTPRoute"),
    ("gateway.networking.k8s.io/v1beta1", "ReferenceGrant"),
}
TEMPLATE_EXPR = re.compile(r"\{\{ index \.ObjectMeta\.Annotations `mcp-authz\.io/config` \}\}")


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_key(tmp_path_factory.mktemp("key") / "signing-key.pem")


@pytest.fixture(scope="module")
def example(key: Path) -> Config:
    text = (ROOT / EXAMPLE).read_text(encoding="utf-8")
    return parse_config(text.replace(KEY_REF, str(key)), EXAMPLE)


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return authorizer_pod.raw_config(str(ROOT / EXAMPLE))


@pytest.fixture(scope="module")
def production() -> tuple[Config, dict[str, Any]]:
    config, raw = manifests.production()
    return config, raw


def yaml_files() -> list[Path]:
    """The rendered and shipped manifests (the Helm chart is checked by test_helm_chart.py)."""
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml") and "helm" not in p.parts)


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def objects(name: str) -> list[dict[str, Any]]:
    return documents(DEPLOY / name)


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


def load(obj: dict[str, Any]) -> BaseModel:
    """The object as the kubernetes client's model: unknown fields and missing required ones fail."""
    model = MODELS[(obj["apiVersion"], obj["kind"])]
    return model.model_validate(obj)


def ext_authz_providers() -> dict[str, dict[str, Any]]:
    operator = one(objects("istio/mesh-config.yaml"), "IstioOperator")
    providers = operator["spec"]["meshConfig"]["extensionProviders"]
    return {p["name"]: p for p in providers if "envoyExtAuthzGrpc" in p or "envoyExtAuthzHttp" in p}


def template_pod(name: str = "mcp-authz-github") -> dict[str, Any]:
    """The injection template with the pod's annotation filled in, as Istio's injector would."""
    operator = one(objects("istio/mesh-config.yaml"), "IstioOperator")
    text = operator["spec"]["values"]["sidecarInjectorWebhook"]["templates"][istio.TEMPLATE]
    assert TEMPLATE_EXPR.search(text)
    patch: dict[str, Any] = yaml.safe_load(TEMPLATE_EXPR.sub(name, text))
    return patch


# ---------------------------------------------------------------- every file


def test_there_are_deploy_files() -> None:
    names = {p.relative_to(DEPLOY).as_posix() for p in yaml_files()}
    assert {
        "envoy/envoy.yaml",
        "envoy/kubernetes.yaml",
        "istio/mesh-config.yaml",
        "istio/authorizer-access.yaml",
        "istio/list-filter.yaml",
        "istio/sidecar/sidecar.yaml",
    } <= names


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: p.relative_to(DEPLOY).as_posix())
def test_every_yaml_file_parses_and_every_object_is_known(path: Path) -> None:
    docs = documents(path)
    assert docs
    if path.name == "envoy.yaml":
        return  # an Envoy bootstrap, checked by tests/unit/render/test_envoy.py
    for obj in docs:
        kind = (obj["apiVersion"], obj["kind"])
        assert kind in MODELS or kind in CRDS, kind
        assert obj["metadata"]["name"]
        if kind in MODELS:
            load(obj)


def test_no_object_twice_where_it_is_applied_together() -> None:
    """`kubectl apply -f deploy/istio`, `-f deploy/istio/sidecar` (with the files the sidecar layout shares),
    `-f deploy/envoy`: each (kind, namespace, name) once."""
    for directory in (DEPLOY / "envoy", DEPLOY / "istio", DEPLOY / "istio" / istio.SIDECAR_DIR):
        found = [d for p in sorted(directory.glob("*.yaml")) if p.name != "envoy.yaml" for d in documents(p)]
        assert found and not manifests.duplicates(found), directory
    sidecar = [d for p in sorted((DEPLOY / "istio" / istio.SIDECAR_DIR).glob("*.yaml")) for d in documents(p)]
    shared = [d for name in istio.SIDECAR_LAYOUT_SHARES for d in objects(f"istio/{name}")]
    assert not manifests.duplicates(sidecar + shared)


def test_the_strict_loader_refuses_unknown_and_missing_fields() -> None:
    deployment = one(objects("istio/authorizer.yaml"), "Deployment")
    load(deployment)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    with pytest.raises(ValueError, match="Extra inputs"):
        load({**deployment, "spec": {**deployment["spec"], "replica": 2}})
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    del broken["spec"]["template"]["spec"]["containers"][0]["name"]
    with pytest.raises(ValueError, match="name"):
        load(broken)
    assert container["name"] == authorizer_pod.CONTAINER


def test_injection_template_is_a_pod_patch_the_client_accepts() -> None:
    patch = template_pod()
    pod = k8s_models.V1Pod.model_validate({"apiVersion": "v1", "kind": "Pod", **patch})
    assert pod.metadata is not None
    assert pod.metadata.labels == {istio.SIDECAR_LABEL: "true", istio.CONFIG_LABEL: "mcp-authz-github"}
    assert pod.spec is not None
    [container] = pod.spec.containers
    assert container.name == authorizer_pod.CONTAINER
    volumes = {v.name: v for v in pod.spec.volumes or []}
    assert volumes["mcp-authz-config"].config_map is not None
    assert volumes["mcp-authz-config"].config_map.name == "mcp-authz-github"
    mounts = {m.name for m in container.volume_mounts or []}
    assert mounts <= set(volumes)  # every mount has its volume, all prefixed to stay clear of the app's


# ---------------------------------------------------------------- the committed files


def test_committed_istio_files_are_a_fresh_render(production: tuple[Config, dict[str, Any]]) -> None:
    files = istio.render_istio(*production)
    on_disk = {p.relative_to(DEPLOY / "istio").as_posix() for p in (DEPLOY / "istio").rglob("*.yaml")}
    assert set(files) == on_disk, "deploy/istio/ holds files the render does not write, or lacks some"
    for name, text in files.items():
        assert (DEPLOY / "istio" / name).read_text(encoding="utf-8") == text, (
            f"deploy/istio/{name} is stale: mcp-authz render istio -c examples/production.yaml -o deploy/istio"
        )


def test_committed_kubernetes_manifest_is_a_fresh_render(example: Config, raw: dict[str, Any]) -> None:
    assert (DEPLOY / "envoy" / "kubernetes.yaml").read_text(encoding="utf-8") == render_kubernetes(example, raw), (
        "deploy/envoy/kubernetes.yaml is stale: "
        "mcp-authz render kubernetes -c examples/config.yaml -o deploy/envoy/kubernetes.yaml"
    )


# ---------------------------------------------------------------- values that must agree


def _ports_of_container(container: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container["ports"]}


def _listen_port(address: str) -> int:
    return int(address.rpartition(":")[2])


def test_shared_authorizer_ports_agree(production: tuple[Config, dict[str, Any]]) -> None:
    config_in, _ = production
    docs = objects("istio/authorizer.yaml")
    deployment = one(docs, "Deployment")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    ports = _ports_of_container(container)
    service = one(docs, "Service")
    for port in service["spec"]["ports"]:
        assert port["targetPort"] == ports[port["name"]] == port["port"]
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    config = yaml.safe_load(one(docs, "ConfigMap")["data"][authorizer_pod.CONFIG_FILE])
    assert _listen_port(config["listen"]["grpc"]) == ports["grpc-authz"] == config_in.listen.grpc.port
    assert _listen_port(config["listen"]["discovery"]) == ports["http-discovery"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": ports["http-discovery"]}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": ports["http-discovery"]}
    assert container["livenessProbe"]["grpc"] == {"port": ports["grpc-authz"]}
    # the provider reaches the Service's gRPC port
    grpc = ext_authz_providers()[istio.PROVIDER]["envoyExtAuthzGrpc"]
    assert grpc["service"] == f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"
    assert grpc["port"] == ports["grpc-authz"]
    # Redis is configured: two replicas, the HPA and PDB name and select the Deployment
    assert deployment["spec"]["replicas"] == 2
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]
    # the policies guarding it select its pods and open the ports it listens on
    access = objects("istio/authorizer-access.yaml")
    policy = one(access, "NetworkPolicy")
    assert policy["spec"]["podSelector"] == deployment["spec"]["selector"]
    assert [p["port"] for p in policy["spec"]["ingress"][0]["ports"]] == [ports["grpc-authz"]]
    assert [p["port"] for p in policy["spec"]["ingress"][1]["ports"]] == [ports["http-discovery"]]
    allow = one(access, "AuthorizationPolicy")
    assert allow["spec"]["selector"] == deployment["spec"]["selector"]
    assert deployment["spec"]["template"]["metadata"]["labels"][istio.INJECT_LABEL] == "true"  # its own sidecar


def test_provider_names_agree_between_meshconfig_and_policies() -> None:
    policies = [
        d
        for name in ("istio/authorization-policy.yaml", "istio/sidecar/sidecar.yaml")
        for d in objects(name)
        if d["kind"] == "AuthorizationPolicy"
    ]
    assert policies
    assert {p["spec"]["provider"]["name"] for p in policies} == set(ext_authz_providers())
    operator = one(objects("istio/mesh-config.yaml"), "IstioOperator")
    names = {p["name"] for p in operator["spec"]["meshConfig"]["extensionProviders"]}
    logs = [d for n in ("istio/access-log.yaml", "istio/sidecar/sidecar.yaml") for d in objects(n)]
    telemetry = [d for d in logs if d["kind"] == "Telemetry"]
    assert telemetry
    assert {t["spec"]["accessLogging"][0]["providers"][0]["name"] for t in telemetry} <= names


def test_sidecar_pieces_agree(production: tuple[Config, dict[str, Any]]) -> None:
    config_in, _ = production
    docs = objects("istio/sidecar/sidecar.yaml")
    workloads = objects("istio/sidecar/mcp-servers.yaml")
    entry = one(docs, "ServiceEntry")
    local = ext_authz_providers()[istio.LOCAL_PROVIDER]["envoyExtAuthzGrpc"]
    assert entry["spec"]["hosts"] == [local["service"]] == [istio.LOCAL_GRPC_HOST]
    assert entry["spec"]["ports"][0]["number"] == local["port"]
    pod = template_pod()
    container_ports = _ports_of_container(pod["spec"]["containers"][0])
    assert container_ports["grpc-authz"] == local["port"]
    for server in config_in.servers.values():
        config_map = one(docs, "ConfigMap", istio.sidecar_config_name(server))
        config = yaml.safe_load(config_map["data"][authorizer_pod.CONFIG_FILE])
        assert config["listen"]["grpc"] == f"127.0.0.1:{local['port']}"  # loopback: the pod's Envoy only
        assert [s["name"] for s in config["servers"]] == [server.name]
        deployment = one(workloads, "Deployment", server.name)
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations[istio.CONFIG_ANNOTATION] == config_map["metadata"]["name"]
        assert annotations[istio.TEMPLATES_ANNOTATION] == f"sidecar,{istio.TEMPLATE}"
        assert istio.SERVER_LABEL not in deployment["spec"]["template"]["metadata"]["labels"]  # one CUSTOM provider
        assert deployment["metadata"]["namespace"] == config_map["metadata"]["namespace"]
        # the injected pod's labels (the template's) are what its list filter and access log select
        labels = template_pod(config_map["metadata"]["name"])["metadata"]["labels"]
        selected = [
            d for d in docs if d["kind"] in ("Telemetry", "EnvoyFilter") and server.name in d["metadata"]["name"]
        ]
        assert len(selected) == (2 if server.filter_lists else 1)
        for obj in selected:
            wanted = obj["spec"].get("selector", {}).get("matchLabels") or obj["spec"]["workloadSelector"]["labels"]
            assert wanted.items() <= labels.items()


def test_body_limit_agrees(example: Config, production: tuple[Config, dict[str, Any]]) -> None:
    limit = production[0].envoy.max_request_bytes
    for provider in ext_authz_providers().values():
        body = next(iter(v for k, v in provider.items() if k != "name"))["includeRequestBodyInCheck"]
        assert body == {"maxRequestBytes": limit, "allowPartialMessage": False, "packAsBytes": True}
    [bootstrap] = documents(DEPLOY / "envoy" / "envoy.yaml")
    manager = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    [authz] = [f for f in manager["http_filters"] if f["name"] == "envoy.filters.http.ext_authz"]
    assert authz["typed_config"]["with_request_body"]["max_request_bytes"] == example.envoy.max_request_bytes


def test_discovery_paths_agree(production: tuple[Config, dict[str, Any]]) -> None:
    config = production[0]
    expected = istio.discovery_matches(config)
    assert ("prefix", "/.well-known/oauth-protected-resource") in expected
    assert ("exact", "/realms/mcp/.well-known/openid-configuration") in expected  # the IdP's path issuer
    for server in config.servers.values():  # each server's RFC 9728 URL is under a discovery prefix
        path = server.metadata_url.split("://", 1)[1].partition("/")[2]
        assert any(("/" + path).startswith(p) for kind, p in expected if kind == "prefix")
    service = one(objects("istio/virtual-service.yaml"), "VirtualService")
    [discovery] = [r for r in service["spec"]["http"] if r["name"] == "discovery"]
    assert [next(iter(m["uri"].items())) for m in discovery["match"]] == expected
    route = one(objects("istio/http-route.yaml"), "HTTPRoute")
    kinds = {"PathPrefix": "prefix", "Exact": "exact"}
    first = route["spec"]["rules"][0]
    assert [(kinds[m["path"]["type"]], m["path"]["value"]) for m in first["matches"]] == expected
    authorizer = one(objects("istio/authorizer.yaml"), "Service")
    discovery_port = next(p["port"] for p in authorizer["spec"]["ports"] if p["name"] == "http-discovery")
    assert discovery["route"][0]["destination"]["port"]["number"] == discovery_port == first["backendRefs"][0]["port"]
    for policy in objects("istio/authorization-policy.yaml"):
        assert policy["spec"]["rules"][0]["to"][0]["operation"]["notPaths"] == ["/.well-known/*"]
    assert all(p.startswith("/.well-known/") or p.endswith("/.well-known/openid-configuration") for _, p in expected)


def test_mcp_routes_reach_the_server_services() -> None:
    for layout in ("istio/mcp-servers.yaml", "istio/sidecar/mcp-servers.yaml"):
        services = {s["metadata"]["name"]: s for s in objects(layout) if s["kind"] == "Service"}
        service = one(objects("istio/virtual-service.yaml"), "VirtualService")
        assert len(service["spec"]["http"]) == 1 + len(services)
        for route in service["spec"]["http"][1:]:
            destination = route["route"][0]["destination"]
            target = services[route["name"]]
            assert destination["host"] == f"{route['name']}.{target['metadata']['namespace']}.svc.cluster.local"
            assert destination["port"]["number"] == target["spec"]["ports"][0]["port"]
            assert route["timeout"] == "0s"  # SSE streams


def test_standalone_kubernetes_manifest_agrees(tmp_path: Path, example: Config) -> None:
    docs = objects("envoy/kubernetes.yaml")
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 1  # the in-memory store: one pod, one authorizer
    containers = {c["name"]: c for c in deployment["spec"]["template"]["spec"]["containers"]}
    assert set(containers) == {"envoy", authorizer_pod.CONTAINER, "mcp-server"}
    bootstrap = yaml.safe_load(one(docs, "ConfigMap", "mcp-gateway-envoy")["data"]["envoy.yaml"])
    listener = bootstrap["static_resources"]["listeners"][0]["address"]["socket_address"]
    service = one(docs, "Service")
    assert listener == {"address": "0.0.0.0", "port_value": service["spec"]["ports"][0]["targetPort"]}
    assert _ports_of_container(containers["envoy"]) == {"http-mcp": listener["port_value"]}
    authz = yaml.safe_load(one(docs, "ConfigMap", "mcp-gateway-authz")["data"][authorizer_pod.CONFIG_FILE])
    clusters = {c["name"]: c for c in bootstrap["static_resources"]["clusters"]}
    endpoint = clusters[envoy.AUTHZ_CLUSTER]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert authz["listen"]["grpc"] == "127.0.0.1:{port_value}".format(**endpoint["address"]["socket_address"])
    upstream = clusters[envoy.upstream_cluster_name(example.servers["demo"])]["load_assignment"]["endpoints"][0]
    port = upstream["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["port_value"]
    assert port in _ports_of_container(containers["mcp-server"]).values()
    if Path(ENVOY).is_file():
        path = tmp_path / "envoy.yaml"
        path.write_text(yaml.safe_dump(bootstrap), encoding="utf-8")
        run = subprocess.run([ENVOY, "--mode", "validate", "-c", str(path)], capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.parametrize(
    "name", ["istio/authorizer.yaml", "istio/sidecar/sidecar.yaml", "envoy/kubernetes.yaml"], ids=lambda n: n
)
def test_rendered_pod_configs_load(key: Path, name: str) -> None:
    """The config each pod runs is a valid config (with its Secret's values and key file in place)."""
    configs = [d for d in objects(name) if d["kind"] == "ConfigMap" and authorizer_pod.CONFIG_FILE in d["data"]]
    assert configs
    for config_map in configs:
        text = config_map["data"][authorizer_pod.CONFIG_FILE].replace(authorizer_pod.KEYS_DIR + "/dev.pem", str(key))
        assert authorizer_pod.KEYS_DIR not in text
        with manifests.with_env(manifests.PRODUCTION_ENV):
            parse_config(text, config_map["metadata"]["name"])


def test_the_secret_has_every_key_the_deployment_reads() -> None:
    secret = one(objects("istio/secret.yaml"), "Secret")
    pod = one(objects("istio/authorizer.yaml"), "Deployment")["spec"]["template"]["spec"]
    wanted = {
        item["key"]
        for volume in pod["volumes"]
        if volume.get("secret", {}).get("secretName") == secret["metadata"]["name"]
        for item in volume["secret"]["items"]
    }
    for entry in pod["containers"][0].get("env", []):
        ref = entry["valueFrom"]["secretKeyRef"]
        assert ref["name"] == secret["metadata"]["name"]
        wanted.add(ref["key"])
    assert wanted == set(manifests.PRODUCTION_ENV) == set(secret["stringData"])
    assert (
        secret["metadata"]["namespace"] == one(objects("istio/authorizer.yaml"), "Deployment")["metadata"]["namespace"]
    )


def test_readme_shows_the_rendered_grpc_provider() -> None:
    text = (DEPLOY / "istio" / "README.md").read_text(encoding="utf-8")
    block = text.split("The rendered gRPC provider:", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    [shown] = yaml.safe_load(block)
    assert shown == ext_authz_providers()[istio.PROVIDER]


def test_no_secret_value_is_rendered() -> None:
    for path in yaml_files():
        for obj in documents(path):
            if obj.get("kind") == "Secret":
                assert set(obj.get("stringData", {}).values()) <= {""}
                assert "data" not in obj


def test_cors_agrees_between_standalone_envoy_and_istio_gateway(production: tuple[Config, dict[str, Any]]) -> None:
    """A browser client of a listed origin gets the same CORS answer in both ways in."""
    config, _ = production
    bootstrap = envoy.render_envoy(config)
    manager = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    assert manager["http_filters"][0]["name"] == "envoy.filters.http.cors"  # before ext_authz
    routes = manager["route_config"]["virtual_hosts"][0]["routes"]
    envoy_policies = [
        r["typed_per_filter_config"]["envoy.filters.http.cors"]
        for r in routes
        if "envoy.filters.http.cors" in r.get("typed_per_filter_config", {})
    ]
    assert envoy_policies
    [service] = [d for d in objects("istio/virtual-service.yaml") if d["kind"] == "VirtualService"]
    [gateway] = [r["corsPolicy"] for r in service["spec"]["http"] if "corsPolicy" in r]
    for policy in envoy_policies:
        origins = [m["exact"] for m in policy["allow_origin_string_match"]]
        assert origins == [o["exact"] for o in gateway["allowOrigins"]]
        assert policy["allow_headers"].split(", ") == gateway["allowHeaders"]
        assert policy["expose_headers"].split(", ") == gateway["exposeHeaders"]
        assert policy["allow_methods"].split(", ") == gateway["allowMethods"]


def test_the_production_example_passes_config_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """examples/production.yaml checks with placeholders for its ${NAME}s; it renders for Istio (the committed
    deploy/istio above) and for Helm (test_helm_chart.py)."""
    from authz.cli import main

    for name, value in manifests.PRODUCTION_ENV.items():
        monkeypatch.setenv(name, value)
    assert main(["config", "check", str(ROOT / manifests.PRODUCTION)]) == 0


def test_the_kubernetes_pod_gives_envoy_the_shared_secret(key: Path) -> None:
    """With listen.http_shared_secret the pod's Envoy container reads it from the Secret the authorizer reads."""
    spec = {
        "listen": {
            "grpc": "127.0.0.1:9191",
            "http": "127.0.0.1:9193",
            "discovery": "127.0.0.1:9192",
            "http_shared_secret": "${MCP_AUTHZ_HTTP_SHARED_SECRET}",
        },
        "issuers": [{"name": "dev", "issuer": "https://mcp.example.com/dev", "local_key_file": str(key)}],
        "servers": [{"name": "demo", "resource": "https://mcp.example.com/mcp", "upstream": "127.0.0.1:8000"}],
        "envoy": {"authorizer": "http"},
    }
    text = yaml.safe_dump(spec)
    with manifests.with_env({"MCP_AUTHZ_HTTP_SHARED_SECRET": "a-secret-of-sixteen+"}):
        config = parse_config(text, "secret.yaml")
    docs = manifests.documents(render_kubernetes(config, yaml.safe_load(text)))
    containers = {c["name"]: c for c in one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]}
    ref = {"name": "mcp-gateway-secrets", "key": "MCP_AUTHZ_HTTP_SHARED_SECRET", "optional": False}
    assert containers["envoy"]["env"] == [{"name": "MCP_AUTHZ_HTTP_SHARED_SECRET", "valueFrom": {"secretKeyRef": ref}}]
    assert [e["name"] for e in containers[authorizer_pod.CONTAINER]["env"]] == ["MCP_AUTHZ_HTTP_SHARED_SECRET"]
    bootstrap = yaml.safe_load(one(docs, "ConfigMap", "mcp-gateway-envoy")["data"]["envoy.yaml"])
    assert "%ENVIRONMENT(MCP_AUTHZ_HTTP_SHARED_SECRET)%" in yaml.safe_dump(bootstrap)
    pod_config = yaml.safe_load(one(docs, "ConfigMap", "mcp-gateway-authz")["data"][authorizer_pod.CONFIG_FILE])
    assert pod_config["listen"]["http_shared_secret"] == "${MCP_AUTHZ_HTTP_SHARED_SECRET}"
