"""Acceptance, list filtering: real Envoy with ext_authz then ext_proc, the authorizer (Check) and a
second authorizer process serving the list filter (so the test can kill it), the `mcp` SDK sample
server and the SDK client.

Two deployments, one per response form: the sample server answers the session-based revision
(2025-11-25) with SSE, and the 2026-07-28 revision (with `json_response`) with JSON. Both list
three tools per page, so the cursor has to survive filtering.

The policy: `search` and `read_file` need tools:read, `delete_repo` tools:write, `admin_*` tools
and the `admin_prompt` need the `admins` group (a CEL condition on a claim), `summarize` needs
prompts:read, resources under `file:///docs/` need resources:read; `echo_headers` and the secret
resources are allowed to nobody.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from harness import (
    MODE_2025_11_25,
    MODE_2026_07_28,
    Authorizer,
    Envoy,
    Factory,
    IdP,
    SampleServer,
    free_port,
    mcp_client,
)
from mcp.shared.exceptions import MCPError
from stack import ACCEPT, META

from authz.config.load import parse_config
from authz.render.envoy import EXTPROC_CLUSTER, render_envoy_yaml

POLICY: dict[str, Any] = {
    "default": "deny",
    "rules": [
        {
            "name": "protocol",
            "methods": [
                "initialize",
                "notifications/*",
                "ping",
                "server/discover",
                "*/list",
                "resources/templates/list",
            ],
        },
        {"name": "stream-and-close", "http_methods": ["GET", "DELETE"]},
        {"name": "read-tools", "tools": ["search", "read_file"], "scopes": ["tools:read"]},
        {"name": "write-tools", "tools": ["delete_repo", "countdown"], "scopes": ["tools:write"]},
        {"name": "admin-tools", "tools": ["admin_*"], "scopes": ["tools:write"], "when": '"admins" in jwt.groups'},
        {"name": "admin-prompts", "prompts": ["admin_*"], "when": '"admins" in jwt.groups'},
        {"name": "prompts", "prompts": ["summarize"], "scopes": ["prompts:read"]},
        {"name": "docs", "resources": ["file:///docs/*"], "scopes": ["resources:read"]},
    ],
}
ALL_TOOLS = {"search", "read_file", "delete_repo", "admin_reset", "echo_headers", "countdown"}
PAGE_SIZE = 3


@dataclass(frozen=True)
class Deployment:
    form: str  # "sse" | "json"
    mode: str  # the SDK client's mode: the revision that gets this response form
    idp: IdP
    sample: SampleServer
    checker: Authorizer
    processor: Authorizer
    envoy: Envoy
    log_dir: Path

    @property
    def url(self) -> str:
        return self.envoy.url("/mcp")

    def token(self, client_id: str, scope: str) -> str:
        return self.idp.access_token(client_id, self.url, scope=scope)

    def headers(self, client_id: str, scope: str) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token(client_id, scope)}"}


def authz_config(sample: SampleServer, envoy_port: int, idp: IdP, failure: str = "closed") -> dict[str, Any]:
    return {
        "listen": {"grpc": f"127.0.0.1:{free_port()}", "discovery": f"127.0.0.1:{free_port()}"},
        "issuers": [{"name": "idp", "issuer": idp.issuer, "algorithms": ["RS256"], "token_type": "at+jwt"}],
        "servers": [
            {
                "name": "demo",
                "resource": f"http://127.0.0.1:{envoy_port}/mcp",
                "upstream": sample.upstream,
                "scopes_supported": ["tools:read"],
                "policy": POLICY,
                "filter_lists": True,
            }
        ],
        "envoy": {"listen": f"127.0.0.1:{envoy_port}", "admin_port": free_port(), "timeout_ms": 2000},
        "ext_proc": {"failure": failure, "message_timeout_ms": 2000},
    }


def envoy_with_processor(config_text: str, processor_grpc: str) -> str:
    """The rendered Envoy, its ext_proc cluster pointed at the separate processor process."""
    boot = yaml.safe_load(render_envoy_yaml(parse_config(config_text)))
    (extproc,) = [c for c in boot["static_resources"]["clusters"] if c["name"] == EXTPROC_CLUSTER]
    host, _, port = processor_grpc.rpartition(":")
    address = extproc["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    address["socket_address"] = {"address": host, "port_value": int(port)}
    return yaml.safe_dump(boot, sort_keys=False)


def start_deployment(
    form: str,
    log_dir: Path,
    idp: IdP,
    sample_server: Factory[SampleServer],
    authorizer: Factory[Authorizer],
    envoy: Factory[Envoy],
    failure: str = "closed",
) -> Deployment:
    sample = sample_server(page_size=PAGE_SIZE, json_response=form == "json", env={"SAMPLE_COUNTDOWN_TOOL": "1"})
    port = free_port()
    spec = authz_config(sample, port, idp, failure)
    checker_path = log_dir / f"extproc-{form}-{failure}-checker.yaml"
    checker_path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    # The processor: the same config on its own ports, so the test can kill it alone.
    spec_p = {**spec, "listen": {"grpc": f"127.0.0.1:{free_port()}", "discovery": f"127.0.0.1:{free_port()}"}}
    processor_path = log_dir / f"extproc-{form}-{failure}-processor.yaml"
    processor_path.write_text(yaml.safe_dump(spec_p, sort_keys=False), encoding="utf-8")
    checker = authorizer(checker_path)
    processor = authorizer(processor_path)
    proxy = envoy(envoy_with_processor(checker_path.read_text(), spec_p["listen"]["grpc"]))
    mode = MODE_2025_11_25 if form == "sse" else MODE_2026_07_28
    return Deployment(form, mode, idp, sample, checker, processor, proxy, log_dir)


@pytest.fixture(scope="module", params=["sse", "json"])
def deployment(
    request: pytest.FixtureRequest,
    e2e_log_dir: Path,
    idp_server: IdP,
    sample_server: Factory[SampleServer],
    authorizer: Factory[Authorizer],
    envoy: Factory[Envoy],
) -> Iterator[Deployment]:
    started = start_deployment(request.param, e2e_log_dir, idp_server, sample_server, authorizer, envoy)
    yield started
    for proc in (started.envoy.proc, started.processor.proc, started.checker.proc, started.sample.proc):
        proc.stop()


async def list_all(client: Any, kind: str) -> tuple[list[str], list[str | None]]:
    """Every entry name (URI for resources) over all pages, and the cursors the pages carried."""
    names: list[str] = []
    cursors: list[str | None] = []
    cursor: str | None = None
    while True:
        if kind == "tools":
            page: Any = await client.list_tools(cursor=cursor)
            names += [t.name for t in page.tools]
        elif kind == "prompts":
            page = await client.list_prompts(cursor=cursor)
            names += [p.name for p in page.prompts]
        elif kind == "resources":
            page = await client.list_resources(cursor=cursor)
            names += [str(r.uri) for r in page.resources]
        else:
            page = await client.list_resource_templates(cursor=cursor)
            names += [t.uri_template for t in page.resource_templates]
        cursor = page.next_cursor
        cursors.append(cursor)
        if cursor is None:
            return names, cursors


# ---------------------------------------------------------------- filtering


async def test_reader_sees_only_search_and_read_file(deployment: Deployment) -> None:
    headers = deployment.headers("m2m-reader", "tools:read")
    async with mcp_client(deployment.url, mode=deployment.mode, headers=headers) as client:
        names, cursors = await list_all(client, "tools")
        assert names == ["search", "read_file"]
        assert cursors == ["3", None]  # page 2 kept its place in the pagination
        prompts, _ = await list_all(client, "prompts")
        assert prompts == []
        resources, _ = await list_all(client, "resources")
        assert resources == []


@pytest.mark.parametrize(
    ("client_id", "scope", "tools", "prompts", "resources", "templates"),
    [
        (
            "m2m-writer",
            "tools:read tools:write",
            ["search", "read_file", "delete_repo", "countdown"],
            [],
            [],
            [],
        ),
        (
            "m2m-admin",
            "tools:read tools:write prompts:read resources:read",
            ["search", "read_file", "delete_repo", "admin_reset", "countdown"],
            ["summarize", "admin_prompt"],
            ["file:///docs/readme"],
            ["file:///docs/{name}.md"],
        ),
    ],
)
async def test_wider_rights_see_more(
    deployment: Deployment,
    client_id: str,
    scope: str,
    tools: list[str],
    prompts: list[str],
    resources: list[str],
    templates: list[str],
) -> None:
    async with mcp_client(deployment.url, mode=deployment.mode, headers=deployment.headers(client_id, scope)) as client:
        assert (await list_all(client, "tools"))[0] == tools
        assert (await list_all(client, "prompts"))[0] == prompts
        assert (await list_all(client, "resources"))[0] == resources
        assert (await list_all(client, "templates"))[0] == templates
        # What is listed can be used, and a hidden tool stays refused.
        assert not (await client.call_tool(tools[-1], {"count": 1} if tools[-1] == "countdown" else {})).is_error
        with pytest.raises(MCPError):
            await client.call_tool("echo_headers", {})


async def test_refusals_keep_their_challenge(deployment: Deployment) -> None:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    async with httpx.AsyncClient(timeout=30.0) as http:
        refused = await http.post(deployment.url, content=body, headers={"content-type": "application/json"})
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"].startswith("Bearer ")
    assert "resource_metadata=" in refused.headers["www-authenticate"]


# ---------------------------------------------------------------- the bytes on the wire


CLIENT_INFO = {"name": "raw", "version": "0"}
JSON_ONLY = {"content-type": "application/json"}
call_body = {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "search", "arguments": {}}}


class Raw:
    """Hand-made requests of the deployment's revision, through Envoy or straight to the sample server."""

    def __init__(self, deployment: Deployment, url: str, token: str | None = None) -> None:
        self.modern = deployment.form == "json"
        self.url = url
        self.http = httpx.AsyncClient(timeout=30.0)
        self.headers = {"content-type": "application/json", "accept": ACCEPT}
        if token:
            self.headers["authorization"] = f"Bearer {token}"

    async def __aenter__(self) -> Raw:
        if self.modern:
            self.headers["mcp-protocol-version"] = "2026-07-28"
            return self
        init = {
            "jsonrpc": "2.0",
            "id": 0,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "raw", "version": "0"},
            },
        }
        response = await self.http.post(self.url, content=json.dumps(init), headers=self.headers)
        assert response.status_code == 200, response.text
        self.headers["mcp-session-id"] = response.headers["mcp-session-id"]
        self.headers["mcp-protocol-version"] = "2025-11-25"
        await self.notify("notifications/initialized")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()

    async def post(self, method: str, params: dict[str, Any], request_id: int | str | None) -> httpx.Response:
        body: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": params}
        headers = dict(self.headers)
        if self.modern:
            params["_meta"] = {**META, **params.get("_meta", {})}
            headers["mcp-method"] = method
            if "name" in params:
                headers["mcp-name"] = params["name"]
        if request_id is not None:
            body["id"] = request_id
        return await self.http.post(self.url, content=json.dumps(body), headers=headers)

    async def notify(self, method: str) -> httpx.Response:
        return await self.post(method, {}, None)


