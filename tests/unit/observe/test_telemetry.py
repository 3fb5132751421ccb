"""Telemetry (authz/telemetry.py) through Authorizer.observe: a span per Check parented on `traceparent`,
the metric points of a known sequence of Checks (in-memory OpenTelemetry reader and exporter), the
Prometheus exposition, the counting API before setup, and the masked startup configuration."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader, NumberDataPoint
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client.parser import text_string_to_metric_families
from support import DevStack, dev_stack, http_request, policy, server_spec, tool_call

from authz.app import Authorizer
from authz.config.compile import compile_telemetry
from authz.config.load import load_config
from authz.config.schema import TelemetrySpec
from authz.model import HttpRequest
from authz.observe import telemetry
from authz.observe.audit import Auditor
from authz.observe.logs import MASK, JsonFormatter

TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE}-{PARENT}-01"


@pytest.fixture
def stack(tmp_path: Path) -> DevStack:
    rules = policy(
        {"name": "delete", "tools": ["delete_*"], "scopes": ["tools:write"]},
        {"name": "tools", "tools": ["*"], "scopes": ["tools:read"]},
        {"name": "rest", "methods": ["*"]},
    )
    return dev_stack(tmp_path, [server_spec(scopes_supported=["tools:read", "tools:write"], policy=rules)])


class Observed:
    def __init__(self, authorizer: Authorizer, spans: InMemorySpanExporter, metrics: InMemoryMetricReader) -> None:
        self.authorizer = authorizer
        self.spans = spans
        self.metrics = metrics
        self.out = io.StringIO()
        authorizer.audit = Auditor(out=self.out)

    async def check(self, req: HttpRequest) -> dict[str, Any]:
        """Run one Check as the servers do (start time, check, observe); its audit event."""
        started = time.perf_counter_ns()
        decision = await self.authorizer.checker.check(req)
        self.authorizer.observe(req, decision, started)
        return dict(json.loads(self.out.getvalue().splitlines()[-1]))

    def points(self, name: str) -> list[Any]:
        data = self.metrics.get_metrics_data()
        assert data is not None
        return [
            point
            for rm in data.resource_metrics
            for sm in rm.scope_metrics
            for metric in sm.metrics
            if metric.name == name
            for point in metric.data.data_points
        ]

    def count(self, name: str, **attributes: str) -> int:
        total = 0
        for point in self.points(name):
            assert isinstance(point, NumberDataPoint)
            if all((point.attributes or {}).get(k) == v for k, v in attributes.items()):
                total += int(point.value)
        return total


@pytest.fixture
def observed(stack: DevStack) -> Iterator[Observed]:
    spans = InMemorySpanExporter()
    reader = InMemoryMetricReader()
    telemetry.setup(compile_telemetry(TelemetrySpec()), metric_readers=[reader], span_exporter=spans)
    try:
        yield Observed(Authorizer(stack.config), spans, reader)
    finally:
        telemetry.shutdown()


def only_span(spans: InMemorySpanExporter) -> ReadableSpan:
    finished = spans.get_finished_spans()
    assert len(finished) == 1
    spans.clear()
    return finished[0]


async def test_span_is_a_child_of_traceparent(stack: DevStack, observed: Observed) -> None:
    token = stack.token(scopes=["tools:read"])
    before = time.time_ns()
    ev = await observed.check(http_request(tool_call("search"), token=token, headers={"traceparent": TRACEPARENT}))
    span = only_span(observed.spans)
    assert span.name == "mcp-authz.check" and span.kind == SpanKind.INTERNAL
    assert span.parent is not None and span.parent.is_remote
    assert (f"{span.parent.trace_id:032x}", f"{span.parent.span_id:016x}") == (TRACE, PARENT)
    assert f"{span.context.trace_id:032x}" == TRACE and f"{span.context.span_id:016x}" != PARENT
    assert dict(span.attributes or {}) == {
        "mcp_authz.decision": "allow",
        "mcp_authz.reason": "allowed",
        "http.response.status_code": 200,
        "mcp_authz.server": "mcp",
        "mcp.method.name": "tools/call",
        "mcp.name": "search",
        "enduser.id": "alice",
        "mcp_authz.rule": "tools",
    }
    assert span.start_time is not None and span.end_time is not None
    assert before - 10**9 < span.start_time <= span.end_time  # started when the Check did, not at observe
    assert span.resource.attributes["service.name"] == "mcp-authz"
    assert ev["trace_id"] == TRACE


async def test_span_without_traceparent_starts_a_trace_named_in_the_audit_event(
    stack: DevStack, observed: Observed
) -> None:
    ev = await observed.check(http_request(tool_call("search")))  # no token: 401
    span = only_span(observed.spans)
    assert span.parent is None
    assert span.attributes is not None
    assert (span.attributes["mcp_authz.decision"], span.attributes["http.response.status_code"]) == ("deny", 401)
    assert "enduser.id" not in span.attributes
    assert ev["trace_id"] == f"{span.context.trace_id:032x}" and ev["reason"] == span.attributes["mcp_authz.reason"]


async def test_metric_points_of_a_known_sequence(stack: DevStack, observed: Observed) -> None:
    reader = observed
    token = stack.token(scopes=["tools:read"])

    def decisions(decision: str, reason: str, tool: str) -> int:
        return reader.count("mcp_authz.decisions", decision=decision, reason=reason, server="mcp", tool=tool)

    allowed0, scope0 = decisions("allow", "allowed", "search"), decisions("deny", "insufficient_scope", "delete_repo")
    hits0, misses0 = (
        reader.count("mcp_authz.token_cache.lookups", result="hit"),
        reader.count("mcp_authz.token_cache.lookups", result="miss"),
    )
    sequence = [
        http_request(tool_call("search"), token=token),  # verified: cache miss
        http_request(tool_call("search"), token=token),  # cache hit
        http_request(tool_call("delete_repo"), token=token),  # cache hit, 403
        http_request(tool_call("search")),  # no token: 401, no lookup
    ]
    reasons = [(await observed.check(req))["reason"] for req in sequence]
    assert reasons[:3] == ["allowed", "allowed", "insufficient_scope"]

    assert decisions("allow", "allowed", "search") - allowed0 == 2
    assert decisions("deny", "insufficient_scope", "delete_repo") - scope0 == 1
    assert reader.count("mcp_authz.decisions", decision="deny", reason=reasons[3], server="mcp") >= 1
    assert reader.count("mcp_authz.token_cache.lookups", result="hit") - hits0 == 2
    assert reader.count("mcp_authz.token_cache.lookups", result="miss") - misses0 == 1

    histogram = {p.attributes["decision"]: p for p in reader.points("mcp_authz.check.duration")}
    assert isinstance(histogram["allow"], HistogramDataPoint)
    assert (histogram["allow"].count, histogram["deny"].count) == (2, 2)  # the histogram is new with this setup
    assert histogram["allow"].explicit_bounds == telemetry.CHECK_BUCKETS
    assert 0 < histogram["allow"].sum < 10
    assert len(observed.spans.get_finished_spans()) == 4


async def test_prometheus_exposition_parses(stack: DevStack, observed: Observed) -> None:
    token = stack.token(scopes=["tools:read"])
    await observed.check(http_request(tool_call("delete_repo"), token=token))
    telemetry.count_jwks_fetch("main", ok=False)
    telemetry.set_store_state("redis", healthy=False)
    exposition = telemetry.prometheus_text()
    assert exposition is not None
    body, content_type = exposition
    assert content_type.startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    denied = [
        s
        for s in families["mcp_authz_decisions"].samples
        if s.name == "mcp_authz_decisions_total"
        and s.labels.get("reason") == "insufficient_scope"
        and s.labels.get("tool") == "delete_repo"
    ]
    assert len(denied) == 1 and denied[0].value >= 1 and denied[0].labels["server"] == "mcp"
    fetches = {s.labels["result"]: s.value for s in families["mcp_authz_jwks_fetches"].samples if s.labels}
    assert fetches["error"] >= 1
    health = [s for s in families["mcp_authz_store_healthy"].samples if s.labels.get("kind") == "redis"]
    assert [s.value for s in health] == [0.0]
    buckets = [s for s in families["mcp_authz_check_duration_seconds"].samples if s.name.endswith("_bucket")]
    assert buckets and any(s.labels["le"] == "+Inf" and s.value >= 1 for s in buckets)


async def test_without_tracing_no_span_and_the_trace_id_comes_from_traceparent(stack: DevStack) -> None:
    telemetry.setup(compile_telemetry(TelemetrySpec()))  # metrics only: no OTLP endpoint, so no tracer
    try:
        authorizer = Authorizer(stack.config)
        out = io.StringIO()
        authorizer.audit = Auditor(out=out)
        req = http_request(tool_call("search"), headers={"traceparent": TRACEPARENT})
        decision = await authorizer.checker.check(req)
        assert telemetry.record_check(req, decision, time.perf_counter_ns()) is None
        authorizer.observe(req, decision, time.perf_counter_ns())
        assert json.loads(out.getvalue())["trace_id"] == TRACE
        assert telemetry.prometheus_text() is not None
    finally:
        telemetry.shutdown()
    assert telemetry.prometheus_text() is None


def test_counting_api_before_setup_counts_and_never_raises() -> None:
    telemetry.shutdown()
    before = telemetry.STORE_TRANSITIONS.get("probe", "unhealthy")
    telemetry.set_store_state("probe", False)
    telemetry.set_store_state("probe", False)  # no change, no transition
    telemetry.set_store_state("probe", True)
    assert telemetry.STORE_TRANSITIONS.get("probe", "unhealthy") == before + 1
    assert telemetry.STORE_TRANSITIONS.get("probe", "healthy") >= 1
    errors = telemetry.STORE_ERRORS.get("rate_limit")
    telemetry.count_store_error("rate_limit")
    assert telemetry.STORE_ERRORS.get("rate_limit") == errors + 1
    exchanges = telemetry.EXCHANGES.get("ok", "true")
    telemetry.count_exchange(ok=True, cached=True)
    assert telemetry.EXCHANGES.get("ok", "true") == exchanges + 1
    approvals = telemetry.APPROVALS.get("approved")
    telemetry.count_approval("approved")
    assert telemetry.APPROVALS.get("approved") == approvals + 1
    telemetry.count_jwks_fetch("x", True)
    telemetry.count_token_cache(True)
    telemetry.count_approval(None)  # type: ignore[arg-type]  # wrong types are counted, not raised
    assert telemetry.prometheus_text() is None


def test_label_cardinality_is_bounded() -> None:
    counts = telemetry._Counts("t", "test", ("tool",))
    for i in range(telemetry.MAX_SERIES + 50):
        counts.add((f"tool-{i}",))
    assert len(counts.values) == telemetry.MAX_SERIES + 1
    assert counts.get(telemetry.OVERFLOW) == 50


async def test_startup_line_masks_secrets_and_env_values(
    tmp_path: Path, stack: DevStack, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("HOOK_SECRET", "s3cr3t-webhook-key-0123456789")
    monkeypatch.setenv("HOOK_URL", "https://hooks.invalid/audit")
    path = tmp_path / "config.yaml"
    path.write_text(
        f"""
