"""Telemetry end to end: real Envoy (gRPC ext_authz), ``mcp-authz serve`` and the sample MCP server.

A known sequence of calls goes through Envoy; then ``/metrics`` on the discovery port is scraped and
parsed (prometheus_client), the audit webhook's batches arrive signed at a loopback receiver, the
Check spans reach a loopback OTLP/HTTP receiver parented on the client's ``traceparent``, and the
startup line states the configuration with the webhook secret masked.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from harness import Authorizer, Envoy, Factory, RawMcp, SampleServer, free_port
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client.parser import text_string_to_metric_families
from stack import sample_spec

from authz.config.load import parse_config
from authz.identity.devkey import ensure_key, mint
from authz.render.envoy import render_envoy_yaml

SECRET = "e2e-webhook-secret-0f1e2d3c4b5a6978"
TRACE = "5bf92f3577b34da6a3ce929d0e0e4737"
PARENT = "00f067aa0ba902b8"


@dataclass
class Received:
    """What the loopback receivers got: webhook batches (with signature checks) and OTLP trace exports."""

    webhook: list[list[dict[str, Any]]] = field(default_factory=list)
    bad_signatures: int = 0
    spans: list[Any] = field(default_factory=list)  # opentelemetry.proto Span messages
    metric_exports: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def receiver(received: Received) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            with received.lock:
                if self.path == "/audit":
                    timestamp = self.headers.get("x-mcp-authz-timestamp", "")
                    mac = hmac.new(SECRET.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
                    if hmac.compare_digest(self.headers.get("x-mcp-authz-signature", ""), f"sha256={mac}"):
                        received.webhook.append(json.loads(body))
                    else:
                        received.bad_signatures += 1
                elif self.path == "/v1/traces":
                    request = ExportTraceServiceRequest.FromString(body)
                    for resource_spans in request.resource_spans:
                        for scope_spans in resource_spans.scope_spans:
                            received.spans.extend(scope_spans.spans)
                elif self.path == "/v1/metrics":
                    received.metric_exports += 1
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@dataclass(frozen=True)
class Stack:
    authorizer: Authorizer
    key: Path
    base: str
    received: Received

    @property
    def url(self) -> str:
        return f"{self.base}/mcp"

    def token(self, scopes: list[str]) -> str:
        subject = "metrics@example.test"
        return mint(self.key, issuer=f"{self.base}/dev", audience=self.url, subject=subject, scopes=scopes)

    def wait(self, what: str, condition: Any, timeout: float = 20.0) -> None:
        self.authorizer.proc.wait_until(what, condition, timeout)


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    sample_server: Factory[SampleServer],
    envoy: Factory[Envoy],
    authorizer: Factory[Authorizer],
) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("telemetry")
    key = ensure_key(tmp / "signing-key.pem")
    received = Received()
    server = receiver(received)
    sink = f"http://127.0.0.1:{server.server_address[1]}"
    sample = sample_server(json_response=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    spec = sample_spec(
        key,
        port,
        sample.upstream,
        audit={"webhook": {"url": f"{sink}/audit", "secret": "${E2E_WEBHOOK_SECRET}", "flush_interval": 0.2}},
        telemetry={"otlp_endpoint": sink, "service_name": "mcp-authz-e2e", "export_interval": 1},
    )
    text = yaml.safe_dump(spec, sort_keys=False)
    running = authorizer(text, env={"E2E_WEBHOOK_SECRET": SECRET})
    config = parse_config(text.replace("${E2E_WEBHOOK_SECRET}", SECRET), "e2e-telemetry.yaml")
    envoy(render_envoy_yaml(config))
    try:
        yield Stack(running, key, base, received)
    finally:
        server.shutdown()


def scrape(stack: Stack) -> dict[str, Any]:
    response = httpx.get(f"{stack.authorizer.discovery_url}/metrics", timeout=5)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {family.name: family for family in text_string_to_metric_families(response.text)}


def decisions(families: dict[str, Any]) -> dict[tuple[str, str, str, str], float]:
    return {
        (s.labels["decision"], s.labels["reason"], s.labels["server"], s.labels["tool"]): s.value
        for s in families["mcp_authz_decisions"].samples
        if s.name == "mcp_authz_decisions_total"
    }


async def test_metrics_webhook_traces_and_startup_line(stack: Stack) -> None:
    token = stack.token(["tools:read"])
    traceparent = f"00-{TRACE}-{PARENT}-01"
    async with RawMcp(stack.url, token=token, headers={"traceparent": traceparent}) as mcp:
        for _ in range(2):
            allowed = await mcp.call_tool("search", {"query": "q"})
            assert allowed.status == 200, allowed.text
    async with RawMcp(stack.url, token=token) as mcp:
        refused = await mcp.call_tool("delete_repo", {"repo": "sample"})
    assert refused.status == 403, refused.text
    async with RawMcp(stack.url) as mcp:
        anonymous = await mcp.call_tool("search", {"query": "q"})
    assert anonymous.status == 401, anonymous.text
    async with httpx.AsyncClient() as client:
        malformed = await client.post(
            stack.url,
            content=b'{"jsonrpc": "2.0", "id": 1, "method": ',
            headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
        )
    assert malformed.status_code == 400, malformed.text

    # /metrics on the discovery port, parsed
    families = scrape(stack)
    counts = decisions(families)
    assert counts[("allow", "allowed", "sample", "search")] == 2
    assert counts[("deny", "insufficient_scope", "sample", "delete_repo")] == 1
    assert counts[("deny", "token_missing", "sample", "")] == 1  # refused before the body is parsed
    assert counts[("deny", "body_invalid", "sample", "")] == 1
    assert sum(counts.values()) == 5
    latency = {
        s.labels["decision"]: s.value
        for s in families["mcp_authz_check_duration_seconds"].samples
        if s.name.endswith("_count")
    }
    assert latency == {"allow": 2, "deny": 3}
    cache = {s.labels["result"]: s.value for s in families["mcp_authz_token_cache_lookups"].samples if s.labels}
    assert cache.get("miss", 0) >= 1 and cache.get("hit", 0) >= 2

    # the audit webhook: every decision, in signed batches
    def webhook_events() -> list[dict[str, Any]]:
        with stack.received.lock:
            return [e for batch in stack.received.webhook for e in batch]

    stack.wait("5 audit events at the webhook", lambda: len(webhook_events()) >= 5)
    events = webhook_events()
    assert stack.received.bad_signatures == 0
    assert sorted(e["reason"] for e in events) == [
        "allowed",
        "allowed",
        "body_invalid",
        "insufficient_scope",
        "token_missing",
    ]
    assert all(token not in json.dumps(e) for e in events)

    # spans, exported by OTLP/HTTP, children of the client's traceparent; the audit event names the trace
    def check_spans() -> list[Any]:
        with stack.received.lock:
            return [s for s in stack.received.spans if s.name == "mcp-authz.check"]

    stack.wait("5 Check spans at the OTLP receiver", lambda: len(check_spans()) >= 5)
    joined = [s for s in check_spans() if s.trace_id.hex() == TRACE]
    assert len(joined) == 2 and all(s.parent_span_id.hex() == PARENT for s in joined)
    attributes = {a.key: a.value for a in joined[0].attributes}
    assert attributes["mcp_authz.decision"].string_value == "allow"
    assert attributes["mcp_authz.server"].string_value == "sample"
    assert attributes["mcp.name"].string_value == "search"
    assert attributes["enduser.id"].string_value == "metrics@example.test"
    assert [e["trace_id"] for e in events if e["reason"] == "allowed"] == [TRACE, TRACE]
    others = {s.trace_id.hex() for s in check_spans()} - {TRACE}
    assert {e["trace_id"] for e in events if e["reason"] != "allowed"} == others  # new traces, one per Check
    stack.wait("an OTLP metrics export", lambda: stack.received.metric_exports >= 1)

    # the startup line: the configuration in force, the webhook secret masked, never in the log
    log = stack.authorizer.proc.log_text()
    lines = [json.loads(line) for line in log.splitlines() if '"configuration in force"' in line]
    assert len(lines) == 1
    settings = lines[0]["settings"]
    assert settings["audit"]["webhook"]["secret"] == "***"
    assert settings["telemetry"]["service_name"] == "mcp-authz-e2e"
    assert settings["servers"][0]["name"] == "sample"
    assert SECRET not in log and token not in log
