"""RFC 8414 / OpenID Connect discovery paths for the mirrored authorization-server metadata (pure functions).

The documents themselves are fetched from each issuer (``authz.oauth.rfc8414``) and served
unchanged; this module decides which issuers are mirrored and at which request paths.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from authz.config.runtime import Config, Issuer
from authz.oauth.rfc8414 import metadata_urls

OAUTH_WELL_KNOWN = "/.well-known/oauth-authorization-server"
OIDC_WELL_KNOWN = "/.well-known/openid-configuration"
ROOT_PATHS = (OAUTH_WELL_KNOWN, OIDC_WELL_KNOWN)


def is_local(issuer: Issuer) -> bool:
    """The development issuer signs with a local key and has no metadata to mirror."""
    return issuer.local_key_file is not None


def mirrored_issuers(config: Config) -> list[Issuer]:
    """Issuers whose metadata is mirrored: every configured issuer except local-key ones."""
    return [
        i for i in config.issuers.values() if not is_local(i) and i.tenant_claim is None
    ]  # templates: no one document


def issuer_paths(issuer: str) -> list[str]:
    """Paths of the well-known forms for ``issuer`` (RFC 8414 §3.1 and OIDC path insertion, OIDC appended).

    The same URLs the metadata is fetched from, so a path-less issuer maps to the root forms.
    """
    return [urlsplit(url).path for url in metadata_urls(issuer)]


def root_issuer(config: Config) -> Issuer | None:
    """The issuer served at the root forms: the first path-less one in server order, else the only one."""
    mirrored = mirrored_issuers(config)
    for server in config.servers.values():
        for name in server.issuers:
            issuer = config.issuers[name]
            if not is_local(issuer) and urlsplit(issuer.issuer).path.strip("/") == "":
                return issuer
    return mirrored[0] if len(mirrored) == 1 else None


def routes(config: Config) -> dict[str, str]:
    """Request path → name of the issuer whose mirrored metadata is served there.

    When two issuers claim the same path, the one configured first keeps it.
    """
    table: dict[str, str] = {}
    root = root_issuer(config)
    if root is not None:
        table.update(dict.fromkeys(ROOT_PATHS, root.name))
    for issuer in mirrored_issuers(config):
        for path in issuer_paths(issuer.issuer):
            table.setdefault(path, issuer.name)
    return table


def jwks_path(name: str) -> str:
    """Where a local issuer's JWKS is published."""
    return f"/jwks/{name}.json"
