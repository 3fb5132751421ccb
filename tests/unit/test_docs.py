"""The docs: README.md is the front door and every page it or docs/README.md links to exists; the configuration
page's example is examples/config.yaml, which loads; documented behaviour the pages promise holds."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from authz.config.errors import ConfigError
from authz.config.load import parse_config

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if "://" in target or target.startswith("mailto:"):
            continue
        assert (page.parent / target).exists(), f"{page.name} links to missing {target}"


def test_readme_is_the_front_door() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.encode()) <= 10_240
    assert "bash scripts/dev.sh" in text and "bash scripts/test.sh" in text
    assert "(docs/README.md)" in text


def test_every_page_is_in_the_index() -> None:
    index = (DOCS / "README.md").read_text(encoding="utf-8")
    linked = set(LINK.findall(index))
    missing = [p.name for p in sorted(DOCS.glob("*.md")) if p.name != "README.md" and p.name not in linked]
    assert not missing, f"add to docs/README.md: {missing}"


def test_configuration_example_is_the_example_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from authz.identity.devkey import ensure_key

    example = (ROOT / "examples" / "config.yaml").read_text(encoding="utf-8")
    assert example in (DOCS / "configuration.md").read_text(encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    ensure_key(".dev/signing-key.pem")
    config = parse_config(example, "examples/config.yaml", tmp_path / "examples")  # paths from the file's directory
    assert config.servers["demo"].policy is not None


def test_config_check_names_the_bad_key() -> None:
    with pytest.raises(ConfigError) as bad:
        parse_config("issuers: [{name: a, issuer: 'https://i'}]\nservers: [{name: s, resource: 'not a url'}]\n")
    assert any(e.startswith("servers.0.resource:") for e in bad.value.errors)
