"""CPU per ext_authz Check of candidate gRPC server stacks, behind the same real Envoy and load.

    .venv/bin/python bench/grpc_stacks.py [--duration 4] [--rounds 3] [--stacks grpcio,h2corn,h2] [--connections 16]

Each stack serves ``envoy.service.auth.v3.Authorization/Check`` with a minimal handler: parse the
CheckRequest, answer a prebuilt OK. Envoy is the one ``authz.render.envoy`` renders (gRPC ext_authz,
body sent, the real cluster settings), pointed at the candidate; the upstream is bench.py's Envoy
direct response. wrk drives one 2026-07-28 ``tools/call`` (bench.py's request). Each round runs every
stack once (interleaved, so the machine's drift hits all alike) plus Envoy without ext_authz; the
table gives the medians of CPU per request (utime+stime from /proc of each process, its threads
included), as a ratio to ``grpcio`` measured in the same rounds and to Envoy's own CPU per request
without auth (the unit of ../shared/NOTES.md).

Stacks:

``grpcio``     grpc.aio server on uvloop (what ``authz.front.grpc_service`` uses)
``h2corn``     h2corn (Rust HTTP/2 server, ASGI with trailers) + our own small gRPC handler, uvloop
``h2corn-1t``  the same with one Tokio runtime thread instead of two
``h2``         the pure-Python ``h2`` state machine as an asyncio Protocol on uvloop
``grpclib``    grpclib (pure Python, on ``h2``) on uvloop, if installed

A server process is this script with ``--serve STACK --port N``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

OK = b""  # the serialized prebuilt CheckResponse, filled by _ok()
CHECK_PATH = "/envoy.service.auth.v3.Authorization/Check"


def _ok() -> bytes:
    from envoy.service.auth.v3 import external_auth_pb2
    from google.rpc import code_pb2, status_pb2

    message = external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=code_pb2.OK), ok_response=external_auth_pb2.OkHttpResponse()
    )
    return message.SerializeToString()


# ---------------------------------------------------------------- the candidate servers


async def serve_grpcio(port: int) -> None:
    import grpc
    from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc

    response = external_auth_pb2.CheckResponse.FromString(_ok())

    class Service(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
        async def Check(self, request: Any, context: Any) -> Any:
            return response

    server = grpc.aio.server()
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(Service(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def asgi_check_app() -> Any:
    """The minimal gRPC handler on ASGI: one length-prefixed message in, one out, status in trailers."""
    from envoy.service.auth.v3 import external_auth_pb2

    parse = external_auth_pb2.CheckRequest.FromString
    ok = _ok()
    frame = b"\x00" + len(ok).to_bytes(4, "big") + ok
    start = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/grpc")]}
    start["trailers"] = True
    body = {"type": "http.response.body", "body": frame, "more_body": False}
    trailers = {"type": "http.response.trailers", "headers": [(b"grpc-status", b"0")], "more_trailers": False}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
                message = await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        data = b"".join(chunks)
        parse(data[5:])
        await send(start)
        await send(body)
        await send(trailers)

    return app


async def serve_h2corn(port: int, threads: int = 2) -> None:
    import h2corn

    config = h2corn.Config(
        bind=(f"127.0.0.1:{port}",), grpc=True, access_log=False, runtime_threads=threads, date_header=False
    )
    await h2corn.Server(asgi_check_app(), config).serve()


class H2Protocol(asyncio.Protocol):
    """``h2``'s state machine on an asyncio Protocol: unary Check only."""

    def __init__(self) -> None:
        import h2.config
        import h2.connection
        from envoy.service.auth.v3 import external_auth_pb2

        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        self.parse = external_auth_pb2.CheckRequest.FromString
        ok = _ok()
        self.frame = b"\x00" + len(ok).to_bytes(4, "big") + ok
        self.bodies: dict[int, bytearray] = {}
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.conn.initiate_connection()
        transport.write(self.conn.data_to_send())

    def data_received(self, data: bytes) -> None:
        import h2.events

        for event in self.conn.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                self.bodies[event.stream_id] = bytearray()
            elif isinstance(event, h2.events.DataReceived):
                self.bodies[event.stream_id] += event.data
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                body = self.bodies.pop(event.stream_id)
                self.parse(bytes(body[5:]))
                sid = event.stream_id
                self.conn.send_headers(sid, [(b":status", b"200"), (b"content-type", b"application/grpc")])
                self.conn.send_data(sid, self.frame)
                self.conn.send_headers(sid, [(b"grpc-status", b"0")], end_stream=True)
        out = self.conn.data_to_send()
        if out and self.transport is not None:
            self.transport.write(out)


