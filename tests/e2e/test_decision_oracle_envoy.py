"""The HTTP front answers Envoy only (issue 21 item 10), and the rendered Envoy logs every request (issue 17
item 6): a real Envoy 1.40 rendered with ``envoy.authorizer: http`` and ``listen.http_shared_secret``, which
it reads from its own environment (``$MCP_AUTHZ_HTTP_SHARED_SECRET``), ``mcp-authz serve``, the sample server.

Before: anyone who reached the HTTP port could send ``x-mcp-authz-server`` / ``x-mcp-authz-source`` of their
choosing with a token and get an allow decision carrying identity headers.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import yaml
from harness import Authorizer, Envoy, Factory, RawMcp, SampleServer, free_port

from authz import contract
from authz.config.load import parse_config
from authz.identity.devkey import ensure_key, mint
from authz.render.envoy import render_envoy_yaml

SECRET = "shared-secret-only-envoy-knows"
SUBJECT = "alice@example.test"


async def test_only_envoy_gets_decisions_and_each_request_is_logged(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    sample_server: Factory[SampleServer],
    envoy: Factory[Envoy],
    authorizer: Factory[Authorizer],
) -> None:
    key = ensure_key(tmp_path / "signing-key.pem")
    sample = sample_server(json_response=True)
    port, http = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    spec = {
        "listen": {
            "grpc": f"127.0.0.1:{free_port()}",
            "http": f"127.0.0.1:{http}",
            "discovery": f"127.0.0.1:{free_port()}",
            "http_shared_secret": "${MCP_AUTHZ_HTTP_SHARED_SECRET}",
        },
        "issuers": [{"name": "dev", "issuer": f"{base}/dev", "local_key_file": str(key)}],
        "servers": [
            {
                "name": "sample",
                "resource": f"{base}/mcp",
                "upstream": sample.upstream,
                "policy": {
                    "default": "deny",
                    "rules": [
                        {"name": "protocol", "methods": ["initialize", "ping", "notifications/*", "*/list"]},
                        {"name": "read", "tools": ["search"], "scopes": ["tools:read"]},
                    ],
                },
            }
        ],
        "envoy": {"listen": f"127.0.0.1:{port}", "admin_port": free_port(), "authorizer": "http"},
    }
    text = yaml.safe_dump(spec, sort_keys=False)
    monkeypatch.setenv(contract.SHARED_SECRET_ENV, SECRET)  # both processes read it from their environment
    authorizer(text)
    config = parse_config(text, "oracle.yaml")
    rendered = render_envoy_yaml(config)
    assert SECRET not in rendered  # the file holds %ENVIRONMENT(...)%, never the value
    proxy = envoy(rendered)
    bearer = mint(key, issuer=f"{base}/dev", audience=f"{base}/mcp", subject=SUBJECT, scopes=["tools:read"])

    # Through Envoy: decided (allowed with a token, 401 without).
    async with RawMcp(f"{base}/mcp", token=bearer) as mcp:
        allowed = await mcp.call_tool("search", {"query": "x"})
    async with RawMcp(f"{base}/mcp") as mcp:
        challenged = await mcp.call_tool("search", {"query": "x"})
    assert (allowed.status, challenged.status) == (200, 401), allowed.text

    # Straight to the HTTP front, forging what Envoy sets: refused before any Check, with or without a guess.
    forged = {
        "authorization": f"Bearer {bearer}",
        contract.SERVER_HEADER: "sample",
        contract.SOURCE_HEADER: "10.0.0.1",
        "content-type": "application/json",
    }
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}})
    async with httpx.AsyncClient(timeout=10) as client:
        for headers in (forged, {**forged, contract.SHARED_SECRET_HEADER: "a-guessed-secret-value"}):
            direct = await client.post(f"http://127.0.0.1:{http}/mcp", headers=headers, content=body)
            assert direct.status_code == 403, direct.text
            assert "x-mcp-subject" not in direct.headers  # no decision, no identity

    # The access log: one JSON line per request through Envoy, the server and the outcome, never the token.
    entries = proxy.access_log(wanted=2)
    ok, denied = entries[-2:]
    assert ok["mcp_server"] == denied["mcp_server"] == "sample"
    assert (ok["response_code"], denied["response_code"]) == (200, 401)
    assert ok["response_code_details"] == "via_upstream"
    assert denied["response_code_details"] == "ext_authz_denied" and "UAEX" in denied["response_flags"]
    assert ok["path"] == "/mcp" and ok["mcp_method"] == "tools/call"
    log = proxy.proc.log_path.read_text(encoding="utf-8")
    assert bearer not in log and SECRET not in log
