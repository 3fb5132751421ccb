"""Kubernetes manifests in tests: parsing, the sets a user applies together, and the schema validators.

Validators (each with a negative control in tests/unit/render/test_manifest_schemas.py):

- core Kubernetes objects: PyPI ``kubernetes-validate`` in strict mode (unknown fields fail);
- Istio and Gateway API objects: the CRD schemas of npm ``@kubernetes-models/istio`` and
  ``@kubernetes-models/gateway-api`` (tests/schemas/validate.mjs, installed by scripts/setup.sh);
- the Helm chart: ``helm lint`` and ``helm template`` through PyPI ``helm-sdkpy`` in ``.venv-helm``
  (tests/helm/helm_run.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "tests" / "schemas"
HELM_PYTHON = ROOT / ".venv-helm" / "bin" / "python"
HELM_RUN = ROOT / "tests" / "helm" / "helm_run.py"
KUBERNETES_VERSION = "1.34.0"  # the API the core objects are checked against
CRD_GROUPS = ("istio.io", "gateway.networking.k8s.io")  # group suffixes validated by the CRD schemas

Key = tuple[str, str, str]  # kind, namespace, name

PRODUCTION = "examples/production.yaml"  # deploy/istio/ is rendered from it
# Placeholders for its ${NAME}s: a config check needs them set, their values never matter here.
PRODUCTION_ENV = {
    "REDIS_URL": "rediss://:placeholder@redis.redis.svc.cluster.local:6379/0",
    "AUDIT_WEBHOOK_SECRET": "placeholder-webhook-secret",
}


def with_env(env: Mapping[str, str]) -> contextlib.AbstractContextManager[None]:
    """``env`` set in os.environ for the block (a config with ``${NAME}``s loads), restored after."""

    @contextlib.contextmanager
    def patched() -> Iterator[None]:
        saved = {name: os.environ.get(name) for name in env}
        os.environ.update(env)
        try:
            yield
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

    return patched()


def production() -> tuple[Any, dict[str, Any]]:
    """examples/production.yaml as ``render`` takes it: the compiled config and the raw mapping."""
    from authz.config.load import parse_config
    from authz.render.authorizer_pod import raw_config

    text = (ROOT / PRODUCTION).read_text(encoding="utf-8")
    with with_env(PRODUCTION_ENV):
        config = parse_config(text, PRODUCTION)
    return config, raw_config(str(ROOT / PRODUCTION))


def documents(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def key(obj: Mapping[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return (str(obj.get("kind")), str(meta.get("namespace") or ""), str(meta.get("name")))


def duplicates(objects: Iterable[Mapping[str, Any]]) -> list[Key]:
    """(kind, namespace, name) that occur more than once: ``kubectl apply`` would apply one over the other."""
    counts = Counter(key(o) for o in objects)
    return sorted(k for k, n in counts.items() if n > 1)


def directories(files: Mapping[str, str]) -> dict[str, list[dict[str, Any]]]:
    """Rendered files (``name`` or ``dir/name``) grouped as ``kubectl apply -f DIR`` takes them: one list of
    objects per directory, its own files only."""
    result: dict[str, list[dict[str, Any]]] = {}
    for name, text in files.items():
        if name.endswith((".yaml", ".yml")):
            result.setdefault(str(Path(name).parent), []).extend(documents(text))
    return result


# ---------------------------------------------------------------- schema validators


def is_crd(obj: Mapping[str, Any]) -> bool:
    group = str(obj.get("apiVersion", "")).rpartition("/")[0]
    return group.endswith(CRD_GROUPS)


def core_error(obj: Mapping[str, Any]) -> str | None:
    """The first schema error of a core Kubernetes object (strict: unknown fields fail), or None."""
    try:
        kubernetes_validate.validate(dict(obj), KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = "/".join(str(p) for p in exc.path)
        return f"{path}: {str(exc).splitlines()[0]}"
    except kubernetes_validate.SchemaNotFoundError as exc:
        return f"no schema: {exc}"
    return None


def node() -> str:
    found = shutil.which("node")
    if found is None:
        raise RuntimeError("node not found: the CRD schemas are checked by tests/schemas/validate.mjs")
    return found


def crd_errors(objects: list[Mapping[str, Any]]) -> list[str | None]:
    """One entry per object: None when its CRD schema accepts it, else the error."""
    if not (SCHEMAS / "node_modules" / "@kubernetes-models" / "istio").is_dir():
        raise RuntimeError("tests/schemas/node_modules is missing: run bash scripts/setup.sh (npm ci there)")
    run = subprocess.run(
        [node(), str(SCHEMAS / "validate.mjs")],
        input=json.dumps(list(objects)),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if run.returncode != 0:
        raise RuntimeError(f"validate.mjs failed: {run.stderr}")
    return [None if r["ok"] else str(r["error"]) for r in json.loads(run.stdout)]


def schema_errors(objects: list[Mapping[str, Any]]) -> list[tuple[Key, str, str]]:
    """(object, validator, error) for every object its schema refuses; every object is checked by one."""
    errors: list[tuple[Key, str, str]] = []
    crds = [o for o in objects if is_crd(o)]
    for obj, error in zip(crds, crd_errors(crds), strict=True):
        if error is not None:
            errors.append((key(obj), "crd", error))
    for obj in objects:
        if not is_crd(obj):
            error = core_error(obj)
            if error is not None:
                errors.append((key(obj), "kubernetes-validate", error))
    return errors


# ---------------------------------------------------------------- Helm


def helm_available() -> bool:
    return HELM_PYTHON.is_file()


def helm(
    action: str, chart: Path, *values: Mapping[str, Any], release: str = "mcp-authz", namespace: str = "mcp-authz"
) -> subprocess.CompletedProcess[str]:
    """``helm lint`` / ``helm template`` (tests/helm/helm_run.py) with ``values`` (merged in order)."""
    if not helm_available():
        raise RuntimeError(
            ".venv-helm is missing: bash scripts/setup.sh makes it from a Python >= 3.12 (helm-sdkpy needs it)"
        )
    with tempfile.TemporaryDirectory() as tmp:
        args = [str(HELM_PYTHON), str(HELM_RUN), action, str(chart), "--release", release, "--namespace", namespace]
        for n, extra in enumerate(values):
            path = Path(tmp) / f"values-{n}.json"
            path.write_text(json.dumps(extra), encoding="utf-8")
            args += ["-f", str(path)]
        env = {**os.environ, "HELM_DRIVER": "memory", "HELM_CACHE_HOME": tmp, "HELM_CONFIG_HOME": tmp}
        env["HELM_DATA_HOME"] = tmp
        return subprocess.run(args, capture_output=True, text=True, timeout=180, env=env, check=False)


def helm_template(
    chart: Path, *values: Mapping[str, Any], release: str = "mcp-authz", namespace: str = "mcp-authz"
) -> list[dict[str, Any]]:
    run = helm("template", chart, *values, release=release, namespace=namespace)
    if run.returncode != 0:
        raise AssertionError(run.stderr)
    return documents(json.loads(run.stdout)["manifest"])
