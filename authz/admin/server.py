"""The admin gRPC server on its own port, guarded by mTLS (client certificates required), an admin token, or both.

It refuses to start unguarded. The token is compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from authz.admin._pb import admin_pb2_grpc
from authz.admin.service import AdminService
from authz.config.runtime import Admin

log = logging.getLogger("mcp_authz.admin")


class TokenGuard(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Lets a call through only with ``authorization: Bearer <token>`` metadata; else UNAUTHENTICATED."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

        async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "admin token missing or refused")

        self._refuse = grpc.unary_unary_rpc_method_handler(refuse)

    def allows(self, metadata: Any) -> bool:
        for key, value in metadata or ():
            if key == "authorization":
                sent = value.encode() if isinstance(value, str) else bytes(value)
                return hmac.compare_digest(sent, self._expected)
        return False

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], details: grpc.HandlerCallDetails
    ) -> Any:
        if self.allows(details.invocation_metadata):
            return await continuation(details)
        log.warning("admin: call refused (no or wrong admin token)", extra={"method": details.method})
        return self._refuse


def _credentials(spec: Admin) -> Any:
    """TLS server credentials; with ``client_ca`` every caller must present a certificate it signed."""
    assert spec.tls_cert and spec.tls_key
    key, cert = Path(spec.tls_key).read_bytes(), Path(spec.tls_cert).read_bytes()
    ca = Path(spec.client_ca).read_bytes() if spec.client_ca else None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=ca is not None)


async def start_admin(spec: Admin, service: AdminService) -> tuple[grpc.aio.Server, int]:
    """Serve the admin API on ``spec.listen``; the server and its port. ValueError when unguarded or without an
    address, OSError if it cannot listen."""
    if spec.listen is None:
        raise ValueError("admin API not started: admin.listen is empty")
    address = str(spec.listen)
    if spec.token is None and not spec.client_ca:
        raise ValueError("admin API refused to start: set admin.token or admin.client_ca (mTLS)")
    interceptors = [TokenGuard(spec.token.reveal())] if spec.token is not None else []
    server = grpc.aio.server(interceptors=interceptors, options=[("grpc.so_reuseport", 0)])
    admin_pb2_grpc.add_AdminServicer_to_server(service, server)  # type: ignore[no-untyped-call]
    if spec.tls_cert:
        port = server.add_secure_port(address, _credentials(spec))
    else:
        if not spec.listen.is_loopback:
            log.warning("admin API without TLS on a non-loopback address: the admin token travels in clear")
        port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"admin API cannot listen on {address}")
    await server.start()
    log.info(
        "admin API serving",
        extra={
            "admin": address,
            "mtls": bool(spec.client_ca),
            "tls": bool(spec.tls_cert),
            "token": bool(spec.token),
        },
    )
    return server, port
