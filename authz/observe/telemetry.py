"""Metrics and traces of the authorizer (OpenTelemetry).

Counting is cheap and cannot fail: the ``count_*`` functions increment plain dicts (a fraction of a
microsecond, no lock: one event loop thread writes, collection copies the dict in one C call), and
observable instruments read them when metrics are collected. They count from import on, so any module
may call them at any time; ``setup`` attaches them to a MeterProvider read by Prometheus (served at
``/metrics`` on the discovery port) and, when an endpoint is configured, by an OTLP exporter.

Check latency goes into a histogram of our own (bucket counts, ~0.3 µs per Check), served to
Prometheus by a collector; the OpenTelemetry SDK histogram (~6 µs per record) is fed only when
a non-Prometheus reader (OTLP, or a test's) needs it.

Traces: one span per Check, made after the decision with the Check's start time (nothing wraps the
pipeline), parented on the request's W3C ``traceparent``; only when tracing is configured with an OTLP
endpoint. Spans leave through a batch processor, so no exporter work runs on the Check path.
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from authz.config.runtime import Telemetry
from authz.model import Decision, HttpRequest

log = logging.getLogger("mcp_authz.telemetry")

METER = "mcp_authz"
MAX_SERIES = 2000  # per metric; further label combinations are counted under OVERFLOW
OVERFLOW = "_overflow"
EXPORT_TIMEOUT = 5.0  # seconds for one OTLP export (bounds a shutdown while the collector is down)
MAX_LABEL = 128  # characters of a client-supplied label value (tool names) kept
CHECK_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class _Counts:
    """Monotonic counts by label values (one metric)."""

    __slots__ = ("description", "labels", "name", "values")

    def __init__(self, name: str, description: str, labels: tuple[str, ...]) -> None:
        self.name = name
        self.description = description
        self.labels = labels
        self.values: dict[tuple[str, ...], int] = {}

    def add(self, key: tuple[str, ...], n: int = 1) -> None:
        values = self.values
        if key in values:
            values[key] += n
        elif len(values) < MAX_SERIES:
            values[key] = n
        else:
            over = (OVERFLOW,) * len(self.labels)
            values[over] = values.get(over, 0) + n

    def get(self, *key: str) -> int:
        return self.values.get(key, 0)

    def snapshot(self) -> list[tuple[dict[str, str], int]]:
        return [(dict(zip(self.labels, k, strict=True)), v) for k, v in self.values.copy().items()]


DECISIONS = _Counts(
    "mcp_authz.decisions",
    "Check decisions by result, reason code, MCP server and tool",
    ("decision", "reason", "server", "tool"),
)
TOKEN_CACHE = _Counts("mcp_authz.token_cache.lookups", "Verified-token cache lookups (hit, miss)", ("result",))
JWKS_FETCHES = _Counts("mcp_authz.jwks.fetches", "JWKS fetches by issuer and result (ok, error)", ("issuer", "result"))
STORE_ERRORS = _Counts("mcp_authz.store.errors", "Store operations that failed, by feature", ("feature",))
STORE_TRANSITIONS = _Counts(
    "mcp_authz.store.transitions",
    "Store health changes by store kind and new state (healthy, unhealthy)",
    ("kind", "state"),
)
STORE_EVICTIONS = _Counts(
    "mcp_authz.store.evictions",
    "Live entries the memory store evicted to make room, by table (sessions, rate_limits, values)",
    ("table",),
)
STORE_DATA_LOSS = _Counts(
    "mcp_authz.store.data_loss",
    "Times this replica found that Redis had lost the revocations (epoch key gone or changed)",
    ("kind",),
)
EXCHANGES = _Counts(
    "mcp_authz.token_exchanges",
    "Upstream token exchanges by result (ok, error) and whether served from cache",
    ("result", "cached"),
)
APPROVALS = _Counts("mcp_authz.approvals", "Approval requests by outcome", ("outcome",))
WEBHOOK = _Counts(
    "mcp_authz.audit.webhook.events",
    "Audit events handed to the webhook by outcome (sent, failed, dropped)",
    ("outcome",),
)
COUNTERS: tuple[_Counts, ...] = (
    DECISIONS,
    TOKEN_CACHE,
    JWKS_FETCHES,
    STORE_ERRORS,
    STORE_TRANSITIONS,
    STORE_EVICTIONS,
    STORE_DATA_LOSS,
    EXCHANGES,
    APPROVALS,
    WEBHOOK,
)
STORE_STATE: dict[str, bool] = {}


class _Latency:
    """Check latency: bucket counts, sum and count per decision (allow, deny)."""

    __slots__ = ("bounds", "series")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.series: dict[str, list[float]] = {}  # decision -> [count per bucket..., +Inf bucket, sum]

    def record(self, decision: str, seconds: float) -> None:
        series = self.series.get(decision)
        if series is None:
            series = self.series[decision] = [0.0] * (len(self.bounds) + 2)
        series[bisect_left(self.bounds, seconds)] += 1
        series[-1] += seconds

    def snapshot(self) -> dict[str, tuple[list[float], float]]:
        """decision -> (cumulative counts per bound then +Inf, sum)."""
        result = {}
        for decision, series in self.series.copy().items():
            values = list(series)
            cumulative, total = [], 0.0
            for n in values[:-1]:
                total += n
                cumulative.append(total)
            result[decision] = (cumulative, values[-1])
        return result


LATENCY = _Latency(CHECK_BUCKETS)
_KEY_OK = {True: "ok", False: "error"}
_KEY_HIT = {True: ("hit",), False: ("miss",)}
_KEY_STATE = {True: "healthy", False: "unhealthy"}
_KEY_CACHED = {True: "true", False: "false"}


# ---------------------------------------------------------------- counting API (stable names: other modules call them)


def count_jwks_fetch(issuer: str, ok: bool) -> None:
    """One JWKS fetch of ``issuer`` (the configured issuer name) finished, ``ok`` or not."""
    JWKS_FETCHES.add((str(issuer), _KEY_OK[bool(ok)]))


def count_token_cache(hit: bool) -> None:
    """One lookup in the verified-token cache."""
    TOKEN_CACHE.add(_KEY_HIT[bool(hit)])


def count_store_error(feature: str) -> None:
    """A store operation of ``feature`` (revocation, sessions, rate_limit, ...) failed."""
    STORE_ERRORS.add((str(feature),))


def count_store_eviction(table: str) -> None:
    """The memory store evicted a live entry of ``table`` to stay within its size."""
    STORE_EVICTIONS.add((str(table),))


def count_store_data_loss(kind: str) -> None:
    """The store of ``kind`` found its backend had lost data this replica still holds."""
    STORE_DATA_LOSS.add((str(kind),))


def set_store_state(kind: str, healthy: bool) -> None:
    """The store of ``kind`` (memory, redis) is healthy or not; a change of state is counted."""
    healthy = bool(healthy)
    kind = str(kind)
    if STORE_STATE.get(kind) is not healthy:
        STORE_STATE[kind] = healthy
        STORE_TRANSITIONS.add((kind, _KEY_STATE[healthy]))


def count_exchange(ok: bool, cached: bool) -> None:
    """One upstream token exchange (RFC 8693) finished; ``cached``: answered from the cache."""
    EXCHANGES.add((_KEY_OK[bool(ok)], _KEY_CACHED[bool(cached)]))


def count_approval(outcome: str) -> None:
    """One approval request reached ``outcome`` (e.g. approved, denied, expired, pending)."""
    APPROVALS.add((str(outcome),))


def count_webhook(outcome: str, events: int = 1) -> None:
    """``events`` audit events were sent, failed for good, or dropped by the webhook sink."""
    WEBHOOK.add((outcome,), events)


# ---------------------------------------------------------------- per Check


@dataclass(slots=True)
class _Runtime:
    """What ``setup`` built; None of it exists until then."""

    histogram: Any = None  # opentelemetry Histogram of Check latency (seconds)
    tracer: Any = None  # opentelemetry Tracer; None: no spans
    propagator: Any = None
    shutdown: list[Callable[[], None]] = field(default_factory=list)
    prometheus: Any = None  # prometheus_client CollectorRegistry


_rt = _Runtime()
_ATTRS = {True: {"decision": "allow"}, False: {"decision": "deny"}}


def record_check(req: HttpRequest, decision: Decision, started_ns: int | None) -> str | None:
    """Count the decision, time it and make its span; returns the span's trace id (32 hex), else None.

    ``started_ns``: ``time.perf_counter_ns()`` when the Check began (None: unknown, no latency or span).
    Never raises.
    """
    try:
        mcp = decision.mcp
        call = mcp.calls[0] if mcp is not None and mcp.calls else None
        tool = (call.tool or "")[:MAX_LABEL] if call is not None else ""
        DECISIONS.add(("allow" if decision.allowed else "deny", decision.reason, decision.server or "", tool))
        rt = _rt
        if started_ns is None:
            return None
        elapsed = time.perf_counter_ns() - started_ns
        LATENCY.record("allow" if decision.allowed else "deny", elapsed / 1e9)
        if rt.histogram is not None:
            rt.histogram.record(elapsed / 1e9, _ATTRS[decision.allowed])
        if rt.tracer is not None:
            return _span(rt, req, decision, call.method if call else None, call.name if call else None, elapsed)
    except Exception:  # telemetry must never fail a Check
        log.debug("record_check failed", exc_info=True)
    return None


def _span(
    rt: _Runtime, req: HttpRequest, decision: Decision, method: str | None, name: str | None, elapsed: int
) -> str:
    from opentelemetry.trace import Status, StatusCode, format_trace_id

    parent = rt.propagator.extract(req.headers) if "traceparent" in req.headers else None
    end = time.time_ns()
    attributes: dict[str, Any] = {
        "mcp_authz.decision": "allow" if decision.allowed else "deny",
        "mcp_authz.reason": decision.reason,
        "http.response.status_code": decision.status,
    }
    if decision.server:
        attributes["mcp_authz.server"] = decision.server
    if method:
        attributes["mcp.method.name"] = method
    if name:
        attributes["mcp.name"] = name[:MAX_LABEL]
    if decision.caller is not None and decision.caller.subject:
        attributes["enduser.id"] = decision.caller.subject
    if decision.rule:
        attributes["mcp_authz.rule"] = decision.rule
    span = rt.tracer.start_span("mcp-authz.check", context=parent, attributes=attributes, start_time=end - elapsed)
    if decision.status >= 500:
        span.set_status(Status(StatusCode.ERROR, decision.reason))
    span.end(end_time=end)
    return str(format_trace_id(span.get_span_context().trace_id))


# ---------------------------------------------------------------- setup


def setup(
    settings: Telemetry,
    *,
    version: str = "",
    metric_readers: Sequence[Any] = (),
    span_exporter: Any = None,
) -> None:
    """Start metrics (Prometheus always, OTLP with an endpoint) and traces (with an endpoint or ``span_exporter``).

    ``metric_readers`` and ``span_exporter`` are for tests (in-memory reader/exporter; the exporter is
    attached with a synchronous processor). Calling it again replaces what a previous call built.
    """
    shutdown()
    from opentelemetry.sdk.resources import Resource

    resource = Resource.create({"service.name": settings.service_name, "service.version": version})
    if settings.metrics:
        _setup_metrics(settings, resource, metric_readers)
    if settings.traces and (settings.otlp_endpoint or span_exporter is not None):
        _setup_traces(settings, resource, span_exporter)


def _setup_metrics(settings: Telemetry, resource: Any, extra: Iterable[Any]) -> None:
    """Two meter providers: one read by Prometheus (counts only; latency has its own collector) and,
    when OTLP or another reader is asked for, one for those readers that also has the SDK histogram."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=True)
    reader = PrometheusMetricReader(registry=registry, scope_info_enabled=False)
    prometheus = MeterProvider(metric_readers=[reader], resource=resource)
    _observe_counts(prometheus)
    registry.register(_LatencyCollector())
    _rt.prometheus = registry
    _rt.shutdown.append(prometheus.shutdown)
    readers = list(extra)
    if settings.otlp_endpoint:
        exporter = _otlp_metric_exporter(settings)
        interval = settings.export_interval * 1000
        readers.append(
            PeriodicExportingMetricReader(
                exporter, export_interval_millis=interval, export_timeout_millis=EXPORT_TIMEOUT * 1000
            )
        )
    if readers:
        provider = MeterProvider(metric_readers=readers, resource=resource)
        meter = _observe_counts(provider)
        _rt.histogram = meter.create_histogram(
            LATENCY_NAME,
            unit="s",
            description=LATENCY_DESCRIPTION,
            explicit_bucket_boundaries_advisory=list(CHECK_BUCKETS),
        )
        _rt.shutdown.append(provider.shutdown)


