"""deploy/helm/mcp-authz: ``helm lint`` and ``helm template`` pass, every object passes its schema, and the chart
does not drift from ``mcp-authz render istio``: the same config gives the same objects (issue 17 item 3).

Helm runs from PyPI helm-sdkpy in .venv-helm (scripts/setup.sh makes it from a Python >= 3.12);
``helm template`` is a real ``helm install`` against an in-process fake API (tests/helm/helm_run.py).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import manifests
import pytest
import yaml

from authz import __version__
from authz.render import istio

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "deploy" / "helm" / "mcp-authz"
HELM_ONLY_LABELS = (
    "helm.sh/chart",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
)


@pytest.fixture(scope="module")
def production() -> tuple[Any, dict[str, Any]]:
    return manifests.production()


def values(raw: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The chart's values for a config, as `render istio` with two replicas and both layouts renders it."""
    base: dict[str, Any] = {
        "config": raw,
        "replicas": 2,
        "autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 10},
        "istio": {"sidecar": {"enabled": True}},
    }
    return manifests_merge(base, extra)


def manifests_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    result = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = manifests_merge(result[key], value)
        else:
            result[key] = value
    return result


def normalized(obj: Any) -> Any:
    """An object without what only Helm adds (its labels, the config checksum), configs parsed as data."""
    if isinstance(obj, list):
        return [normalized(item) for item in obj]
    if not isinstance(obj, dict):
        return obj
    result = {}
    for key, value in obj.items():
        if key in HELM_ONLY_LABELS or key == "checksum/config":
            continue
        if key == "config.yaml" and isinstance(value, str):
            result[key] = yaml.safe_load(value)
        elif key == "annotations" and isinstance(value, dict) and set(value) <= {"checksum/config"}:
            continue
        else:
            result[key] = normalized(value)
    return result


def by_key(objects: list[dict[str, Any]]) -> dict[manifests.Key, dict[str, Any]]:
    assert not manifests.duplicates(objects)
    return {manifests.key(o): normalized(o) for o in objects}


def template_patch(text: str) -> Any:
    return yaml.safe_load(text)


# ---------------------------------------------------------------- Helm itself


def test_helm_lint_passes() -> None:
    run = manifests.helm("lint", CHART)
    assert run.returncode == 0, run.stderr
    messages = json.loads(run.stdout)["messages"]
    assert [m for m in messages if m["severity"] >= 2] == []  # warnings and errors; Chart.yaml's icon is info


def test_the_default_values_render_valid_objects() -> None:
    objects = manifests.helm_template(CHART)
    assert not manifests.duplicates(objects)
    assert manifests.schema_errors(objects) == []
    kinds = {o["kind"] for o in objects}
    assert {"ConfigMap", "Deployment", "Service", "NetworkPolicy", "AuthorizationPolicy", "PeerAuthentication"} <= kinds
    [deployment] = [o for o in objects if o["kind"] == "Deployment"]
    assert deployment["spec"]["replicas"] == 1  # the in-memory store: one replica, no HPA, no PDB
    assert "HorizontalPodAutoscaler" not in kinds and "PodDisruptionBudget" not in kinds


def test_the_chart_version_is_the_package_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
    assert chart["appVersion"] == __version__


# ---------------------------------------------------------------- no drift from `render istio`


def test_the_chart_renders_what_render_istio_renders(production: tuple[Any, dict[str, Any]]) -> None:
    config, raw = production
    files = istio.render_istio(config, raw, istio.Options(replicas=2))
    rendered = by_key(
        [
            d
            for name, text in files.items()
            if name not in ("secret.yaml", "mcp-servers.yaml", "http-route.yaml", "mesh-config.yaml")
            and not name.endswith("/mcp-servers.yaml")
            for d in manifests.documents(text)
        ]
    )
    chart_objects = manifests.helm_template(CHART, values(raw))
    assert manifests.schema_errors(chart_objects) == []
    chart = by_key(chart_objects)
    istiod = chart.pop(("ConfigMap", "mcp-authz", "mcp-authz-istiod-values"))
    assert set(chart) == set(rendered)
    for key, obj in rendered.items():
        assert chart[key] == obj, key
    # the MeshConfig providers and the injection template, which istiod gets through its values
    [operator] = manifests.documents(files["mesh-config.yaml"])
    snippet = yaml.safe_load(istiod["data"]["istiod-values.yaml"])
    assert snippet["meshConfig"] == operator["spec"]["meshConfig"]
    wanted = operator["spec"]["values"]["sidecarInjectorWebhook"]["templates"][istio.TEMPLATE]
    got = snippet["sidecarInjectorWebhook"]["templates"][istio.TEMPLATE]
    assert "{{ index .ObjectMeta.Annotations `mcp-authz.io/config` }}" in got  # Helm left istiod's {{ }} alone
    assert template_patch(got) == template_patch(wanted)


