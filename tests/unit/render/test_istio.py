"""authz.render.istio: the Istio objects carry the fields and values issue 7 names, both providers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import manifests
import pytest
import yaml

from authz import contract
from authz.cli import main
from authz.config.load import parse_config
from authz.config.runtime import Config
from authz.identity.devkey import ensure_key
from authz.render import authorizer_pod, envoy, istio

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_key(tmp_path_factory.mktemp("key") / "signing-key.pem")


def spec(key: Path, *, authorizer: str = "grpc", servers: int = 1) -> dict[str, Any]:
    listen = {"grpc": "127.0.0.1:9191", "discovery": "127.0.0.1:9192"}
    if authorizer == "http":
        listen["http"] = "127.0.0.1:9193"
    entries: list[dict[str, Any]] = [
        {
            "name": "demo",
            "resource": "https://mcp.example.com/mcp",
            "upstream": "127.0.0.1:8000",
            "proxy": {"preset": "oauth2-proxy", "trusted_cidrs": ["10.0.0.0/8"]},
            "identity": ["jwt", "proxy"],
        },
        {"name": "tools", "resource": "https://tools.example.com/", "upstream": "127.0.0.1:8001"},
    ]
    return {
        "listen": listen,
        "issuers": [
            {"name": "dev", "issuer": "https://mcp.example.com/dev", "local_key_file": str(key)},
            {"name": "corp", "issuer": "https://login.example.com/tenant", "jwks_uri": "https://login.example.com/k"},
            {"name": "cloud", "issuer": "https://id.example.net", "jwks_uri": "https://id.example.net/keys"},
        ],
        "servers": entries[:servers],
        "envoy": {"listen": "127.0.0.1:8080", "authorizer": authorizer, "max_request_bytes": 65536, "timeout_ms": 300},
    }


def load(data: dict[str, Any]) -> tuple[Config, dict[str, Any]]:
    text = yaml.safe_dump(data)
    return parse_config(text, "test.yaml"), yaml.safe_load(text)


def docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def providers(files: dict[str, str], *, logs: bool = False) -> dict[str, dict[str, Any]]:
    """The MeshConfig's ext_authz providers (and with ``logs`` the access log providers too)."""
    [operator] = docs(files["mesh-config.yaml"])
    found = operator["spec"]["meshConfig"]["extensionProviders"]
    return {p["name"]: p for p in found if logs or "envoyFileAccessLog" not in p}


def test_grpc_provider_has_only_the_grpc_fields(key: Path) -> None:
    files = istio.render_istio(*load(spec(key)))
    provider = providers(files)[istio.PROVIDER]
    assert set(provider) == {"name", "envoyExtAuthzGrpc"}
    grpc = provider["envoyExtAuthzGrpc"]
    allowed = {
        "service",
        "port",
        "timeout",
        "failOpen",
        "clearRouteCache",
        "statusOnError",
        "includeRequestBodyInCheck",
    }
    assert set(grpc) <= allowed  # headersTo*/includeRequestHeadersInCheck exist on the HTTP provider only
    assert grpc["timeout"] == "0.3s"  # always set: Istio's default is 600 s
    assert grpc["failOpen"] is False
    assert grpc["statusOnError"] == "503"
    assert grpc["includeRequestBodyInCheck"] == {
        "maxRequestBytes": 65536,
        "allowPartialMessage": False,
        "packAsBytes": True,
    }
    assert grpc["service"] == "mcp-authz.mcp-authz.svc.cluster.local" and grpc["port"] == 9191


def test_custom_policy_selects_the_mcp_workload_and_skips_discovery(key: Path) -> None:
    config, raw = load(spec(key))
    [policy] = docs(istio.render_istio(config, raw)["authorization-policy.yaml"])
    assert policy["apiVersion"] == "security.istio.io/v1"
    assert policy["spec"]["action"] == "CUSTOM"
    assert policy["spec"]["provider"] == {"name": istio.PROVIDER}
    assert policy["spec"]["selector"] == {"matchLabels": {istio.SERVER_LABEL: "demo"}}
    assert policy["spec"]["rules"] == [{"to": [{"operation": {"notPaths": ["/.well-known/*"]}}]}]


