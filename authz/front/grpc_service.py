"""The Envoy Authorization gRPC service and grpc.health.v1; Envoy's messages ↔ our model."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import grpc
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from authz.check import Checker
from authz.config.runtime import DEFAULT_MAX_INFLIGHT
from authz.extproc.service import SERVICE_NAME as EXTPROC_SERVICE_NAME
from authz.extproc.service import ExtProcService
from authz.extproc.service import add_to_server as add_extproc_to_server
from authz.front.admission import OVERLOADED, Admission
from authz.front.ext_authz_messages import to_check_response, to_http_request
from authz.front.grpc_wire import GRPCIO_DEFAULT_LIMIT
from authz.front.observer import Observer, guarded

OVERLOADED_RESPONSE = to_check_response(OVERLOADED)

__all__ = ["AuthorizationService", "start_grpc", "to_check_response", "to_http_request"]
log = logging.getLogger("mcp_authz.server")


class AuthorizationService(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    """``Check`` → the current Checker. ``checker`` is read once per call, so a reload never tears a Check."""

    def __init__(self, checker: Callable[[], Checker], observe: Observer, admission: Admission | None = None) -> None:
        self._checker = checker
        self._observe = guarded(observe)
        self._admission = admission if admission is not None else Admission(DEFAULT_MAX_INFLIGHT)

    async def Check(
        self, request: external_auth_pb2.CheckRequest, context: grpc.aio.ServicerContext
    ) -> external_auth_pb2.CheckResponse:
        """One Check; past ``listen.max_inflight`` in progress, the OVERLOADED deny at once (503 with
        ``Retry-After``, which Envoy passes on)."""
        started = time.perf_counter_ns()
        req = to_http_request(request)
        if not self._admission.admit():
            self._observe(req, OVERLOADED, started)
            return OVERLOADED_RESPONSE
        try:
            decision = await self._checker().check(req)
        finally:
            self._admission.done()
        self._observe(req, decision, started)
        return to_check_response(decision)


async def start_grpc(
    address: str,
    service: AuthorizationService,
    processor: ExtProcService | None = None,
    max_message_bytes: int = GRPCIO_DEFAULT_LIMIT,
) -> tuple[grpc.aio.Server, health.HealthServicer]:
    """The authorizer (and the list filter, ``processor``) on one gRPC server.

    ``max_message_bytes``: the receive and send limit (``grpc_wire.message_limit`` of the config).
    grpcio's core refuses a larger message with RESOURCE_EXHAUSTED before any Python code sees it,
    so the limit in force is logged here, once.
    """
    options = [
        ("grpc.so_reuseport", 0),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]
    server = grpc.aio.server(options=options)
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(service, server)
    if processor is not None:
        add_extproc_to_server(processor, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if server.add_insecure_port(address) == 0:
        raise OSError(f"cannot listen on {address}")
    await server.start()
    log.info(
        "gRPC message limit",
        extra={"max_message_bytes": max_message_bytes, "config": "envoy.max_request_bytes / ext_proc.max_body_bytes"},
    )
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set("envoy.service.auth.v3.Authorization", health_pb2.HealthCheckResponse.SERVING)
    if processor is not None:
        await health_servicer.set(EXTPROC_SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    return server, health_servicer
