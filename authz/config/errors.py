"""The one error a configuration raises."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration that cannot be used. ``errors`` lists one ``key: problem`` line each."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("invalid configuration:\n  " + "\n  ".join(errors))
