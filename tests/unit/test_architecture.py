"""The import rule of docs/architecture.md: layers import only downward, stages never import each other, and
no package-level import cycles (the contracts are in .importlinter, checked by import-linter's own engine)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONTRACTS = ROOT / ".importlinter"


def lint_imports(config: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or "lint-imports"
    return subprocess.run([exe, str(config), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_the_import_rule_holds() -> None:
    result = lint_imports(CONTRACTS)
    assert result.returncode == 0, result.stdout + result.stderr


def _lint_a_copy_where(tmp_path: Path, module: str, line: str) -> subprocess.CompletedProcess[str]:
    """The same contracts over a copy of the tree with ``line`` appended to ``module``."""
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "authz", tree / "authz", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "discovery", tree / "discovery", ignore=shutil.ignore_patterns("__pycache__"))
    target = tree / module
    target.write_text(target.read_text() + f"\n{line}  # noqa\n")
    (tree / ".importlinter").write_text(CONTRACTS.read_text())
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or "lint-imports"
    return subprocess.run(
        [exe, "--no-cache"], cwd=tree, capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(tree)}
    )


def test_a_stage_importing_another_stage_breaks_the_contract(tmp_path: Path) -> None:
    """Negative control: policy imports identity."""
    result = _lint_a_copy_where(tmp_path, "authz/policy/rules.py", "from authz.identity import sources as _sources")
    assert result.returncode != 0
    assert "authz.policy is not allowed to import authz.identity" in result.stdout


def test_a_lower_layer_importing_a_higher_one_breaks_the_contract(tmp_path: Path) -> None:
    """Negative control: the config package imports the Check pipeline."""
    result = _lint_a_copy_where(tmp_path, "authz/config/runtime.py", "from authz import check as _check")
    assert result.returncode != 0
    assert "authz.config is not allowed to import authz.check" in result.stdout
