"""The sample MCP server, the SDK client in both protocol eras, and the process harness itself."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import pytest
import redis as redis_lib
from harness import (
    MODE_2025_11_25,
    MODE_2026_07_28,
    MODE_AUTO,
    Envoy,
    Factory,
    Proc,
    RawMcp,
    Redis,
    SampleServer,
    StartupError,
    envoy_proxy_config,
    free_port,
    mcp_client,
)

TOOLS = {"search", "read_file", "delete_repo", "admin_reset", "echo_headers"}


@pytest.fixture(scope="module")
def sample(sample_server: Factory[SampleServer]) -> SampleServer:
    return sample_server()


@pytest.fixture
def fresh(sample: SampleServer) -> SampleServer:
    sample.clear_logs()
    return sample


@pytest.mark.parametrize(
    ("mode", "version"),
    [(MODE_AUTO, "2026-07-28"), (MODE_2026_07_28, "2026-07-28"), (MODE_2025_11_25, "2025-11-25")],
)
async def test_sdk_client_lists_and_calls_tools(fresh: SampleServer, mode: str, version: str) -> None:
    async with mcp_client(fresh.url, mode=mode) as client:
        assert client.protocol_version == version
        tools = await client.list_tools()
        assert {t.name for t in tools.tools} == TOOLS
        result = await client.call_tool("search", {"query": "readme"})
        assert not result.is_error
        echoed = await client.call_tool("echo_headers", {})
    assert fresh.calls() == [
        {"tool": "search", "arguments": {"query": "readme"}},
        {"tool": "echo_headers", "arguments": {}},
    ]
    headers = echoed.structured_content
    assert headers is not None
    assert headers["mcp-protocol-version"] == version
    requests = fresh.requests()
    assert requests and all(r["path"] == "/mcp" for r in requests)
    assert not any("authorization" in r["headers"] for r in requests)
    calls = [r["headers"] for r in requests if r["headers"].get("mcp-method") == "tools/call"]
    if version == "2026-07-28":
        # The stateless revision mirrors method and name into headers; no sessions.
        assert [h["mcp-name"] for h in calls] == ["search", "echo_headers"]
        assert not any("mcp-session-id" in r["headers"] for r in requests)
    else:
        assert calls == []
        assert any("mcp-session-id" in r["headers"] for r in requests)


async def test_prompts_and_resources(fresh: SampleServer) -> None:
    async with mcp_client(fresh.url) as client:
        prompts = await client.list_prompts()
        assert {p.name for p in prompts.prompts} == {"summarize", "admin_prompt"}
        resources = await client.list_resources()
        assert {str(r.uri) for r in resources.resources} == {"file:///docs/readme", "file:///secret/keys"}
        await client.get_prompt("summarize", {"text": "hello"})
        await client.read_resource("file:///docs/readme")
    assert fresh.calls() == [
        {"prompt": "summarize", "arguments": {"text": "hello"}},
        {"resource": "file:///docs/readme"},
    ]


async def test_echo_headers_returns_what_the_server_received(fresh: SampleServer) -> None:
    async with mcp_client(fresh.url, headers={"x-mcp-subject": "alice"}) as client:
        result = await client.call_tool("echo_headers", {})
    assert result.structured_content is not None
    assert result.structured_content["x-mcp-subject"] == "alice"
    assert fresh.requests()[-1]["headers"]["x-mcp-subject"] == "alice"


async def test_raw_2025_06_18_session(fresh: SampleServer) -> None:
    async with RawMcp(fresh.url, protocol_version="2025-06-18") as raw:
        init = await raw.initialize()
        assert init.status == 200
        assert init.message["result"]["protocolVersion"] == "2025-06-18"
        assert raw.session_id
        listed = await raw.request("tools/list")
        assert {t["name"] for t in listed.message["result"]["tools"]} == TOOLS
        called = await raw.call_tool("read_file", {"path": "src/main.py"})
        assert called.status == 200
        assert "hello" in called.message["result"]["content"][0]["text"]
    assert fresh.tool_calls() == ["read_file"]
    assert all(r["headers"].get("mcp-protocol-version", "2025-06-18") == "2025-06-18" for r in fresh.requests())


async def test_raw_2026_07_28_request_and_header_mismatch(fresh: SampleServer) -> None:
    async with RawMcp(fresh.url) as raw:
        ok = await raw.call_tool("search", {"query": "main"})
        assert ok.status == 200
        assert not ok.message["result"].get("isError")
        # A 2026-07-28 server refuses routing headers that disagree with the body (-32020).
        bad = await raw.call_tool("delete_repo", {"repo": "x"}, headers={"mcp-name": "search"})
        assert bad.status == 400
        assert bad.message["error"]["code"] == -32020
    assert fresh.tool_calls() == ["search"]


async def test_paginated_tools_list(sample_server: Factory[SampleServer]) -> None:
    paged = sample_server(page_size=2)
    for mode in (MODE_2026_07_28, MODE_2025_11_25):
        names: list[str] = []
        pages = 0
        async with mcp_client(paged.url, mode=mode) as client:
            cursor: str | None = None
            while True:
                page = await client.list_tools(cursor=cursor)
                pages += 1
                names += [t.name for t in page.tools]
                cursor = page.next_cursor
                if cursor is None:
                    break
        assert pages == 3
        assert set(names) == TOOLS
    paged.proc.stop()
    assert not paged.proc.alive


async def test_through_plain_envoy(sample: SampleServer, envoy: Factory[Envoy]) -> None:
    """Envoy in front (no auth): the sample server accepts the proxy's Host; the harness starts Envoy."""
    proxy = envoy(envoy_proxy_config(free_port(), sample.port, admin_port=free_port()))
    assert proxy.base_id > 0
    sample.clear_logs()
    for mode in (MODE_AUTO, MODE_2025_11_25):
        async with mcp_client(proxy.url("/mcp"), mode=mode) as client:
            result = await client.call_tool("search", {"query": "x"})
            assert not result.is_error
    assert sample.tool_calls() == ["search", "search"]
    assert all("x-request-id" in r["headers"] for r in sample.requests())
    assert int(proxy.stats("downstream_rq_2xx").get("http.mcp.downstream_rq_2xx", "0")) > 0


