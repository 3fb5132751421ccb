from __future__ import annotations

import pytest

from authz.config.load import parse_config
from authz.errors import Forbidden
from authz.model import HttpRequest
from authz.origin import check_origin

CONFIG = """
issuers: [{name: idp, issuer: "https://idp.example", jwks_uri: "https://idp.example/jwks"}]
servers:
  - {name: pinned, resource: "https://mcp.example.com/a", origins: ["https://app.example.com"]}
  - {name: open, resource: "https://mcp.example.com/b"}
"""


def _request(origin: str | None) -> HttpRequest:
    headers = {"origin": origin} if origin is not None else {}
    return HttpRequest(method="POST", path="/a", headers=headers, body=b"{}")


def test_a_listed_origin_or_none_passes_and_another_is_refused() -> None:
    pinned = parse_config(CONFIG).servers["pinned"]
    check_origin(_request("https://app.example.com"), pinned)
    check_origin(_request(None), pinned)  # not from a browser
    with pytest.raises(Forbidden) as refused:
        check_origin(_request("https://evil.example"), pinned)
    assert (refused.value.reason, "'https://evil.example'" in str(refused.value)) == ("origin_not_allowed", True)


def test_a_server_without_origins_accepts_any() -> None:
    check_origin(_request("https://anything.example"), parse_config(CONFIG).servers["open"])
