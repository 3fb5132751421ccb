"""The discovery HTTP service: RFC 9728 protected-resource metadata, mirrored RFC 8414 / OIDC
authorization-server metadata, local-issuer JWKS, and the /healthz and /readyz probes."""

from discovery.app import build_app, reconfigure, start

__all__ = ["build_app", "reconfigure", "start"]