def test_redis_factory(redis: Factory[Redis]) -> None:
    server = redis()
    client = redis_lib.Redis.from_url(server.url)
    try:
        assert client.ping()
        client.set("k", "v")
        assert client.get("k") == b"v"
    finally:
        client.close()
    server.proc.stop()
    assert not server.proc.alive


def test_proc_failure_reports_the_log_tail(e2e_log_dir: Path) -> None:
    proc = Proc("doomed", [sys.executable, "-c", "print('boom: no config'); raise SystemExit(3)"], log_dir=e2e_log_dir)
    with proc, pytest.raises(StartupError, match=r"(?s)exited with 3.*boom: no config"):
        proc.wait_port(free_port(), timeout=10)


def test_proc_stop_kills_the_whole_group(e2e_log_dir: Path) -> None:
    script = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print(f'grandchild-pid:{child.pid}', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = Proc("parent", [sys.executable, "-c", script], log_dir=e2e_log_dir).start()
    proc.wait_until("the grandchild's pid", lambda: re.search(r"grandchild-pid:(\d+)", proc.log_text()) is not None, 10)
    match = re.search(r"grandchild-pid:(\d+)", proc.log_text())
    assert match is not None
    child_pid = int(match.group(1))
    assert proc.stop(timeout=2) is not None
    assert not proc.alive
    deadline = time.monotonic() + 5
    while _running(child_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _running(child_pid)


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def test_wait_http_times_out_with_a_clear_error(e2e_log_dir: Path) -> None:
    port = free_port()
    proc = Proc("idle", [sys.executable, "-c", "import time; time.sleep(30)"], log_dir=e2e_log_dir)
    with proc, pytest.raises(StartupError, match="not ready after 1s"):
        proc.wait_http(f"http://127.0.0.1:{port}/readyz", timeout=1)
