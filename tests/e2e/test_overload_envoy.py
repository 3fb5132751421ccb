"""Admission control through real Envoy (issue 21 item 8): with `listen.max_inflight: 1` and one Check held
in progress (a call waiting for a person's approval), the next request is refused at once with a retryable 503,
on each front; once the held Check is answered, requests pass again.

What the client sees differs by front, as Envoy treats the refusal (docs/operations.md, admission control):
the gRPC fronts answer a CheckResponse deny 503 with `Retry-After: 1`, which Envoy passes on as it is; the HTTP
front answers 503, which Envoy counts as an authorizer error and answers with `status_on_error` (503, no
Retry-After).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness import Authorizer, Envoy, Factory, RawMcp, SampleServer, free_port
from stack import call_body
from test_approval_envoy import CALLBACK_SECRET, WEBHOOK_SECRET, ApprovalWebhook

from authz.config.load import parse_config
from authz.identity.devkey import ensure_key, mint
from authz.render.envoy import render_envoy_yaml

STATELESS = {"content-type": "application/json", "mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call"}


def overload_config(base: str, key: Path, sample: SampleServer, webhook: ApprovalWebhook, front: str) -> str:
    listen: dict[str, Any] = {
        "grpc": f"127.0.0.1:{free_port()}",
        "discovery": f"127.0.0.1:{free_port()}",
        "max_inflight": 1,
    }
    envoy: dict[str, Any] = {"listen": base.removeprefix("http://"), "admin_port": free_port(), "timeout_ms": 5000}
    if front == "http":
        listen["http"] = f"127.0.0.1:{free_port()}"
        envoy["authorizer"] = "http"
    spec = {
        "listen": listen,
        "issuers": [{"name": "dev", "issuer": f"{base}/dev", "local_key_file": str(key)}],
        "servers": [
            {
                "name": "sample",
                "resource": f"{base}/mcp",
                "upstream": sample.upstream,
                "policy": {
                    "default": "deny",
                    "rules": [
                        {"name": "read", "tools": ["search"]},
                        {"name": "held", "tools": ["delete_repo"], "approval": True},  # waits wait_ms in the Check
                    ],
                },
            }
        ],
        "approvals": {
            "webhook_url": webhook.url,
            "webhook_secret": WEBHOOK_SECRET,
            "callback_secret": CALLBACK_SECRET,
            "wait_ms": 2500,
        },
        "envoy": envoy,
    }
    return yaml.safe_dump(spec, sort_keys=False)


@pytest.mark.parametrize("front", ["grpcio", "h2corn", "http"])
async def test_a_saturated_authorizer_refuses_at_once_with_a_retryable_503(
    tmp_path: Path,
    front: str,
    sample_server: Factory[SampleServer],
    envoy: Factory[Envoy],
    authorizer: Factory[Authorizer],
) -> None:
    key = ensure_key(tmp_path / "signing-key.pem")
    webhook = ApprovalWebhook()
    try:
        sample = sample_server(json_response=True)
        base = f"http://127.0.0.1:{free_port()}"
        text = overload_config(base, key, sample, webhook, front)
        grpc_server = {"MCP_AUTHZ_GRPC_SERVER": "h2corn" if front == "h2corn" else "grpcio"}
        authorizer(text, env=grpc_server)
        envoy(render_envoy_yaml(parse_config(text, "e2e-overload.yaml")))
        url = f"{base}/mcp"
        token = mint(key, issuer=f"{base}/dev", audience=url, subject="alice")

        async def call(tool: str, request_id: int) -> Any:
            async with RawMcp(url, token=token) as mcp:
                body = call_body(tool, {"repo": "held-repo"} if tool == "delete_repo" else {"query": "q"}, request_id)
                return await mcp.post(body, headers={**STATELESS, "mcp-name": tool})

        held = asyncio.create_task(call("delete_repo", 1))
        for _ in range(200):  # the held Check has reached the approval stage: it is in progress
            if webhook.received:
                break
            await asyncio.sleep(0.02)
        assert webhook.received, "the held call never reached the approval webhook"
        started = time.monotonic()
        refused = await call("search", 2)
        elapsed = time.monotonic() - started
        assert refused.status == 503, refused.text
        assert elapsed < 1.0, elapsed  # at once, not after the held Check
        retry_after = refused.headers.get("retry-after")
        if front != "http":
            assert retry_after == "1"
            assert refused.message["error"]["message"] == "Unavailable"
        else:
            assert retry_after is None  # status_on_error: Envoy's own 503

        pending = await held
        assert pending.status == 403 and pending.message["error"]["data"]["approval"] == "pending"
        again = await call("search", 3)
        assert again.status == 200, again.text
    finally:
        webhook.close()