issuers:
  - name: main
    issuer: https://issuer.test
    local_key_file: {stack.key_file}
servers:
  - name: mcp
    resource: https://mcp.test/mcp
audit:
  webhook:
    url: ${{HOOK_URL}}
    secret: ${{HOOK_SECRET}}
telemetry:
  service_name: authz-under-test
"""
    )
    authorizer = Authorizer(load_config(path), str(path))
    summary = authorizer.settings_summary()
    assert summary["audit"]["webhook"] == {
        "url": MASK,
        "secret": MASK,
        "batch_size": 100,
        "flush_interval": 1.0,
        "queue_size": 10000,
        "timeout": 5.0,
        "max_retries": 5,
    }
    assert summary["telemetry"]["service_name"] == "authz-under-test"
    assert summary["issuers"][0]["local_key_file"] == MASK and summary["issuers"][0]["max_token_bytes"] == 8000
    record = logging.LogRecord("mcp_authz", logging.INFO, "", 0, "configuration in force", None, None)
    record.settings = summary
    line = JsonFormatter().format(record)
    assert "s3cr3t" not in line and "hooks.invalid" not in line and json.loads(line)["settings"]["servers"]


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_otlp_exporters_for_each_protocol(protocol: str) -> None:
    settings = compile_telemetry(TelemetrySpec(otlp_endpoint="http://127.0.0.1:4318", otlp_protocol=protocol))
    spans, metrics = telemetry._otlp_span_exporter(settings), telemetry._otlp_metric_exporter(settings)
    kind = "grpc" if protocol == "grpc" else "http"
    assert f".proto.{kind}." in type(spans).__module__ and f".proto.{kind}." in type(metrics).__module__
    if kind == "http":
        assert spans._endpoint == "http://127.0.0.1:4318/v1/traces"
