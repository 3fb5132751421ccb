"""deploy/: every file parses, Kubernetes objects load into the ``kubernetes`` client's (strict) models,
values that must agree across files agree, and the committed files are a fresh render of the example."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes.client.models as k8s_models
import pytest
import yaml
from pydantic import BaseModel

from authz.config.load import parse_config
from authz.config.runtime import Config, HostPort
from authz.identity.devkey import ensure_key
from authz.render import authorizer_pod, envoy, istio
from authz.render.kubernetes import render_kubernetes

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy"
EXAMPLE = "examples/config.yaml"
KEY_REF = ".dev/signing-key.pem"
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
}
CRDS = {
    ("install.istio.io/v1alpha1", "IstioOperator"),
    ("security.istio.io/v1", "AuthorizationPolicy"),
    ("networking.istio.io/v1", "VirtualService"),
    ("networking.istio.io/v1", "ServiceEntry"),
    ("gateway.networking.k8s.io/v1", "HTTPRoute"),
    ("gateway.networking.k8s.io/v1beta1", "ReferenceGrant"),
    ("networking.istio.io/v1alpha3", "EnvoyFilter"),  # the hand-written ext_proc insertion (issue 9)
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


def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))


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


def template_pod(name: str = "mcp-authz-demo") -> dict[str, Any]:
    """The injection template with the pod's annotation filled in, as Istio's injector would."""
    operator = one(objects("istio/mesh-config.yaml"), "IstioOperator")
    text = operator["spec"]["values"]["sidecarInjectorWebhook"]["templates"][istio.TEMPLATE]
    assert TEMPLATE_EXPR.search(text)
    patch: dict[str, Any] = yaml.safe_load(TEMPLATE_EXPR.sub(name, text))
    return patch


# ---------------------------------------------------------------- every file


def test_there_are_deploy_files() -> None:
    names = {p.relative_to(DEPLOY).as_posix() for p in yaml_files()}
    assert {"envoy/envoy.yaml", "envoy/kubernetes.yaml", "istio/mesh-config.yaml", "istio/sidecar.yaml"} <= names


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: p.relative_to(DEPLOY).as_posix())
def test_every_yaml_file_parses_and_every_object_is_known(path: Path) -> None:
    docs = documents(path)
    assert docs
    if path.name == "envoy.yaml":
        return  # an Envoy bootstrap, checked by tests/unit/test_render_envoy.py
    for obj in docs:
        kind = (obj["apiVersion"], obj["kind"])
        assert kind in MODELS or kind in CRDS, kind
        assert obj["metadata"]["name"]
        if kind in MODELS:
            load(obj)


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
    assert pod.metadata is not None and pod.metadata.labels == {istio.SIDECAR_LABEL: "true"}
    assert pod.spec is not None
    [container] = pod.spec.containers
    assert container.name == authorizer_pod.CONTAINER
    volumes = {v.name: v for v in pod.spec.volumes or []}
    assert volumes["mcp-authz-config"].config_map is not None
    assert volumes["mcp-authz-config"].config_map.name == "mcp-authz-demo"
    mounts = {m.name for m in container.volume_mounts or []}
    assert mounts <= set(volumes)  # every mount has its volume, all prefixed to stay clear of the app's


# ---------------------------------------------------------------- the committed files


def test_committed_istio_files_are_a_fresh_render(example: Config, raw: dict[str, Any]) -> None:
    files = istio.render_istio(example, raw)
    on_disk = {p.name for p in (DEPLOY / "istio").glob("*.yaml")}
    assert set(files) <= on_disk, "deploy/istio/ lacks rendered files"
    for extra in on_disk - set(files):  # anything else must say it is not rendered
        assert "Hand-written (not rendered)" in (DEPLOY / "istio" / extra).read_text(encoding="utf-8")[:1000], extra
    for name, text in files.items():
        assert (DEPLOY / "istio" / name).read_text(encoding="utf-8") == text, (
            f"deploy/istio/{name} is stale: mcp-authz render istio -c examples/config.yaml -o deploy/istio"
        )


def test_committed_kubernetes_manifest_is_a_fresh_render(example: Config, raw: dict[str, Any]) -> None:
    assert (DEPLOY / "envoy" / "kubernetes.yaml").read_text(encoding="utf-8") == render_kubernetes(example, raw), (
        "deploy/envoy/kubernetes.yaml is stale: "
        "mcp-authz render kubernetes -c examples/config.yaml -o deploy/envoy/kubernetes.yaml"
    )


# ---------------------------------------------------------------- values that must agree


def _ports_of_container(container: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container["ports"]}


def _listen_port(address: str | HostPort) -> int:
    return HostPort.of(address).port


def test_shared_authorizer_ports_agree(example: Config) -> None:
    docs = objects("istio/authorizer.yaml")
    deployment = one(docs, "Deployment")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    ports = _ports_of_container(container)
    service = one(docs, "Service")
    for port in service["spec"]["ports"]:
        assert port["targetPort"] == ports[port["name"]] == port["port"]
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    config = yaml.safe_load(one(docs, "ConfigMap")["data"][authorizer_pod.CONFIG_FILE])
    assert _listen_port(config["listen"]["grpc"]) == ports["grpc-authz"] == _listen_port(example.listen.grpc)
    assert _listen_port(config["listen"]["discovery"]) == ports["http-discovery"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": ports["http-discovery"]}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": ports["http-discovery"]}
    assert container["livenessProbe"]["grpc"] == {"port": ports["grpc-authz"]}
    # the provider reaches the Service's gRPC port
    operator = one(objects("istio/mesh-config.yaml"), "IstioOperator")
    providers = {p["name"]: p for p in operator["spec"]["meshConfig"]["extensionProviders"]}
    grpc = providers[istio.PROVIDER]["envoyExtAuthzGrpc"]
    assert grpc["service"] == f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"
    assert grpc["port"] == ports["grpc-authz"]
    # the HPA and PDB name and select the Deployment
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]


def test_provider_names_agree_between_meshconfig_and_policies() -> None:
    operator = one(objects("istio/mesh-config.yaml"), "IstioOperator")
    providers = {p["name"] for p in operator["spec"]["meshConfig"]["extensionProviders"]}
    policies = [
        d
        for name in ("istio/authorization-policy.yaml", "istio/sidecar.yaml")
        for d in objects(name)
        if d["kind"] == "AuthorizationPolicy"
    ]
    assert policies
    assert {p["spec"]["provider"]["name"] for p in policies} == providers


def test_sidecar_pieces_agree(example: Config) -> None:
    docs = objects("istio/sidecar.yaml")
    entry = one(docs, "ServiceEntry")
    operator = one(objects("istio/mesh-config.yaml"), "IstioOperator")
    providers = {p["name"]: p for p in operator["spec"]["meshConfig"]["extensionProviders"]}
    local = providers[istio.LOCAL_PROVIDER]["envoyExtAuthzGrpc"]
    assert entry["spec"]["hosts"] == [local["service"]] == [istio.LOCAL_GRPC_HOST]
    assert entry["spec"]["ports"][0]["number"] == local["port"]
    pod = template_pod()
    container_ports = _ports_of_container(pod["spec"]["containers"][0])
    assert container_ports["grpc-authz"] == local["port"]
    for server in example.servers.values():
        config_map = one(docs, "ConfigMap", istio.sidecar_config_name(server))
        config = yaml.safe_load(config_map["data"][authorizer_pod.CONFIG_FILE])
        assert config["listen"]["grpc"] == f"127.0.0.1:{local['port']}"  # loopback: the pod's Envoy only
        assert [s["name"] for s in config["servers"]] == [server.name]
        deployment = one(docs, "Deployment", server.name)
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations[istio.CONFIG_ANNOTATION] == config_map["metadata"]["name"]
        assert annotations[istio.TEMPLATES_ANNOTATION] == f"sidecar,{istio.TEMPLATE}"
        assert istio.SERVER_LABEL not in deployment["spec"]["template"]["metadata"]["labels"]  # one CUSTOM provider
        assert deployment["metadata"]["namespace"] == config_map["metadata"]["namespace"]


def test_body_limit_agrees(example: Config) -> None:
    limit = example.envoy.max_request_bytes
    operator = one(objects("istio/mesh-config.yaml"), "IstioOperator")
    for provider in operator["spec"]["meshConfig"]["extensionProviders"]:
        body = next(iter(v for k, v in provider.items() if k != "name"))["includeRequestBodyInCheck"]
        assert body == {"maxRequestBytes": limit, "allowPartialMessage": False, "packAsBytes": True}
    [bootstrap] = documents(DEPLOY / "envoy" / "envoy.yaml")
    manager = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    [authz] = [f for f in manager["http_filters"] if f["name"] == "envoy.filters.http.ext_authz"]
    assert authz["typed_config"]["with_request_body"]["max_request_bytes"] == limit


def test_discovery_paths_agree(example: Config) -> None:
    expected = istio.discovery_matches(example)
    assert ("prefix", "/.well-known/oauth-protected-resource") in expected
    for server in example.servers.values():  # each server's RFC 9728 URL is under a discovery prefix
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
    policy = one(objects("istio/authorization-policy.yaml"), "AuthorizationPolicy")
    excluded = policy["spec"]["rules"][0]["to"][0]["operation"]["notPaths"]
    assert excluded == ["/.well-known/*"]
    assert all(p.startswith("/.well-known/") for kind, p in expected if p != "/jwks/")


def test_mcp_routes_reach_the_server_services() -> None:
    services = {s["metadata"]["name"]: s for s in objects("istio/mcp-servers.yaml") if s["kind"] == "Service"}
    service = one(objects("istio/virtual-service.yaml"), "VirtualService")
    for route in service["spec"]["http"][1:]:
        destination = route["route"][0]["destination"]
        target = services[route["name"]]
        assert destination["host"] == f"{route['name']}.{target['metadata']['namespace']}.svc.cluster.local"
        assert destination["port"]["number"] == target["spec"]["ports"][0]["port"]
        assert route["timeout"] == "0s"  # SSE streams


def test_standalone_kubernetes_manifest_agrees(tmp_path: Path, example: Config) -> None:
    docs = objects("envoy/kubernetes.yaml")
    deployment = one(docs, "Deployment")
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
    "name", ["istio/authorizer.yaml", "istio/sidecar.yaml", "envoy/kubernetes.yaml"], ids=lambda n: n
)
def test_rendered_pod_configs_load(key: Path, name: str) -> None:
    """The config each pod runs is a valid config (with its Secret's key file in place)."""
    configs = [d for d in objects(name) if d["kind"] == "ConfigMap" and authorizer_pod.CONFIG_FILE in d["data"]]
    assert configs
    for config_map in configs:
        text = config_map["data"][authorizer_pod.CONFIG_FILE].replace(authorizer_pod.KEYS_DIR + "/dev.pem", str(key))
        assert authorizer_pod.KEYS_DIR not in text
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
    assert wanted and wanted == set(secret["stringData"])
    assert (
        secret["metadata"]["namespace"] == one(objects("istio/authorizer.yaml"), "Deployment")["metadata"]["namespace"]
    )


def test_readme_shows_the_rendered_grpc_provider() -> None:
    text = (DEPLOY / "istio" / "README.md").read_text(encoding="utf-8")
    block = text.split("The rendered gRPC provider:", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    [shown] = yaml.safe_load(block)
    operator = one(objects("istio/mesh-config.yaml"), "IstioOperator")
    assert shown == operator["spec"]["meshConfig"]["extensionProviders"][0]


def test_no_secret_value_is_rendered() -> None:
    for path in yaml_files():
        for obj in documents(path):
            if obj.get("kind") == "Secret":
                assert set(obj.get("stringData", {}).values()) <= {""}
                assert "data" not in obj


def test_cors_agrees_between_standalone_envoy_and_istio_gateway() -> None:
    """A browser client of a listed origin gets the same CORS answer in both ways in."""
    [bootstrap] = documents(DEPLOY / "envoy" / "envoy.yaml")
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
    [istio] = [r["corsPolicy"] for r in service["spec"]["http"] if "corsPolicy" in r]
    for policy in envoy_policies:
        assert [m["exact"] for m in policy["allow_origin_string_match"]] == [o["exact"] for o in istio["allowOrigins"]]
        assert policy["allow_headers"].split(", ") == istio["allowHeaders"]
        assert policy["expose_headers"].split(", ") == istio["exposeHeaders"]
        assert policy["allow_methods"].split(", ") == istio["allowMethods"]