def test_http_provider_per_server_with_the_header_lists_of_the_envoy_chain(key: Path) -> None:
    config, raw = load(spec(key, authorizer="http", servers=2))
    files = istio.render_istio(config, raw)
    found = providers(files)
    assert set(found) == {"mcp-authz-demo", "mcp-authz-tools", istio.LOCAL_PROVIDER}
    bootstrap = envoy.render_envoy(config)
    manager = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    filter_config = manager["http_filters"][0]["typed_config"]
    service = filter_config["http_service"]

    def names(matcher: dict[str, Any]) -> list[str]:
        return [p["exact"] for p in matcher["patterns"]]

    for name in ("demo", "tools"):
        http = found[f"mcp-authz-{name}"]["envoyExtAuthzHttp"]
        assert http["port"] == 9193 and http["failOpen"] is False and http["timeout"] == "0.3s"
        assert http["includeRequestHeadersInCheck"] == names(filter_config["allowed_headers"])
        assert "x-auth-request-user" in http["includeRequestHeadersInCheck"]  # the trusted proxy's header
        assert not [h for h in http["includeRequestHeadersInCheck"] if h.startswith("x-mcp-authz-")]
        assert http["headersToUpstreamOnAllow"] == names(service["authorization_response"]["allowed_upstream_headers"])
        assert "x-mcp-subject" in http["headersToUpstreamOnAllow"]
        assert http["headersToDownstreamOnDeny"] == names(service["authorization_response"]["allowed_client_headers"])
        assert "www-authenticate" in http["headersToDownstreamOnDeny"]
        added = http["includeAdditionalHeadersInCheck"]
        assert added[contract.SERVER_HEADER] == name  # names the server: no context extension in Istio
        envoy_added = {h["key"]: h["value"] for h in service["authorization_request"]["headers_to_add"]}
        assert {k: v for k, v in added.items() if k != contract.SERVER_HEADER} == {
            k: v for k, v in envoy_added.items() if k != contract.SERVER_HEADER
        }
    local = found[istio.LOCAL_PROVIDER]["envoyExtAuthzHttp"]
    assert local["service"] == istio.LOCAL_HTTP_HOST
    assert contract.SERVER_HEADER not in local["includeAdditionalHeadersInCheck"]  # a sidecar serves one server
    policies = {
        p["spec"]["selector"]["matchLabels"][istio.SERVER_LABEL]: p for p in docs(files["authorization-policy.yaml"])
    }
    assert {k: p["spec"]["provider"]["name"] for k, p in policies.items()} == {
        "demo": "mcp-authz-demo",
        "tools": "mcp-authz-tools",
    }
    [entry] = [d for d in docs(files[f"{istio.SIDECAR_DIR}/sidecar.yaml"]) if d["kind"] == "ServiceEntry"]
    assert entry["spec"]["hosts"] == [istio.LOCAL_HTTP_HOST]
    assert entry["spec"]["ports"] == [{"name": "http", "number": 9193, "protocol": "HTTP"}]
    service_ports = {
        p["name"] for d in docs(files["authorizer.yaml"]) if d["kind"] == "Service" for p in d["spec"]["ports"]
    }
    assert service_ports == {"grpc-authz", "http-discovery", "http-authz"}


