"""Both gRPC fronts (`listen.grpc_server: grpcio | h2corn`) behind real Envoy: bodies up to what the config
allows are checked (issue 21 item 7: grpcio's 4 MiB default refused a 5 MiB body with a silent 503 while
`envoy.max_request_bytes` allowed 16 MiB), and the authorizer drains on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from harness import Authorizer, Envoy, Factory, IdP, SampleServer
from stack import ACCEPT, Stack, call_body, start_stack

BODY_LIMIT = 16 * 1024 * 1024
BIG = 5 * 1024 * 1024  # over grpcio's default 4 MiB receive limit, under envoy.max_request_bytes


@pytest.fixture(scope="module", params=["grpcio", "h2corn"])
def front(
    request: pytest.FixtureRequest,
    e2e_log_dir: Path,
    idp_server: IdP,
    sample_server: Factory[SampleServer],
    authorizer: Factory[Authorizer],
    envoy: Factory[Envoy],
) -> Iterator[Stack]:
    started = start_stack(
        e2e_log_dir,
        name=f"grpc-front-{request.param}",
        idp=idp_server,
        sample_server=sample_server,
        authorizer=authorizer,
        envoy=envoy,
        envoy_settings={"max_request_bytes": BODY_LIMIT},
        grpc_server=request.param,
    )
    yield started
    started.stop()


def big_call(stack: Stack, tool: str, token: str) -> httpx.Response:
    body = json.dumps(call_body(tool, {"query": "x" * BIG}))
    headers = {
        "authorization": f"Bearer {token}",
        "content-type": "application/json",
        "accept": ACCEPT,
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": "tools/call",
        "mcp-name": tool,
    }
    return httpx.post(stack.url, content=body, headers=headers, timeout=30.0)


def test_a_5_mib_body_the_config_allows_is_checked(front: Stack) -> None:
    front.clear()
    reader = front.dev_token(scopes=["tools:read"])
    denied = big_call(front, "delete_repo", reader)  # a decision that needed the body: not Envoy's 503
    assert denied.status_code == 403, denied.text[:300]
    assert "insufficient_scope" in denied.headers.get("www-authenticate", "")
    allowed = big_call(front, "search", reader)
    # Past the Check: the sample server (the MCP SDK) answers, with its own 4 MiB cap.
    assert allowed.status_code == 200 or allowed.text == "Request body too large", allowed.text[:300]


def test_sigterm_ends_the_authorizer_cleanly(front: Stack) -> None:
    """SIGTERM: the front drains (health NOT_SERVING, GOAWAY, calls in flight finish) and the process exits 0.
    (The drain of a call in flight is shown in tests/unit/front/test_grpc_h2corn.py.) Runs last: it stops
    the module's authorizer."""
    token = front.dev_token(scopes=["tools:read"])
    assert big_call(front, "delete_repo", token).status_code == 403
    proc = front.authorizer.proc
    assert proc.pid is not None
    os.kill(proc.pid, signal.SIGTERM)
    proc.wait_until("exit after SIGTERM", lambda: not proc.alive, timeout=15)
    assert proc.returncode == 0, proc.log_tail()
