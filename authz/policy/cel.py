"""CEL expressions, compiled once at config load (PyPI ``common-expression-language``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import cel


class CelError(ValueError):
    pass


class Expression:
    """A compiled CEL expression whose result must be a boolean."""

    __slots__ = ("_program", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        try:
            self._program = cel.compile(source)
        except Exception as exc:  # the library raises several types for syntax errors
            raise CelError(f"invalid CEL expression {source!r}: {exc}") from None

    def evaluate(self, context: Mapping[str, Any]) -> bool:
        """True only for a boolean true; an evaluation error counts as false (fail closed)."""
        try:
            result = self._program.execute(dict(context))
        except Exception:
            return False
        return result is True
