"""authz.contract: the names only Envoy may set are refused where a config could make the authorizer trust them."""

from __future__ import annotations

import pytest
from support import make_config, server_spec

from authz.config.errors import ConfigError


@pytest.mark.parametrize("header", ["X-Mcp-Authz-Source", "x-mcp-authz-server"])
def test_a_proxy_header_in_the_envoy_namespace_is_refused(header: str) -> None:
    proxy = {"preset": "oauth2-proxy", "trusted_cidrs": ["10.0.0.0/8"], "passthrough_headers": [header]}
    with pytest.raises(ConfigError) as refused:
        make_config(servers=[server_spec(identity=["proxy"], proxy=proxy)])
    assert "x-mcp-authz-* headers are set by Envoy only" in str(refused.value)
    assert header in str(refused.value)


def test_other_passthrough_headers_are_accepted() -> None:
    proxy = {"preset": "oauth2-proxy", "trusted_cidrs": ["10.0.0.0/8"], "passthrough_headers": ["X-Tenant-Id"]}
    assert make_config(servers=[server_spec(identity=["proxy"], proxy=proxy)]).servers["mcp"].proxy is not None
