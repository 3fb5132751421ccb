"""What a store-backed stage does when the store cannot answer: fail closed (503) or open, per feature."""

from __future__ import annotations

import logging
from typing import Literal

from authz.errors import Unavailable

log = logging.getLogger("mcp_authz.state")


def store_unavailable(feature: str, mode: Literal["closed", "open"] | str, detail: str) -> None:
    """``closed``: refuse with 503 ``store_unavailable``; ``open``: return, and the call goes on unchecked."""
    if mode == "closed":
        raise Unavailable("store_unavailable", f"{feature}: {detail}")
    log.debug("store unavailable, failing open", extra={"feature": feature, "detail": detail})