async def serve_h2(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(H2Protocol, "127.0.0.1", port)
    await server.serve_forever()


async def serve_grpclib(port: int) -> None:
    from envoy.service.auth.v3 import external_auth_pb2
    from grpclib.const import Cardinality, Handler
    from grpclib.server import Server

    response = external_auth_pb2.CheckResponse.FromString(_ok())

    class Service:
        async def check(self, stream: Any) -> None:
            await stream.recv_message()
            await stream.send_message(response)

        def __mapping__(self) -> dict[str, Any]:
            return {
                CHECK_PATH: Handler(
                    self.check, Cardinality.UNARY_UNARY, external_auth_pb2.CheckRequest, external_auth_pb2.CheckResponse
                )
            }

    server = Server([Service()])
    await server.start("127.0.0.1", port)
    await server.wait_closed()


SERVERS = {
    "grpcio": serve_grpcio,
    "h2corn": serve_h2corn,
    "h2corn-1t": lambda port: serve_h2corn(port, threads=1),
    "h2": serve_h2,
    "grpclib": serve_grpclib,
}


def serve(stack: str, port: int) -> None:
    import uvloop

    uvloop.run(SERVERS[stack](port))


# ---------------------------------------------------------------- measuring


def measure(bench_mod: Any, bench: Any, stack: str | None, args: argparse.Namespace) -> tuple[float, float, float]:
    """One case: (authorizer µs per request, Envoy µs per request, req/s); ``stack`` None: Envoy, no auth."""
    b = bench_mod
    with contextlib.ExitStack() as stack_:
        run = b.Run(stack or "envoy")
        spec = bench.authz_config(run)
        if stack is None:
            bootstrap = b.with_filters(bench.rendered(spec), [])
            envoy_pid = bench.start_envoy("noauth", bootstrap, stack_)
            server_pid = None
        else:
            port = int(spec["listen"]["grpc"].rsplit(":", 1)[1])
            command = [sys.executable, str(Path(__file__)), "--serve", stack, "--port", str(port)]
            server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            stack_.callback(b.stop, server)
            b.wait_until(lambda: _accepts(port), server, 20, stack)
            envoy_pid = bench.start_envoy(stack, bench.rendered(spec), stack_)
            server_pid = server.pid
        front = b.Front(run.resource, bench.headers(run), envoy_pid, server_pid)
        b.smoke(front)
        script = b.lua_script(bench.path(f"{stack}.lua"), front.headers)
        b.wrk(front.url, script, 1, args)
        pids = {"envoy": envoy_pid, "server": server_pid}
        before = {k: b.tree_cpu_ticks(p) for k, p in pids.items() if p}
        output = b.wrk(front.url, script, args.duration, args)
        after = {k: b.tree_cpu_ticks(p) for k, p in pids.items() if p}
        rps, _, _, requests, bad = b.parse_wrk(output)
        if bad:
            print(f"  {stack}: {bad} bad responses", file=sys.stderr)
        per = {k: (after[k] - before[k]) * b.CLOCK_TICK_US / max(requests, 1) for k in before}
        return per.get("server", 0.0), per["envoy"], rps


def _accepts(port: int) -> bool:
    import socket

    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--serve", choices=sorted(SERVERS), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--duration", type=int, default=4, help="seconds of measured load per case and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--stacks", default="grpcio,h2corn,h2corn-1t,h2,grpclib")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.port)
        return 0
    args.threads = 1
    stacks = [s.strip() for s in args.stacks.split(",") if s.strip()]
    unknown = set(stacks) - set(SERVERS)
    if unknown:
        parser.error(f"unknown stacks {sorted(unknown)}; known: {sorted(SERVERS)}")
    if "grpclib" in stacks:
        try:
            import grpclib  # noqa: F401
        except ImportError:
            stacks.remove("grpclib")
    import bench as bench_mod

    figures: dict[str, list[tuple[float, float, float]]] = {s: [] for s in [*stacks, "envoy"]}
    with bench_mod.workdir(args.keep) as path, contextlib.ExitStack() as stack:
        bench = bench_mod.Bench(path)
        bench.start_upstream(stack)
        for round_ in range(1, args.rounds + 1):
            for name in [*stacks, "envoy"]:
                print(f"round {round_}/{args.rounds}: {name}", file=sys.stderr, flush=True)
                started = time.monotonic()
                try:
                    figures[name].append(measure(bench_mod, bench, None if name == "envoy" else name, args))
                except (bench_mod.Skip, RuntimeError, ValueError) as exc:
                    print(f"  {name} skipped: {exc}", file=sys.stderr)
                print(f"  {time.monotonic() - started:.1f}s", file=sys.stderr)
    print(table(figures, args))
    return 0


def table(figures: dict[str, list[tuple[float, float, float]]], args: argparse.Namespace) -> str:
    def med(name: str, i: int) -> float | None:
        values = [f[i] for f in figures.get(name, [])]
        return statistics.median(values) if values else None

    base, envoy_alone = med("grpcio", 0), med("envoy", 1)
    head = f"{'stack':<11} {'req/s':>8} {'server µs':>10} {'vs grpcio':>10} {'vs envoy':>9} {'envoy µs':>9}"
    lines = [
        f"wrk -c{args.connections} -d{args.duration}s, median of {args.rounds} rounds; CPU per Check; "
        f"'vs envoy': server µs / Envoy's µs per request without auth ({envoy_alone or 0:.0f} µs)",
        head,
        "-" * len(head),
    ]
    for name, values in figures.items():
        if not values:
            lines.append(f"{name:<11} skipped")
            continue
        server, envoy, rps = med(name, 0) or 0.0, med(name, 1) or 0.0, med(name, 2) or 0.0
        ratio = f"{server / base:.2f}x" if base and name != "envoy" else "-"
        unit = f"{server / envoy_alone:.2f}x" if envoy_alone and name != "envoy" else "-"
        lines.append(f"{name:<11} {rps:>8.0f} {server:>10.0f} {ratio:>10} {unit:>9} {envoy:>9.0f}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