LATENCY_NAME = "mcp_authz.check.duration"
LATENCY_DESCRIPTION = "Time from receiving a Check to its decision, by result"


def _observe_counts(provider: Any) -> Any:
    """Observable instruments over the counts, on ``provider``'s meter (returned)."""
    from opentelemetry.metrics import CallbackOptions, Observation

    meter = provider.get_meter(METER)

    def observe(counts: _Counts) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(v, labels) for labels, v in counts.snapshot()]

        return callback

    for counts in COUNTERS:
        meter.create_observable_counter(counts.name, [observe(counts)], description=counts.description)

    def store_state(options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(1 if ok else 0, {"kind": kind}) for kind, ok in STORE_STATE.copy().items()]

    meter.create_observable_gauge("mcp_authz.store.healthy", [store_state], description="1 if the store is healthy")
    return meter


class _LatencyCollector:
    """prometheus_client collector of ``LATENCY`` as ``mcp_authz_check_duration_seconds``."""

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import HistogramMetricFamily

        family = HistogramMetricFamily(
            "mcp_authz_check_duration_seconds", LATENCY_DESCRIPTION, labels=["decision"], unit="seconds"
        )
        for decision, (cumulative, total) in sorted(LATENCY.snapshot().items()):
            les = [repr(float(b)) for b in LATENCY.bounds] + ["+Inf"]
            family.add_metric([decision], list(zip(les, cumulative, strict=True)), total)
        yield family

    def describe(self) -> Iterable[Any]:
        return []


