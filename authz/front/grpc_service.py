"""The Envoy Authorization gRPC service and grpc.health.v1; Envoy's messages ↔ our model."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2, external_auth_pb2_grpc
from envoy.type.v3 import http_status_pb2
from google.rpc import code_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from authz.check import Checker
from authz.extproc.service import SERVICE_NAME as EXTPROC_SERVICE_NAME
from authz.extproc.service import ExtProcService
from authz.extproc.service import add_to_server as add_extproc_to_server
from authz.model import Decision, HttpRequest

log = logging.getLogger("mcp_authz.server")
OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


def to_http_request(check: external_auth_pb2.CheckRequest) -> HttpRequest:
    """CheckRequest → HttpRequest. Prefers the raw header map, which keeps repeated headers apart."""
    attrs = check.attributes
    http: attribute_context_pb2.AttributeContext.HttpRequest = attrs.request.http
    values: dict[str, tuple[str, ...]] = {}
    if http.header_map.headers:
        for h in http.header_map.headers:
            key = h.key.lower()
            value = h.raw_value.decode("utf-8", "replace") if h.raw_value else h.value
            values[key] = (*values.get(key, ()), value)
        headers = {k: ",".join(v) for k, v in values.items()}
    else:
        headers = dict(http.headers)
    if http.raw_body:
        body: bytes | None = http.raw_body
    elif http.body:
        body = http.body.encode("utf-8", "surrogateescape")
    else:
        body = None
    source = attrs.source
    return HttpRequest(
        method=http.method,
        path=http.path,
        headers=headers,
        body=body,
        source_address=source.address.socket_address.address,
        source_principal=source.principal,
        context=dict(attrs.context_extensions),
        header_values=values,
    )


def _header(key: str, value: str, append: int = OVERWRITE) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=key, value=value), append_action=append)


def to_check_response(decision: Decision) -> external_auth_pb2.CheckResponse:
    if decision.allowed:
        allowed = external_auth_pb2.CheckResponse(
            status=status_pb2.Status(code=code_pb2.OK),
            ok_response=external_auth_pb2.OkHttpResponse(
                headers=[_header(k, v) for k, v in decision.set_headers],
                headers_to_remove=list(decision.remove_headers),
            ),
        )
        if decision.metadata:  # Envoy keeps it as the stream's ext_authz dynamic metadata (for ext_proc)
            allowed.dynamic_metadata.update(decision.metadata)
        return allowed
    return external_auth_pb2.CheckResponse(
        status=status_pb2.Status(
            code=code_pb2.PERMISSION_DENIED if decision.status != 401 else code_pb2.UNAUTHENTICATED
        ),
        denied_response=external_auth_pb2.DeniedHttpResponse(
            status=http_status_pb2.HttpStatus(code=decision.status),
            headers=[_header(k, v) for k, v in decision.deny_headers],
            body=decision.body.decode("utf-8"),
        ),
    )


class AuthorizationService(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    """``Check`` → the current Checker. ``checker`` is read once per call, so a reload never tears a Check."""

    def __init__(self, checker: Callable[[], Checker], observe: Callable[[HttpRequest, Decision, int], None]) -> None:
        self._checker = checker
        self._observe = observe  # (request, decision, time.perf_counter_ns() when the Check began)

    async def Check(
        self, request: external_auth_pb2.CheckRequest, context: grpc.aio.ServicerContext
    ) -> external_auth_pb2.CheckResponse:
        started = time.perf_counter_ns()
        req = to_http_request(request)
        decision = await self._checker().check(req)
        self._observe(req, decision, started)
        return to_check_response(decision)


async def start_grpc(
    address: str, service: AuthorizationService, processor: ExtProcService | None = None
) -> tuple[grpc.aio.Server, health.HealthServicer]:
    """The authorizer (and the list filter, ``processor``) on one gRPC server."""
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(service, server)
    if processor is not None:
        add_extproc_to_server(processor, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if server.add_insecure_port(address) == 0:
        raise OSError(f"cannot listen on {address}")
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set("envoy.service.auth.v3.Authorization", health_pb2.HealthCheckResponse.SERVING)
    if processor is not None:
        await health_servicer.set(EXTPROC_SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    return server, health_servicer
