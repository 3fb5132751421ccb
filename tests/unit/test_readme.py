"""The README's configuration reference is the schema's own, and its example config is valid."""

from __future__ import annotations

from pathlib import Path

import pytest

from authz.config import ConfigError, parse_config
from authz.config.reference import BEGIN, END, reference

ROOT = Path(__file__).resolve().parents[2]


def test_config_reference_matches_schema() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index(BEGIN) : text.index(END) + len(END)]
    assert section == reference(), "regenerate with: mcp-authz config reference"


def test_readme_example_is_the_example_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from authz.identity.devkey import ensure_key

    example = (ROOT / "examples" / "config.yaml").read_text(encoding="utf-8")
    assert example in (ROOT / "README.md").read_text(encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    ensure_key(".dev/signing-key.pem")
    config = parse_config(example)
    assert config.servers["demo"].policy is not None


def test_config_check_names_the_bad_key() -> None:
    with pytest.raises(ConfigError) as bad:
        parse_config("issuers: [{name: a, issuer: 'https://i'}]\nservers: [{name: s, resource: 'not a url'}]\n")
    assert any(e.startswith("servers.0.resource:") for e in bad.value.errors)
