"""The client side of the authorizer's health endpoints, for probes without curl (the image's HEALTHCHECK).

``/readyz`` on the discovery port says whether the authorizer can decide (keys, store); ``grpc.health.v1``
on the gRPC port says whether the Check service is up. Neither goes through an HTTP proxy from the
environment, and a wildcard listen host (``0.0.0.0``, ``::``) is probed on loopback.
"""

from __future__ import annotations

import http.client
from dataclasses import dataclass

from authz.config.runtime import HostPort

DISCOVERY = "127.0.0.1:9192"  # listen.discovery's default port, on loopback
GRPC = "127.0.0.1:9191"  # listen.grpc's default port, on loopback
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1"}


@dataclass(frozen=True, slots=True)
class Result:
    ok: bool
    detail: str  # one line for the operator: what answered, or why it did not


def local(address: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) → (host, port) to connect to; a wildcard host becomes loopback."""
    at = HostPort.parse(address)
    if at.port == 0:
        raise ValueError(f"expected host:port, got {address!r}")
    return _WILDCARDS.get(at.host, at.host), at.port


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def readyz(address: str, timeout: float = 3.0) -> Result:
    """GET /readyz on the discovery service: ok on 200."""
    host, port = local(address)
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", "/readyz", headers={"Host": f"{_url_host(host)}:{port}"})
        response = connection.getresponse()
        body = response.read(512).decode("utf-8", "replace").strip()
    except (OSError, http.client.HTTPException) as exc:
        return Result(False, f"http://{_url_host(host)}:{port}/readyz: {exc}")
    finally:
        connection.close()
    return Result(response.status == 200, f"http://{_url_host(host)}:{port}/readyz: {response.status} {body}")


def grpc_health(address: str, timeout: float = 3.0, service: str = "") -> Result:
    """grpc.health.v1 Check on the gRPC port: ok when SERVING."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    host, port = local(address)
    target = f"{_url_host(host)}:{port}"
    with grpc.insecure_channel(target, options=[("grpc.enable_http_proxy", 0)]) as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError as exc:
            return Result(False, f"grpc {target}: {exc.code().name} {exc.details() or ''}".rstrip())
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
    return Result(answer.status == health_pb2.HealthCheckResponse.SERVING, f"grpc {target}: {status}")
