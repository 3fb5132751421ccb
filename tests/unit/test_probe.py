"""authz/probe.py and `mcp-authz health`: /readyz and grpc.health.v1 probed without curl, proxies ignored,
wildcard listen hosts probed on loopback, a not-ready or absent authorizer is a non-zero exit."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from authz import cli, probe


class _Readyz(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        body = b'{"ready": true}' if self.path == "/readyz" else b"{}"
        self.send_response(self.status if self.path == "/readyz" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def discovery() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("Handler", (_Readyz,), {}))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def grpc_server() -> Iterator[tuple[int, health.HealthServicer]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield port, servicer
    server.stop(None)


def _port(server: ThreadingHTTPServer) -> int:
    return int(server.server_address[1])


def test_local_maps_wildcards_to_loopback_and_keeps_other_hosts() -> None:
    assert probe.local("0.0.0.0:9192") == ("127.0.0.1", 9192)
    assert probe.local("[::]:9192") == ("::1", 9192)
    assert probe.local("10.0.0.7:9191") == ("10.0.0.7", 9191)
    assert probe.local("[::1]:80") == ("::1", 80)
    for bad in ("9192", "host:", "host:port", "host:70000", "host:0"):
        with pytest.raises(ValueError, match="expected host:port"):
            probe.local(bad)


def test_readyz_200_is_ok_and_503_is_not(discovery: ThreadingHTTPServer) -> None:
    address = f"0.0.0.0:{_port(discovery)}"
    result = probe.readyz(address)
    assert result.ok and "/readyz: 200" in result.detail
    discovery.RequestHandlerClass.status = 503  # type: ignore[attr-defined]
    result = probe.readyz(address)
    assert not result.ok and "/readyz: 503" in result.detail


def test_readyz_ignores_proxies_from_the_environment(
    discovery: ThreadingHTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:1")  # a proxy that refuses every connection
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    assert probe.readyz(f"127.0.0.1:{_port(discovery)}").ok


def test_readyz_nobody_listening_is_not_ok(discovery: ThreadingHTTPServer) -> None:
    port = _port(discovery)
    discovery.shutdown()
    discovery.server_close()
    result = probe.readyz(f"127.0.0.1:{port}", timeout=1)
    assert not result.ok and "refused" in result.detail.lower()


def test_grpc_health_serving_and_not_serving(grpc_server: tuple[int, health.HealthServicer]) -> None:
    port, servicer = grpc_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    result = probe.grpc_health(f"0.0.0.0:{port}")
    assert result.ok and result.detail.endswith("SERVING")
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    result = probe.grpc_health(f"127.0.0.1:{port}")
    assert not result.ok and result.detail.endswith("NOT_SERVING")
    result = probe.grpc_health(f"127.0.0.1:{port}", service="no.such.Service")
    assert not result.ok and "NOT_FOUND" in result.detail


def test_health_command_exit_codes(
    discovery: ThreadingHTTPServer, grpc_server: tuple[int, health.HealthServicer], capsys: pytest.CaptureFixture[str]
) -> None:
    port, servicer = grpc_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert cli.main(["health", "--address", f"127.0.0.1:{_port(discovery)}"]) == 0
    assert "/readyz: 200" in capsys.readouterr().out
    assert cli.main(["health", "--grpc", "--address", f"127.0.0.1:{port}"]) == 0
    discovery.RequestHandlerClass.status = 503  # type: ignore[attr-defined]
    assert cli.main(["health", "--address", f"127.0.0.1:{_port(discovery)}"]) == 1
    assert "/readyz: 503" in capsys.readouterr().err
    assert cli.main(["health", "--address", "no-port"]) == 2
    assert "--address" in capsys.readouterr().err


def test_health_defaults_to_the_listen_defaults() -> None:
    """The image's HEALTHCHECK runs `mcp-authz health` bare: it must probe listen.*'s default ports."""
    from authz.config.schema import ListenSpec

    assert probe.DISCOVERY.rpartition(":")[2] == ListenSpec().discovery.rpartition(":")[2]
    assert probe.GRPC.rpartition(":")[2] == ListenSpec().grpc.rpartition(":")[2]