def messages(response: httpx.Response) -> list[dict[str, Any]]:
    if response.headers["content-type"].startswith("text/event-stream"):
        events = [e for e in response.text.replace("\r\n", "\n").split("\n\n") if "data:" in e]
        return [json.loads("".join(line[5:] for line in e.split("\n") if line.startswith("data:"))) for e in events]
    return [response.json()]


async def test_list_response_keeps_every_other_field(deployment: Deployment) -> None:
    token = deployment.token("m2m-reader", "tools:read")
    async with (
        Raw(deployment, deployment.url, token) as proxied,
        Raw(deployment, deployment.sample.url, None) as direct,
    ):
        filtered = await proxied.post("tools/list", {}, "list-1")
        original = await direct.post("tools/list", {}, "list-1")
    form = "text/event-stream" if deployment.form == "sse" else "application/json"
    assert filtered.headers["content-type"].startswith(form) and original.headers["content-type"].startswith(form)
    if "content-length" in filtered.headers:
        assert int(filtered.headers["content-length"]) == len(filtered.content)
    (got,) = messages(filtered)
    (want,) = messages(original)
    assert [t["name"] for t in want["result"]["tools"]] == ["search", "read_file", "delete_repo"]
    want["result"]["tools"] = want["result"]["tools"][:2]
    assert got == want  # id, nextCursor, _meta and the rest untouched; only delete_repo gone