def test_grpc_with_several_servers_shares_one_provider_and_sidecar_only_has_none(key: Path) -> None:
    config, raw = load(spec(key, servers=2))
    shared = istio.render_istio(config, raw)  # the authorizer tells them apart by host and path
    assert set(providers(shared)) == {istio.PROVIDER, istio.LOCAL_PROVIDER}
    policies = [d for d in docs(shared["authorization-policy.yaml"]) if d["kind"] == "AuthorizationPolicy"]
    assert {p["spec"]["provider"]["name"] for p in policies} == {istio.PROVIDER}
    assert len(policies) == 2
    files = istio.render_istio(config, raw, istio.Options(sidecar_only=True))
    assert "authorization-policy.yaml" not in files and "mcp-servers.yaml" not in files
    assert "access-log.yaml" not in files and "list-filter.yaml" not in files
    assert set(providers(files)) == {istio.LOCAL_PROVIDER}
    sidecar = docs(files[f"{istio.SIDECAR_DIR}/sidecar.yaml"])
    maps = {d["metadata"]["name"] for d in sidecar if d["kind"] == "ConfigMap"}
    assert maps == {"mcp-authz-demo", "mcp-authz-tools"}
    [policy] = [d for d in sidecar if d["kind"] == "AuthorizationPolicy"]
    assert policy["spec"]["provider"] == {"name": istio.LOCAL_PROVIDER}


def test_sidecar_service_entry_as_istio_sample(key: Path) -> None:
    files = istio.render_istio(*load(spec(key)))
    entry, policy = docs(files[f"{istio.SIDECAR_DIR}/sidecar.yaml"])[:2]
    assert entry["kind"] == "ServiceEntry"
    assert entry["spec"] == {
        "hosts": ["ext-authz-grpc.local"],
        "endpoints": [{"address": "127.0.0.1"}],
        "ports": [{"name": "grpc", "number": 9191, "protocol": "GRPC"}],
        "resolution": "STATIC",
    }
    assert policy["spec"]["provider"] == {"name": istio.LOCAL_PROVIDER}
    assert policy["spec"]["selector"] == {"matchLabels": {istio.SIDECAR_LABEL: "true"}}
    local = providers(files)[istio.LOCAL_PROVIDER]["envoyExtAuthzGrpc"]
    assert local["service"] == "ext-authz-grpc.local" and local["port"] == 9191


def test_routing_both_apis(key: Path) -> None:
    config, raw = load(spec(key, authorizer="http", servers=2))
    files = istio.render_istio(config, raw)
    expected = [
        ("prefix", "/.well-known/oauth-protected-resource"),
        ("prefix", "/.well-known/oauth-authorization-server"),
        ("prefix", "/.well-known/openid-configuration"),
        ("exact", "/tenant/.well-known/openid-configuration"),  # OIDC appended form of a path issuer
        ("prefix", "/jwks/"),  # the development issuer's keys
    ]
    assert istio.discovery_matches(config) == expected
    services = {d["spec"]["hosts"][0]: d for d in docs(files["virtual-service.yaml"])}
    assert set(services) == {"mcp.example.com", "tools.example.com"}
    routes = services["mcp.example.com"]["spec"]["http"]
    assert routes[0]["route"][0]["destination"]["host"] == "mcp-authz.mcp-authz.svc.cluster.local"
    assert routes[1]["match"] == [{"uri": {"exact": "/mcp"}}, {"uri": {"prefix": "/mcp/"}}]
    assert services["tools.example.com"]["spec"]["http"][1]["match"] == [{"uri": {"prefix": "/"}}]
    assert services["mcp.example.com"]["spec"]["gateways"] == ["istio-system/mcp-gateway"]
    http_routes = [d for d in docs(files["http-route.yaml"]) if d["kind"] == "HTTPRoute"]
    assert {r["spec"]["hostnames"][0] for r in http_routes} == set(services)
    for route in http_routes:
        assert route["spec"]["parentRefs"] == [{"name": "mcp-gateway", "namespace": "istio-system"}]
        assert route["spec"]["rules"][0]["backendRefs"] == [
            {"name": "mcp-authz", "namespace": "mcp-authz", "port": 9192}
        ]
    [grant] = [d for d in docs(files["http-route.yaml"]) if d["kind"] == "ReferenceGrant"]
    assert grant["metadata"]["namespace"] == "mcp-authz"
    assert grant["spec"]["from"][0]["namespace"] == "mcp"


