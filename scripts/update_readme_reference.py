"""Rewrite the README's configuration reference from the schema (what tests/unit/test_readme.py checks)."""

from __future__ import annotations

from pathlib import Path

from authz.config.reference import BEGIN, END, reference

README = Path(__file__).resolve().parents[1] / "README.md"

text = README.read_text(encoding="utf-8")
start, end = text.index(BEGIN), text.index(END) + len(END)
README.write_text(text[:start] + reference() + text[end:], encoding="utf-8")