def _setup_traces(settings: Telemetry, resource: Any, exporter: Any) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    provider = TracerProvider(resource=resource, sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        processor = BatchSpanProcessor(_otlp_span_exporter(settings), export_timeout_millis=EXPORT_TIMEOUT * 1000)
        provider.add_span_processor(processor)
    _rt.tracer = provider.get_tracer(METER)
    _rt.propagator = TraceContextTextMapPropagator()
    _rt.shutdown.append(provider.shutdown)


def _otlp_url(settings: Telemetry, signal: str) -> str:
    return (settings.otlp_endpoint or "").rstrip("/") + f"/v1/{signal}"


def _otlp_metric_exporter(settings: Telemetry) -> Any:
    if settings.otlp_protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetrics

        return GrpcMetrics(endpoint=settings.otlp_endpoint, timeout=EXPORT_TIMEOUT)
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

    return OTLPMetricExporter(endpoint=_otlp_url(settings, "metrics"), timeout=EXPORT_TIMEOUT)


def _otlp_span_exporter(settings: Telemetry) -> Any:
    if settings.otlp_protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpans

        return GrpcSpans(endpoint=settings.otlp_endpoint, timeout=EXPORT_TIMEOUT)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=_otlp_url(settings, "traces"), timeout=EXPORT_TIMEOUT)


def shutdown() -> None:
    """Flush and stop what ``setup`` started (counts are kept)."""
    rt = _rt
    hooks, rt.shutdown = rt.shutdown, []
    rt.histogram = rt.tracer = rt.propagator = rt.prometheus = None
    for hook in hooks:
        try:
            hook()
        except Exception:
            log.warning("telemetry shutdown failed", exc_info=True)


def prometheus_text() -> tuple[bytes, str] | None:
    """The Prometheus exposition of the current metrics and its content type; None when metrics are off."""
    registry = _rt.prometheus
    if registry is None:
        return None
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return generate_latest(registry), CONTENT_TYPE_LATEST
