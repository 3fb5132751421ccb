"""CEL expressions, compiled once at config load (PyPI ``common-expression-language``)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import cel

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class CelError(ValueError):
    pass


class Expression:
    """A compiled CEL expression whose result must be a boolean."""

    __slots__ = ("_names", "_program", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        # Every word of the source: a superset of the variables it reads. Only those are handed to
        # CEL, whose conversion of Python values costs ~1-2 µs per map entry.
        self._names = frozenset(_IDENTIFIER.findall(source))
        try:
            self._program = cel.compile(source)
        except Exception as exc:  # the library raises several types for syntax errors
            raise CelError(f"invalid CEL expression {source!r}: {exc}") from None

    def evaluate(self, context: Mapping[str, Any]) -> bool:
        """True only for a boolean true; an evaluation error counts as false (fail closed)."""
        try:
            result = self._program.execute({k: v for k, v in context.items() if k in self._names})
        except Exception:
            return False
        return result is True