def test_authorizer_hardening(key: Path) -> None:
    config, raw = load(spec(key))
    files = istio.render_istio(config, raw)
    objects = {d["kind"]: d for d in docs(files["authorizer.yaml"]) + docs(files["secret.yaml"])}
    # the in-memory store: one replica, so no autoscaler and no budget (it would block every drain)
    assert set(objects) == {"ConfigMap", "Secret", "ServiceAccount", "Deployment", "Service"}
    assert objects["Deployment"]["spec"]["replicas"] == 1
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": authorizer_pod.UID,
        "runAsGroup": authorizer_pod.UID,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert container["resources"]["requests"] == {"cpu": "250m", "memory": "128Mi"}
    assert pod["automountServiceAccountToken"] is False
    config = yaml.safe_load(objects["ConfigMap"]["data"]["config.yaml"])
    assert config["listen"] == {"grpc": "0.0.0.0:9191", "discovery": "0.0.0.0:9192", "http": ""}
    assert config["issuers"][0]["local_key_file"] == f"{authorizer_pod.KEYS_DIR}/dev.pem"
    assert objects["Secret"]["stringData"] == {"dev.pem": ""}
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {authorizer_pod.CONFIG_DIR, authorizer_pod.KEYS_DIR, "/tmp"} <= mounts
    assert objects["Deployment"]["spec"]["template"]["metadata"]["labels"][istio.INJECT_LABEL] == "true"


def test_secrets_come_from_the_secret_through_the_environment(key: Path) -> None:
    """``${NAME}`` stays a reference in the ConfigMap; the Deployment takes NAME from the Secret."""
    data = spec(key)
    data["issuers"][1]["jwks_uri"] = "https://login.example.com/k?tenant=${TENANT_TOKEN}"
    text = yaml.safe_dump(data)
    config = parse_config(text.replace("${TENANT_TOKEN}", "x"), "test.yaml")
    files = istio.render_istio(config, yaml.safe_load(text))
    objects = {d["kind"]: d for d in docs(files["authorizer.yaml"]) + docs(files["secret.yaml"])}
    assert "${TENANT_TOKEN}" in objects["ConfigMap"]["data"]["config.yaml"]
    assert objects["Secret"]["stringData"] == {"TENANT_TOKEN": "", "dev.pem": ""}
    [container] = objects["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert container["env"] == [
        {
            "name": "TENANT_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": "mcp-authz-secrets", "key": "TENANT_TOKEN", "optional": False}},
        }
    ]
    [operator] = docs(files["mesh-config.yaml"])
    # the sidecar template takes the same variable from the pod's own Secret
    assert "TENANT_TOKEN" in operator["spec"]["values"]["sidecarInjectorWebhook"]["templates"]["mcp-authz"]


def test_cli_writes_the_directory_and_refuses_bad_input(
    tmp_path: Path, key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(spec(key)), encoding="utf-8")
    out = tmp_path / "istio"
    assert main(["render", "istio", "-c", str(good), "-o", str(out), "--image", "registry.example/authz:1"]) == 0
    written = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert written == set(istio.render_istio(*load(spec(key))))
    assert "registry.example/authz:1" in (out / "authorizer.yaml").read_text(encoding="utf-8")
    bad = tmp_path / "bad.yaml"
    no_discovery = spec(key)
    no_discovery["listen"]["discovery"] = ""
    bad.write_text(yaml.safe_dump(no_discovery), encoding="utf-8")
    empty = tmp_path / "nothing"
    assert main(["render", "istio", "-c", str(bad), "-o", str(empty)]) == 2
    assert "listen.discovery is empty" in capsys.readouterr().err
    assert not empty.exists()  # nothing written
    assert main(["render", "kubernetes", "-c", str(good), "-o", str(tmp_path / "k.yaml")]) == 0
    assert "kind: Deployment" in (tmp_path / "k.yaml").read_text(encoding="utf-8")


