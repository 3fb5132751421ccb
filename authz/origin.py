"""The Origin check (DNS-rebinding defence): a browser's ``Origin`` must be one the server allows.

A request without ``Origin`` (not from a browser) passes; a server without ``origins`` configured accepts any.
"""

from __future__ import annotations

from authz.config.runtime import Server
from authz.errors import Forbidden
from authz.model import HttpRequest


def check_origin(req: HttpRequest, server: Server) -> None:
    """Refuse with 403 ``origin_not_allowed`` an ``Origin`` the server does not list."""
    origin = req.headers.get("origin")
    if origin is not None and server.origins is not None and origin not in server.origins:
        raise Forbidden("origin_not_allowed", f"origin {origin!r}")