async def test_other_traffic_passes_byte_for_byte(deployment: Deployment) -> None:
    token = deployment.token("m2m-writer", "tools:read tools:write")
    async with (
        Raw(deployment, deployment.url, token) as proxied,
        Raw(deployment, deployment.sample.url, None) as direct,
    ):
        for raw in (proxied, direct):
            raw.headers["x-test"] = "1"
        calls = [
            ("tools/call", {"name": "search", "arguments": {"query": "readme"}}, 11),
            ("tools/call", {"name": "countdown", "arguments": {"count": 300}, "_meta": {"progressToken": "p"}}, 12),
            ("ping", {}, "ping-13"),
            ("notifications/cancelled", {"requestId": 99, "reason": "test"}, None),
        ]
        answers: dict[str, httpx.Response] = {}
        streams = int(deployment.envoy.stats("ext_proc")["http.mcp.ext_proc.streams_started"])
        for method, params, request_id in calls:
            through = await proxied.post(method, json.loads(json.dumps(params)), request_id)
            straight = await direct.post(method, json.loads(json.dumps(params)), request_id)
            assert through.status_code == straight.status_code, (method, through.text)
            assert through.content == straight.content, method
            assert through.headers.get("content-type") == straight.headers.get("content-type")
            answers[str(params.get("name", method))] = through
        # Only what needs it is processed: a request whose Mcp-Method names no list (2026-07-28), or
        # that the Check found no list in (x-mcp-authz-list: 0, 2025-11-25), never reaches ext_proc.
        started = int(deployment.envoy.stats("ext_proc")["http.mcp.ext_proc.streams_started"]) - streams
        assert started == 0
    assert not any("x-mcp-authz-list" in r["headers"] for r in deployment.sample.requests())
    assert answers["notifications/cancelled"].status_code == 202
    countdown = messages(answers["countdown"])
    assert countdown[-1]["id"] == 12 and countdown[-1]["result"]["content"][0]["text"] == "counted 300"
    if deployment.form == "sse":  # a long stream: 300 progress events, then the answer
        assert [m["params"]["progress"] for m in countdown[:-1]] == list(range(1, 301))
    assert deployment.sample.tool_calls().count("countdown") >= 2


