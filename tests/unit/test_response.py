"""Allow and deny decisions (authz/response.py): what the MCP server receives on allow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from support import DevStack, dev_stack, http_request, policy, server_spec, tool_call

from authz.contract import LIST_ROUTE_HEADER


def stack(tmp_path: Path, **fields: Any) -> DevStack:
    return dev_stack(tmp_path, [server_spec(policy=policy({"name": "all", "methods": ["*"]}), **fields)])


async def test_client_sent_authorizer_headers_are_removed_on_allow(tmp_path: Path) -> None:
    dev = stack(tmp_path)
    forged = {"x-mcp-authz-source": "10.0.0.1", "x-mcp-authz-anything": "x", "x-mcp-authz-peer-subject": "CN=admin"}
    decision = await dev.checker.check(http_request(tool_call("x"), token=dev.token(), headers=forged))
    assert decision.allowed, decision.detail
    assert set(forged) <= set(decision.remove_headers)
    assert "x-mcp-other" not in decision.remove_headers


async def test_the_list_route_header_the_check_sets_is_not_removed(tmp_path: Path) -> None:
    dev = stack(tmp_path, filter_lists=True)
    req = http_request(tool_call("x"), token=dev.token(), headers={LIST_ROUTE_HEADER: "1"})
    decision = await dev.checker.check(req)
    assert (LIST_ROUTE_HEADER, "0") in decision.set_headers  # the client's "1" is overwritten, not kept
    assert LIST_ROUTE_HEADER not in decision.remove_headers  # Envoy removes after it sets