def test_a_pod_needs_the_discovery_port(key: Path) -> None:
    data = spec(key)
    data["listen"]["discovery"] = ""
    with pytest.raises(ValueError, match=r"listen\.discovery is empty"):
        istio.render_istio(*load(data))


# ---------------------------------------------------------------- issue 17: files that apply, safely


def variants(key: Path) -> dict[str, dict[str, str]]:
    """``render istio`` outputs: both providers, several servers, list filtering, the sidecar layout alone."""
    lists = spec(key, servers=2)
    lists["servers"][1]["filter_lists"] = True
    return {
        "grpc": istio.render_istio(*load(spec(key))),
        "http-two-servers": istio.render_istio(*load(spec(key, authorizer="http", servers=2))),
        "lists": istio.render_istio(*load(lists)),
        "sidecar-only": istio.render_istio(*load(spec(key, servers=2)), istio.Options(sidecar_only=True)),
    }


def test_no_object_is_written_twice_where_it_is_applied_together(key: Path) -> None:
    """`kubectl apply -f DIR` (and `-f DIR/sidecar` with the files the sidecar layout shares) never meets
    the same (kind, namespace, name) twice: the old render wrote Deployment mcp/demo in two files of DIR."""
    for variant, files in variants(key).items():
        for directory, objects in manifests.directories(files).items():
            assert not manifests.duplicates(objects), (variant, directory)
        sidecar = [d for name, text in files.items() if name.startswith(f"{istio.SIDECAR_DIR}/") for d in docs(text)]
        assert sidecar, variant
        shared_too = [d for name in istio.SIDECAR_LAYOUT_SHARES if name in files for d in docs(files[name])]
        assert not manifests.duplicates(sidecar + shared_too), variant


@pytest.mark.parametrize(
    "resource", ["http://127.0.0.1:8080/mcp", "https://[2001:db8::1]/mcp", "https://10.1.2.3/"], ids=str
)
def test_a_host_gateway_api_rejects_is_refused_naming_the_key(key: Path, resource: str) -> None:
    data = spec(key, servers=2)
    data["servers"][1]["resource"] = resource
    with pytest.raises(ValueError, match=r"servers\[1\]\.resource: .*IP address") as refused:
        istio.render_istio(*load(data))
    assert "HTTPRoute" in str(refused.value)


