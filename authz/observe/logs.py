"""Structured JSON logs on stderr: one object per line, extra fields included, never a token.

``masked`` prepares the configuration for the startup line: secrets and environment values hidden.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Mapping
from typing import Any

from authz.config.load import ENV_REF

MASK = "***"
_SECRET_NAME = re.compile(r"secret|token|password|key", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(://[^/@:\s]*:)[^/@\s]*@")  # scheme://user:password@host (e.g. store.url)
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD and v is not None})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def masked(value: Any, raw: Any = None, name: str = "") -> Any:
    """``value`` (a config dump) with secrets replaced by ``***``.

    A string is masked when its field name contains secret, token, password or key, or when the
    config file wrote it as a ``${ENV}`` reference (``raw``: the file's parsed YAML, walked in step).
    Numbers, booleans and None stay: they are limits and switches, not secrets. The password of any
    ``scheme://user:password@host`` URL (e.g. ``store.url``) is masked too.
    """
    if isinstance(value, Mapping):
        raw_map = raw if isinstance(raw, Mapping) else {}
        return {k: masked(v, raw_map.get(k), str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        raw_list = raw if isinstance(raw, list) else []
        return [masked(v, raw_list[i] if i < len(raw_list) else None, name) for i, v in enumerate(value)]
    secret = _SECRET_NAME.search(name) or (isinstance(raw, str) and ENV_REF.search(raw))
    if secret and isinstance(value, str) and value:
        return MASK
    return _URL_PASSWORD.sub(rf"\1{MASK}@", value) if isinstance(value, str) else value
