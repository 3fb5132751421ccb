"""The configuration reference and the JSON Schema (authz/config/reference.py): generated from the schema,
every section and key in them, committed as docs/configuration.md and docs/config.schema.json."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml
from pydantic import BaseModel, Field

from authz.cli import main
from authz.config.reference import BEGIN, END, json_schema, json_schema_text, reference, sections
from authz.config.schema import ConfigSpec

ROOT = Path(__file__).resolve().parents[3]
PAGE = ROOT / "docs" / "configuration.md"
SCHEMA = ROOT / "docs" / "config.schema.json"


def committed_reference() -> str:
    text = PAGE.read_text(encoding="utf-8")
    return text[text.index(BEGIN) : text.index(END) + len(END)]


def test_committed_reference_is_the_generated_one() -> None:
    assert committed_reference() == reference(), "regenerate with: python scripts/update_config_docs.py"


def test_every_model_and_key_of_the_schema_has_an_entry() -> None:
    """Walked independently of the generator: the JSON Schema's $defs are every model the file can hold."""
    page = committed_reference()
    headings = re.findall(r"^### `([^`]+)`$", page, flags=re.M)
    tables = dict(zip(headings, re.split(r"^### `[^`]+`$", page, flags=re.M)[1:], strict=True))
    by_model = {s.model.__name__: s.path for s in sections()}
    definitions = ConfigSpec.model_json_schema()["$defs"]
    assert set(definitions) <= set(by_model), "a schema model has no section in the reference"
    for name, definition in {"ConfigSpec": ConfigSpec.model_json_schema(), **definitions}.items():
        table = tables[by_model[name]]
        for key in definition["properties"]:
            assert f"\n| `{key}` |" in table, f"{by_model[name]}.{key} has no row"


def test_the_sections_named_in_issue_16_are_there() -> None:
    paths = {s.path for s in sections()}
    assert {"approvals", "secrets", "servers[].credentials", "servers[].token_exchange"} <= paths
    assert {"servers[].policy.rules[]", "servers[].proxy.cloudflare", "audit.webhook", "store.failure"} <= paths


class _Leaf(BaseModel):
    depth: int = Field(3, ge=1, description="How deep.")


class _Middle(BaseModel):
    leaves: list[_Leaf] | None = Field(None, description="Optional list of leaves.")


class _Root(BaseModel):
    middle: _Middle = Field(description="Required middle.")
    other: _Middle | None = Field(None, description="Optional middle.")


def test_the_walk_finds_models_behind_lists_and_optionals() -> None:
    found = [(s.path, s.model, s.about) for s in sections(_Root)]
    assert found == [
        ("(top level)", _Root, "The whole file."),
        ("middle", _Middle, "Required middle."),
        ("middle.leaves[]", _Leaf, "Optional list of leaves."),
        ("other", _Middle, "Optional middle."),
        ("other.leaves[]", _Leaf, "Optional list of leaves."),
    ]


def test_rows_show_type_bounds_and_defaults() -> None:
    text = reference()
    assert "| `token_cache_size` | int (≥ 1, ≤ 1000000) | `10000` |" in text
    assert "| `require_jti` | bool | `false` |" in text
    assert "| `issuers` | section `issuers[]` | required |" in text
    assert "| `credentials` | section `servers[].credentials` | unset |" in text


def test_cli_prints_the_reference_and_the_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "reference"]) == 0
    assert capsys.readouterr().out == reference() + "\n"
    assert main(["config", "schema"]) == 0
    assert capsys.readouterr().out == json_schema_text()


def test_committed_schema_is_the_generated_one() -> None:
    assert SCHEMA.read_text(encoding="utf-8") == json_schema_text(), "regenerate: python scripts/update_config_docs.py"


def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_schema_accepts_the_example_config() -> None:
    example = yaml.safe_load((ROOT / "examples" / "config.yaml").read_text(encoding="utf-8"))
    assert [e.message for e in validator().iter_errors(example)] == []


def test_schema_refuses_what_the_loader_refuses() -> None:
    example = yaml.safe_load((ROOT / "examples" / "config.yaml").read_text(encoding="utf-8"))
    check = validator()
    typo = {**example, "servers": [{**example["servers"][0], "scope_supported": ["x"]}]}
    assert any("scope_supported" in e.message for e in check.iter_errors(typo))
    assert list(check.iter_errors({**example, "token_cache_size": 0}))
    assert list(check.iter_errors({**example, "log_level": "loud"}))
    assert list(check.iter_errors({"issuers": []}))  # servers is required


def test_schema_takes_env_references_where_the_loader_substitutes_them() -> None:
    example = yaml.safe_load((ROOT / "examples" / "config.yaml").read_text(encoding="utf-8"))
    check = validator()
    assert not list(check.iter_errors({**example, "token_cache_size": "${CACHE:-5000}"}))
    assert not list(check.iter_errors({**example, "store": {"timeout_ms": "${STORE_TIMEOUT}"}}))
    assert list(check.iter_errors({**example, "token_cache_size": "many"}))


def test_schema_is_draft_2020_12_with_every_model() -> None:
    schema = json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert set(schema["$defs"]) == set(ConfigSpec.model_json_schema()["$defs"])