def test_the_chart_routes_like_render_istio_with_the_gateway_api(production: tuple[Any, dict[str, Any]]) -> None:
    config, raw = production
    files = istio.render_istio(config, raw, istio.Options(replicas=2))
    rendered = by_key(manifests.documents(files["http-route.yaml"]))
    chart = by_key(manifests.helm_template(CHART, values(raw, istio={"routing": {"kind": "HTTPRoute"}})))
    for key, obj in rendered.items():
        assert chart[key] == obj, key


# ---------------------------------------------------------------- safe scaling and Redis


def minimal(**extra: Any) -> dict[str, Any]:
    return {
        "issuers": [{"name": "corp", "issuer": "https://login.example.com"}],
        "servers": [{"name": "demo", "resource": "https://mcp.example.com/mcp", "upstream": "demo.mcp:8000"}],
        **extra,
    }


@pytest.mark.parametrize("scale", [{"replicas": 3}, {"autoscaling": {"enabled": True}}], ids=["replicas", "hpa"])
def test_several_replicas_need_shared_state(scale: dict[str, Any]) -> None:
    refused = manifests.helm("template", CHART, {"config": minimal(), **scale})
    assert refused.returncode == 1
    assert "in-memory store" in refused.stderr and "allow_inconsistent_state" in refused.stderr
    accepted = manifests.helm_template(CHART, {"config": minimal(store={"allow_inconsistent_state": True}), **scale})
    assert [o["kind"] for o in accepted if o["kind"] == "PodDisruptionBudget"] == ["PodDisruptionBudget"]


def test_redis_from_its_secrets_is_wired_into_the_config() -> None:
    redis = {
        "host": "redis.redis.svc.cluster.local",
        "tls": True,
        "passwordSecret": {"name": "redis-auth", "key": "password"},
        "caSecret": {"name": "redis-ca", "key": "ca.crt"},
    }
    objects = manifests.helm_template(CHART, {"config": minimal(), "replicas": 2, "redis": redis})
    assert manifests.schema_errors(objects) == []
    [config_map] = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "mcp-authz"]
    assert yaml.safe_load(config_map["data"]["config.yaml"])["store"] == {"url": "${MCP_AUTHZ_REDIS_URL}"}
    [deployment] = [o for o in objects if o["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["MCP_AUTHZ_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "redis-auth", "key": "password"}
    url = env["MCP_AUTHZ_REDIS_URL"]["value"]
    assert url.startswith("rediss://:$(MCP_AUTHZ_REDIS_PASSWORD)@redis.redis.svc.cluster.local:6379/0")
    assert "ssl_ca_certs=/var/run/secrets/mcp-authz-redis/ca.pem" in url
    assert list(env) == ["MCP_AUTHZ_REDIS_PASSWORD", "MCP_AUTHZ_REDIS_URL"]  # the password is defined first
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["redis-ca"]["secret"] == {"secretName": "redis-ca", "items": [{"key": "ca.crt", "path": "ca.pem"}]}
    from_secret = manifests.helm_template(
        CHART, {"config": minimal(), "replicas": 2, "redis": {"urlSecret": {"name": "redis-url", "key": "url"}}}
    )
    [deployment] = [o for o in from_secret if o["kind"] == "Deployment"]
    [entry] = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    assert entry == {"name": "MCP_AUTHZ_REDIS_URL", "valueFrom": {"secretKeyRef": {"name": "redis-url", "key": "url"}}}


def test_a_config_the_user_owns_is_mounted_and_its_secret_read_whole() -> None:
    objects = manifests.helm_template(
        CHART, {"existingConfig": {"secret": "my-config", "key": "authz.yaml"}, "istio": {"enabled": False}}
    )
    assert manifests.schema_errors(objects) == []
    assert not [o for o in objects if o["kind"] == "ConfigMap"]
    [deployment] = [o for o in objects if o["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    [config] = [v for v in pod["volumes"] if v["name"] == "config"]
    assert config["secret"] == {"secretName": "my-config", "items": [{"key": "authz.yaml", "path": "config.yaml"}]}
    assert pod["containers"][0]["envFrom"] == [{"secretRef": {"name": "mcp-authz-secrets", "optional": True}}]


def test_an_ip_host_is_refused_naming_the_key() -> None:
    config = minimal()
    config["servers"][0]["resource"] = "http://127.0.0.1:8080/mcp"
    refused = manifests.helm("template", CHART, {"config": config})
    assert refused.returncode == 1 and "config.servers[0].resource" in refused.stderr
