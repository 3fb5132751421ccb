"""Regenerate docs/configuration.md's reference and docs/config.schema.json from the schema.

tests/unit/config/test_reference.py fails while either differs from what this script writes.
"""

from __future__ import annotations

from pathlib import Path

from authz.config.reference import BEGIN, END, json_schema_text, reference

DOCS = Path(__file__).resolve().parents[1] / "docs"

page = DOCS / "configuration.md"
text = page.read_text(encoding="utf-8")
start, end = text.index(BEGIN), text.index(END) + len(END)
page.write_text(text[:start] + reference() + text[end:], encoding="utf-8")
(DOCS / "config.schema.json").write_text(json_schema_text(), encoding="utf-8")
