"""CEL expressions, compiled once at config load (PyPI ``common-expression-language``)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import cel

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# A macro's iteration variable(s): `.exists(x, ...)`, `.all(k, v, ...)`; bound inside the macro, not read from outside.
_BOUND = re.compile(
    r"\.\s*(?:all|exists|exists_one|map|filter)\s*\(\s*([A-Za-z_][A-Za-z0-9_]*)\s*,(?:\s*([A-Za-z_][A-Za-z0-9_]*)\s*,)?"
)
POLICY_VARIABLES = frozenset({"jwt", "mcp", "request"})  # what a rule's `when` may read (authz.policy.rules)


class CelError(ValueError):
    pass


class Expression:
    """A compiled CEL expression whose result must be a boolean."""

    __slots__ = ("_names", "_program", "source", "variables")

    def __init__(self, source: str) -> None:
        self.source = source
        # Every word of the source: a superset of the variables it reads. Only those are handed to
        # CEL, whose conversion of Python values costs ~1-2 µs per map entry.
        self._names = frozenset(_IDENTIFIER.findall(source))
        try:
            self._program = cel.compile(source)
        except Exception as exc:  # the library raises several types for syntax errors
            raise CelError(f"invalid CEL expression {source!r}: {exc}") from None
        bound = {name for match in _BOUND.finditer(source) for name in match.groups() if name}
        self.variables = frozenset(self._program.variables()) - bound  # the names it reads from the context

    def evaluate(self, context: Mapping[str, Any]) -> bool:
        """True only for a boolean true; an evaluation error counts as false (fail closed)."""
        try:
            result = self._program.execute({k: v for k, v in context.items() if k in self._names})
        except Exception:
            return False
        return result is True
