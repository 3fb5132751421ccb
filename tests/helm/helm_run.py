"""``helm lint`` and ``helm template`` for the test suite, with the Helm library that PyPI ``helm-sdkpy`` embeds.

Debian ships no Helm; ``helm-sdkpy`` (Python >= 3.12, so it lives in its own venv, ``.venv-helm``, made by
scripts/setup.sh) exposes Helm's lint and install actions but no ``template``. So ``template`` is a real
``helm install`` (Helm's own chart loader, values schema, template engine and manifest builder) against a
throwaway in-process Kubernetes API that knows the kinds below and accepts whatever is created, with the
in-memory release driver: the release's manifest is exactly what ``helm template`` prints. A kind the API
does not know fails the install, as on a cluster without its CRD.

    .venv-helm/bin/python tests/helm/helm_run.py lint CHART
    .venv-helm/bin/python tests/helm/helm_run.py template CHART [--release NAME] [--namespace NS] [-f VALUES.json]...

Prints JSON on stdout: lint ``{"messages": [{"severity", "path"}...]}``, template ``{"manifest": "..."}``;
exit 1 with the error on stderr when Helm fails. Standard library only besides ``helm_sdkpy``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# (group, version) -> [(plural, kind)]; every kind is namespaced.
KINDS: dict[tuple[str, str], list[tuple[str, str]]] = {
    ("", "v1"): [
        ("configmaps", "ConfigMap"),
        ("secrets", "Secret"),
        ("services", "Service"),
        ("serviceaccounts", "ServiceAccount"),
    ],
    ("apps", "v1"): [("deployments", "Deployment")],
    ("autoscaling", "v2"): [("horizontalpodautoscalers", "HorizontalPodAutoscaler")],
    ("policy", "v1"): [("poddisruptionbudgets", "PodDisruptionBudget")],
    ("networking.k8s.io", "v1"): [("networkpolicies", "NetworkPolicy")],
    ("security.istio.io", "v1"): [
        ("authorizationpolicies", "AuthorizationPolicy"),
        ("peerauthentications", "PeerAuthentication"),
    ],
    ("networking.istio.io", "v1"): [("serviceentries", "ServiceEntry"), ("virtualservices", "VirtualService")],
    ("networking.istio.io", "v1alpha3"): [("envoyfilters", "EnvoyFilter")],
    ("telemetry.istio.io", "v1"): [("telemetries", "Telemetry")],
    ("gateway.networking.k8s.io", "v1"): [("httproutes", "HTTPRoute")],
    ("gateway.networking.k8s.io", "v1beta1"): [("referencegrants", "ReferenceGrant")],
}
VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]


class FakeApi(BaseHTTPRequestHandler):
    """Discovery for KINDS; GET of one object is 404, a list is empty; a create echoes the object."""

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj).encode())

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/version":
            return self._json(200, {"major": "1", "minor": "34", "gitVersion": "v1.34.0"})
        if path == "/api":
            return self._json(200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []})
        if path == "/apis":
            groups: dict[str, list[str]] = {}
            for group, version in KINDS:
                if group:
                    groups.setdefault(group, []).append(version)
            items = [
                {
                    "name": g,
                    "versions": [{"groupVersion": f"{g}/{v}", "version": v} for v in vs],
                    "preferredVersion": {"groupVersion": f"{g}/{vs[0]}", "version": vs[0]},
                }
                for g, vs in groups.items()
            ]
            return self._json(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": items})
        match = re.fullmatch(r"/api/(v1)|/apis/([^/]+)/([^/]+)", path)
        if match:
            group, version = ("", "v1") if match[1] else (match[2], match[3])
            resources = [
                {"name": plural, "singularName": "", "namespaced": True, "kind": kind, "verbs": VERBS}
                for plural, kind in KINDS.get((group, version), [])
            ]
            gv = f"{group}/{version}" if group else version
            return self._json(200, {"kind": "APIResourceList", "groupVersion": gv, "resources": resources})
        if "labelSelector=" in self.path or path.rstrip("/").rsplit("/", 1)[-1] in _PLURALS:
            return self._json(200, {"kind": "List", "apiVersion": "v1", "metadata": {}, "items": []})
        return self._json(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound"})

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        content_type = self.headers.get("Content-Type") or "application/json"
        if "json" not in content_type:  # Helm's own records may come as protobuf: echo them
            return self._send(201, raw, content_type)
        obj = json.loads(raw)
        obj.setdefault("metadata", {}).update(resourceVersion="1", uid="00000000-0000-0000-0000-000000000000")
        return self._json(201, obj)

    do_PUT = do_POST
    do_PATCH = do_POST


_PLURALS = {plural for kinds in KINDS.values() for plural, _ in kinds}


def kubeconfig(port: int, namespace: str) -> str:
    """A kubeconfig (YAML text: the library takes a string for a file path unless it looks like YAML)."""
    return (
        "apiVersion: v1\nkind: Config\n"
        f"clusters: [{{name: fake, cluster: {{server: 'http://127.0.0.1:{port}'}}}}]\n"
        f"contexts: [{{name: fake, context: {{cluster: fake, user: fake, namespace: '{namespace}'}}}}]\n"
        "users: [{name: fake, user: {token: fake}}]\ncurrent-context: fake\n"
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("action", choices=["lint", "template"])
    parser.add_argument("chart")
    parser.add_argument("--release", default="mcp-authz")
    parser.add_argument("--namespace", default="mcp-authz")
    parser.add_argument("-f", "--values", action="append", default=[], help="a JSON (or YAML-as-JSON) values file")
    args = parser.parse_args()
    if os.environ.get("HELM_DRIVER") != "memory":
        print("helm_run: run with HELM_DRIVER=memory (Helm reads it when the library loads)", file=sys.stderr)
        return 2
    import helm_sdkpy

    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeApi)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        config = helm_sdkpy.Configuration(
            namespace=args.namespace, kubeconfig=kubeconfig(server.server_address[1], args.namespace)
        )
        if args.action == "lint":
            result = asyncio.run(helm_sdkpy.Lint(config).run(args.chart))
            messages = [{"severity": m["Severity"], "path": m["Path"]} for m in result.get("Messages") or []]
            print(json.dumps({"messages": messages}))
            return 0
        values: dict[str, Any] = {}
        for path in args.values:
            with open(path, encoding="utf-8") as file:
                values = _merge(values, json.load(file))
        release = asyncio.run(
            helm_sdkpy.Install(config).run(args.release, args.chart, values=values or None, wait=False, timeout=60)
        )
        print(json.dumps({"manifest": release.get("manifest", "")}))
        return 0
    except helm_sdkpy.HelmError as exc:
        print(f"helm {args.action}: {exc}", file=sys.stderr)
        return 1
    finally:
        server.shutdown()


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Helm's merge of several values files: maps merge key by key, anything else is replaced."""
    result = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = _merge(result[key], value)
        else:
            result[key] = value
    return result


if __name__ == "__main__":
    sys.exit(main())