# ---------------------------------------------------------------- failure (last: it kills the processor)


async def test_processor_killed_list_responses_fail_closed(deployment: Deployment) -> None:
    token = deployment.token("m2m-admin", "tools:read tools:write prompts:read resources:read")
    async with Raw(deployment, deployment.url, token) as raw:
        before = await raw.post("tools/list", {}, 41)
        assert before.status_code == 200 and "delete_repo" in before.text

        # A processor that stops answering: Envoy gives up after ext_proc.message_timeout_ms, no hang.
        pid = deployment.processor.proc.pid
        assert pid is not None and deployment.processor.proc.alive
        os.kill(pid, signal.SIGSTOP)
        stuck = await raw.post("tools/list", {}, 40)
        assert stuck.status_code == 504, stuck.text  # Envoy's status for a message timeout
        assert stuck.json()["id"] == 40 and stuck.json()["error"]["message"] == "list filtering unavailable"

        os.kill(pid, signal.SIGKILL)
        deployment.processor.proc.stop()
        deployment.sample.clear_logs()

        for request_id in (42, "list-43"):
            refused = await raw.post("tools/list", {}, request_id)
            assert refused.status_code == 503
            assert refused.headers["content-type"] == "application/json"
            assert refused.json() == {
                "jsonrpc": "2.0",
                "id": request_id,
                "error": {"code": -32603, "message": "list filtering unavailable"},
            }
        prompts = await raw.post("prompts/list", {}, 44)
        assert prompts.status_code == 503 and prompts.json()["id"] == 44 and "summarize" not in prompts.text
        async with httpx.AsyncClient(timeout=30.0) as anonymous:
            refused = await anonymous.post(deployment.url, content=json.dumps(call_body), headers=JSON_ONLY)
        # A refusal by the Check never goes to the processor: the challenge works while it is gone.
        assert refused.status_code == 401 and "resource_metadata=" in refused.headers["www-authenticate"]
        # A request that lists nothing is routed past the processor, and still served.
        called = await raw.post("tools/call", {"name": "search", "arguments": {"query": "x"}}, 45)
        assert called.status_code == 200 and messages(called)[-1]["result"]["isError"] is False
    # The lists never reached the server: nothing unfiltered left; the call did.
    assert [r["method"] for r in deployment.sample.requests()] == ["POST"]
    assert deployment.sample.tool_calls() == ["search"]
    # The SDK client gets the JSON-RPC error (at its first request: on this route, everything fails closed).
    with pytest.raises(BaseException) as caught:
        async with mcp_client(deployment.url, mode=deployment.mode, headers={"authorization": f"Bearer {token}"}) as c:
            await c.list_tools()
    errors = flatten(caught.value)
    assert any(isinstance(e, MCPError) and "list filtering unavailable" in str(e) for e in errors), errors


def flatten(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in flatten(inner)]
    return [error]


async def test_failure_open_passes_lists_unfiltered_when_the_processor_is_gone(
    e2e_log_dir: Path,
    idp_server: IdP,
    sample_server: Factory[SampleServer],
    authorizer: Factory[Authorizer],
    envoy: Factory[Envoy],
) -> None:
    """`ext_proc.failure: open`, chosen by the operator: Envoy's failure_mode_allow lets answers through."""
    open_ = start_deployment("json", e2e_log_dir, idp_server, sample_server, authorizer, envoy, failure="open")
    try:
        headers = open_.headers("m2m-reader", "tools:read")
        async with mcp_client(open_.url, mode=open_.mode, headers=headers) as client:
            assert (await list_all(client, "tools"))[0] == ["search", "read_file"]  # filtered while it runs
        open_.processor.proc.stop()
        async with mcp_client(open_.url, mode=open_.mode, headers=headers) as client:
            names, cursors = await list_all(client, "tools")
        assert sorted(names) == sorted(ALL_TOOLS) and cursors == ["3", None]
    finally:
        for proc in (open_.envoy.proc, open_.processor.proc, open_.checker.proc, open_.sample.proc):
            proc.stop()
