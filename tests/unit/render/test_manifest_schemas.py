"""Every rendered or shipped Kubernetes object against its real schema (issue 17 item 4).

Which validator covers which kind: core objects (ConfigMap, Secret, Service, ServiceAccount, Deployment,
HorizontalPodAutoscaler, PodDisruptionBudget, NetworkPolicy) with kubernetes-validate in strict mode; Istio
(AuthorizationPolicy, PeerAuthentication, VirtualService, ServiceEntry, EnvoyFilter, Telemetry, IstioOperator)
and Gateway API (HTTPRoute, ReferenceGrant) objects with the CRD schemas of @kubernetes-models; the injection
template's Pod patch as a Pod. Each validator has a negative control: a broken object it must refuse.
"""

from __future__ import annotations

import copy
import re
from collections import Counter
from pathlib import Path
from typing import Any

import manifests
import pytest
import yaml

from authz.config.load import parse_config
from authz.identity.devkey import ensure_key
from authz.render import istio, kubernetes

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy"
TEMPLATE_EXPR = re.compile(r"\{\{ index \.ObjectMeta\.Annotations `mcp-authz\.io/config` \}\}")


def shipped() -> list[dict[str, Any]]:
    """Every object under deploy/ (rendered files; the chart's output is checked in test_helm_chart.py)."""
    found: list[dict[str, Any]] = []
    for path in sorted(DEPLOY.rglob("*.yaml")):
        if "helm" in path.parts or path.name == "envoy.yaml":
            continue
        found.extend(manifests.documents(path.read_text(encoding="utf-8")))
    return found


def injected_pods(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The injection templates' Pod patches, with the annotation filled in as istiod would, as Pods."""
    pods = []
    for obj in objects:
        if obj["kind"] == "IstioOperator":
            text = obj["spec"]["values"]["sidecarInjectorWebhook"]["templates"][istio.TEMPLATE]
            patch = yaml.safe_load(TEMPLATE_EXPR.sub("mcp-authz-demo", text))
            pods.append({"apiVersion": "v1", "kind": "Pod", **patch})
    return pods


def test_every_shipped_object_passes_its_schema() -> None:
    objects = shipped()
    kinds = Counter((o["apiVersion"], o["kind"]) for o in objects)
    assert ("networking.k8s.io/v1", "NetworkPolicy") in kinds and ("telemetry.istio.io/v1", "Telemetry") in kinds
    assert manifests.schema_errors(objects + injected_pods(objects)) == []


def test_every_render_variant_passes_its_schema(tmp_path: Path) -> None:
    """Both providers, the sidecar layout alone, list filtering, the Kubernetes pod: what other configs render."""
    key = ensure_key(tmp_path / "k.pem")
    base: dict[str, Any] = {
        "listen": {"grpc": "127.0.0.1:9191", "discovery": "127.0.0.1:9192", "http": "127.0.0.1:9193"},
        "issuers": [{"name": "dev", "issuer": "https://mcp.example.com/dev", "local_key_file": str(key)}],
        "servers": [
            {"name": "one", "resource": "https://one.example.com/mcp", "upstream": "127.0.0.1:8000"},
            {"name": "two", "resource": "https://two.example.com/", "upstream": "127.0.0.1:8001"},
        ],
    }
    http = copy.deepcopy(base)
    http["envoy"] = {"authorizer": "http"}
    lists = copy.deepcopy(base)
    lists["servers"][0]["filter_lists"] = True
    objects: list[dict[str, Any]] = []
    for data, options in ((http, istio.Options()), (lists, istio.Options(sidecar_only=True)), (lists, istio.Options())):
        text = yaml.safe_dump(data)
        config = parse_config(text, "variant.yaml")
        for rendered in istio.render_istio(config, yaml.safe_load(text), options).values():
            objects.extend(manifests.documents(rendered))
        objects.extend(manifests.documents(kubernetes.render_kubernetes(config, yaml.safe_load(text))))
    assert manifests.schema_errors(objects + injected_pods(objects)) == []


# ---------------------------------------------------------------- negative controls: each validator refuses


def test_kubernetes_validate_refuses_an_unknown_field_and_a_wrong_type() -> None:
    deployment = next(o for o in shipped() if o["kind"] == "Deployment")
    assert manifests.core_error(deployment) is None
    unknown = copy.deepcopy(deployment)
    unknown["spec"]["replica"] = 2
    assert "replica" in (manifests.core_error(unknown) or "")
    wrong = copy.deepcopy(deployment)
    wrong["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "grpc"
    assert manifests.core_error(wrong) is not None
    policy = next(o for o in shipped() if o["kind"] == "NetworkPolicy")
    broken = copy.deepcopy(policy)
    broken["spec"]["policyTypes"] = "Ingress"  # a list in the schema
    assert manifests.core_error(broken) is not None


def test_the_crd_schemas_refuse_a_broken_istio_and_gateway_api_object() -> None:
    objects = shipped()
    policy = next(o for o in objects if o["kind"] == "AuthorizationPolicy" and o["spec"].get("action") == "CUSTOM")
    route = next(o for o in objects if o["kind"] == "HTTPRoute")
    envoy_filter = next(o for o in objects if o["kind"] == "EnvoyFilter")
    bad_policy = copy.deepcopy(policy)
    bad_policy["spec"]["action"] = "CUSTOMISE"
    bad_route = copy.deepcopy(route)
    bad_route["spec"]["rules"][0]["matches"][0]["path"]["type"] = "Glob"
    bad_filter = copy.deepcopy(envoy_filter)
    bad_filter["spec"]["configPatches"][0]["applyTo"] = "HTTP_FILTERS"
    unknown_kind = {"apiVersion": "security.istio.io/v1", "kind": "AuthorisationPolicy", "metadata": {"name": "x"}}
    errors = manifests.crd_errors([policy, bad_policy, route, bad_route, envoy_filter, bad_filter, unknown_kind])
    assert errors[0] is None and errors[2] is None and errors[4] is None
    assert "action" in (errors[1] or "")
    assert "type" in (errors[3] or "")
    assert "applyTo" in (errors[5] or "")
    assert "no schema" in (errors[6] or "")  # nothing passes unchecked


def test_every_object_goes_to_exactly_one_validator() -> None:
    for obj in shipped():
        group = obj["apiVersion"].rpartition("/")[0]
        assert manifests.is_crd(obj) == group.endswith(("istio.io", "gateway.networking.k8s.io")), obj["kind"]


@pytest.mark.parametrize("kind", ["NetworkPolicy", "Deployment"])
def test_a_schema_error_is_reported_with_the_object(kind: str) -> None:
    obj = copy.deepcopy(next(o for o in shipped() if o["kind"] == kind))
    obj["spec"]["bogus"] = True
    [(key, validator, error)] = manifests.schema_errors([obj])
    assert key == manifests.key(obj) and validator == "kubernetes-validate" and "bogus" in error