def test_the_cli_refuses_an_ip_host_without_writing(
    tmp_path: Path, key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = spec(key)
    data["servers"][0]["resource"] = "http://127.0.0.1:8080/mcp"
    path = tmp_path / "ip.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    assert main(["render", "istio", "-c", str(path), "-o", str(tmp_path / "out")]) == 2
    assert "servers[0].resource" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_list_filter_envoyfilter_is_rendered_for_both_layouts(key: Path) -> None:
    data = spec(key, servers=2)
    data["servers"][1]["filter_lists"] = True
    config, raw = load(data)
    files = istio.render_istio(config, raw)
    want = envoy.to_json(envoy.ext_proc_filter(config))
    layouts = {
        "list-filter.yaml": ({istio.SERVER_LABEL: "tools"}, "outbound|9191||mcp-authz.mcp-authz.svc.cluster.local"),
        f"{istio.SIDECAR_DIR}/sidecar.yaml": (
            {istio.SIDECAR_LABEL: "true", istio.CONFIG_LABEL: "mcp-authz-tools"},
            "outbound|9191||ext-authz-grpc.local",
        ),
    }
    for name, (selector, cluster) in layouts.items():
        [found] = [d for d in docs(files[name]) if d["kind"] == "EnvoyFilter"]  # `tools` only: demo has no lists
        assert found["spec"]["workloadSelector"] == {"labels": selector}
        insert, merge = found["spec"]["configPatches"]
        assert insert["match"]["context"] == "SIDECAR_INBOUND"
        assert insert["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"] == envoy.EXT_AUTHZ
        assert insert["patch"]["operation"] == "INSERT_AFTER"
        got = insert["patch"]["value"]
        assert got["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"] == cluster
        got["typed_config"]["grpc_service"] = want["typed_config"]["grpc_service"]
        assert got == want
        assert merge["patch"]["operation"] == "MERGE"
        local_reply = merge["patch"]["value"]["typed_config"]["local_reply_config"]
        assert local_reply == envoy.to_json(envoy.extproc_local_reply())
    assert "list-filter.yaml" not in istio.render_istio(*load(spec(key)))  # no server filters lists
    assert not (ROOT / "deploy" / "istio" / "extproc-envoyfilter.yaml").exists()  # no hand-written copy left


def test_every_mcp_workload_logs_json_to_stdout_without_credentials(key: Path) -> None:
    config, raw = load(spec(key, servers=2))
    files = istio.render_istio(config, raw)
    found = providers(files, logs=True)
    fields = dict(envoy.ACCESS_LOG_FORMAT)
    for server in ("demo", "tools"):
        provider = found[istio.access_log_provider(server)]["envoyFileAccessLog"]
        assert provider["path"] == "/dev/stdout"
        assert provider["logFormat"]["labels"] == {**fields, "mcp_server": server}
        assert "authorization" not in yaml.safe_dump(provider).lower()
    logs = {
        name: [d for d in docs(text) if d["kind"] == "Telemetry"]
        for name, text in files.items()
        if name in ("access-log.yaml", f"{istio.SIDECAR_DIR}/sidecar.yaml")
    }
    shared = {t["spec"]["selector"]["matchLabels"][istio.SERVER_LABEL]: t for t in logs["access-log.yaml"]}
    assert set(shared) == {"demo", "tools"}
    for server, telemetry in shared.items():
        assert telemetry["metadata"]["namespace"] == "mcp"  # the workloads' namespace: a selector applies there
        assert telemetry["spec"]["accessLogging"] == [{"providers": [{"name": istio.access_log_provider(server)}]}]
    sidecars = [t["spec"]["selector"]["matchLabels"] for t in logs[f"{istio.SIDECAR_DIR}/sidecar.yaml"]]
    assert sidecars == [
        {istio.SIDECAR_LABEL: "true", istio.CONFIG_LABEL: "mcp-authz-demo"},
        {istio.SIDECAR_LABEL: "true", istio.CONFIG_LABEL: "mcp-authz-tools"},
    ]


def test_several_replicas_need_shared_state(key: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The old render wrote 2 replicas and an HPA to 10 over the in-memory store, without a word."""
    from authz.render.kubernetes import render_kubernetes

    config, raw = load(spec(key))
    for render in (
        lambda: istio.render_istio(config, raw, istio.Options(replicas=2)),
        lambda: render_kubernetes(config, raw, replicas=2),
    ):
        with pytest.raises(ValueError, match=r"in-memory store.*store\.url.*allow_inconsistent_state"):
            render()
    accepted = spec(key)
    accepted["store"] = {"allow_inconsistent_state": True}
    files = istio.render_istio(*load(accepted), istio.Options(replicas=3))
    objects = {d["kind"]: d for d in docs(files["authorizer.yaml"])}
    assert (
        objects["Deployment"]["spec"]["replicas"] == 3
        and objects["HorizontalPodAutoscaler"]["spec"]["minReplicas"] == 3
    )
    path = tmp_path / "accepted.yaml"
    path.write_text(yaml.safe_dump(accepted), encoding="utf-8")
    assert main(["render", "istio", "-c", str(path), "--replicas", "2"]) == 0
    err = capsys.readouterr().err
    assert "2 replicas with the in-memory store" in err and "revoked" in err and "rate limits" in err
    shared = spec(key)
    shared["store"] = {"url": "redis://redis.redis.svc.cluster.local:6379/0"}
    objects = {d["kind"]: d for d in docs(istio.render_istio(*load(shared))["authorizer.yaml"])}
    assert objects["Deployment"]["spec"]["replicas"] == 2  # Redis: two by default, the HPA and a budget
    assert {"HorizontalPodAutoscaler", "PodDisruptionBudget"} <= set(objects)
