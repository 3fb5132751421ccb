"""The unit tests' fixtures, defined in support.py (see there)."""

from support import http_session, jwks_server

__all__ = ["http_session", "jwks_server"]
