"""Every validation error the config file can raise: one case each, asserting the key path and the message."""

from __future__ import annotations

import json
from typing import Any

import pytest
from support import issuer_spec, server_spec

from authz.config.errors import ConfigError
from authz.config.load import parse_config


def errors(
    issuers: list[dict[str, Any]] | None = None, servers: list[dict[str, Any]] | None = None, **top: Any
) -> list[str]:
    """The ConfigError lines of a document (issuers and servers default to one valid each)."""
    doc = {
        "issuers": issuers if issuers is not None else [issuer_spec(jwks_uri="http://127.0.0.1:9/jwks")],
        "servers": servers if servers is not None else [server_spec()],
        **top,
    }
    with pytest.raises(ConfigError) as refused:
        parse_config(json.dumps(doc), "<test>")
    return refused.value.errors


def test_an_unknown_issuer_is_reported_at_the_server_with_the_valid_names() -> None:
    found = errors(
        [
            issuer_spec("dev", jwks_uri="http://127.0.0.1:9/a"),
            issuer_spec("prod", "https://b.test", jwks_uri="http://127.0.0.1:9/b"),
        ],
        [server_spec("one"), server_spec("two", "https://two.test/mcp", issuers=["dev", "staging"])],
    )
    assert found == ["servers.1.issuers: unknown issuer 'staging'; the issuers are 'dev', 'prod'"]
