"""Throughput of one authenticated MCP ``tools/call`` through Envoy: no auth, Envoy's own jwt_authn,
and Envoy + mcp-authz, all in one run against the same direct-response upstream and the same wrk load.

    .venv/bin/python bench/bench.py [--duration S] [--repeat N] [--connections C] [--threads T] [--cases a,b,...]

Every case starts its own Envoy (and authorizer) in front of the upstream, checks that one request
gets a 200, warms up, then runs ``wrk --latency``. The table gives req/s, p50, p99, the ratio of
req/s to the ``jwt_authn`` case, and CPU per request of the front Envoy and of the authorizer
(from /proc utime+stime of the process and its children over the measured run).

To add a case, append an object with ``name``, ``title`` and ``start(bench, run, stack) -> Front``
to ``CASES`` (see ``EnvoyCase`` and ``AuthzCase``); raise ``Skip`` when it cannot run here.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from authz.config.load import parse_config  # noqa: E402
from authz.identity.devkey import ensure_key, mint, public_jwks  # noqa: E402
from authz.render.envoy import render_envoy  # noqa: E402

BIN = Path(sys.executable).parent
ENVOY = shutil.which("envoy", path=str(BIN)) or shutil.which("envoy") or "envoy"
MCP_PATH = "/mcp"
TOOL = "search"
SUBJECT = "bench-user"
REVISION = "2026-07-28"
# The envelope every 2026-07-28 request carries (the authorizer, the SDK and Envoy's MCP filter refuse one without).
META = {"io.modelcontextprotocol/protocolVersion": REVISION, "io.modelcontextprotocol/clientCapabilities": {}}
BODY = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {
            "name": TOOL,
            "arguments": {"query": "envoy ext_authz"},
            "_meta": META,
        },
    },
    separators=(",", ":"),
)
UPSTREAM_BODY = '{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"ok"}],"isError":false}}'
LIST_BODY = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "tools/list",
        "params": {"_meta": META},
    },
    separators=(",", ":"),
)
LIST_TOOLS = [TOOL, *(f"tool_{i}" for i in range(1, 10))]  # the caller may call only the first
LIST_UPSTREAM_BODY = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": 2,
        "result": {
            "tools": [{"name": n, "description": f"Tool {n}.", "inputSchema": {"type": "object"}} for n in LIST_TOOLS],
            "nextCursor": "10",
        },
    },
    separators=(",", ":"),
)
CALLS_PER_LIST = 20  # the mixed load: one tools/list per 20 tools/call
CLOCK_TICK_US = 1e6 / os.sysconf("SC_CLK_TCK")
ROUTER = {
    "name": "envoy.filters.http.router",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
}


BUFFER = {
    "name": "envoy.filters.http.buffer",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
        "max_request_bytes": 1_048_576,
    },
}


class Skip(Exception):
    """This case cannot run here; the message says why."""


# ---------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def tree_cpu_ticks(pid: int) -> int:
    """utime+stime of ``pid`` and its live descendants, in clock ticks."""
    stats: dict[int, tuple[int, int]] = {}  # pid -> (ppid, ticks)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        stats[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        total += stats.get(current, (0, 0))[1]
        todo.extend(p for p, (ppid, _) in stats.items() if ppid == current)
    return total


def http_get(url: str, timeout: float = 1.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


def wait_until(ready: Callable[[], bool], process: subprocess.Popen[bytes], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise Skip(f"{what} exited with status {process.returncode}")
        try:
            if ready():
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise Skip(f"{what} not ready after {timeout:g}s")
        time.sleep(0.05)


# ---------------------------------------------------------------- the bench


@dataclass
class Front:
    """A started case: where wrk sends requests, and whose CPU to measure."""

    url: str
    headers: dict[str, str]
    envoy_pid: int
    authorizer_pid: int | None = None
    lua: str | None = None  # a wrk script of its own (mixed load) instead of the one tools/call


@dataclass
class Run:
    """Ports and identities of one case."""

    name: str
    front_port: int = field(default_factory=free_port)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.front_port}"

    @property
    def resource(self) -> str:
        return self.base + MCP_PATH

    @property
    def issuer(self) -> str:
        return self.base + "/dev"


class Bench:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.key = ensure_key(workdir / "signing-key.pem")
        self.jwks = public_jwks(self.key)
        self.upstream = ""
        self._envoys = 0

    def path(self, name: str) -> Path:
        return self.workdir / name

    def token(self, run: Run) -> str:
        return mint(self.key, issuer=run.issuer, audience=run.resource, subject=SUBJECT, scopes=["tools:read"])

    def headers(self, run: Run) -> dict[str, str]:
        """The request of every case: a 2026-07-28 tools/call with its routing headers."""
        return {
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
            "Authorization": f"Bearer {self.token(run)}",
            "MCP-Protocol-Version": REVISION,
            "Mcp-Method": "tools/call",
            "Mcp-Name": TOOL,
        }

    def start_envoy(self, name: str, bootstrap: dict[str, Any], stack: contextlib.ExitStack) -> int:
        """Start an Envoy (own base id, one worker) and wait for its admin /ready."""
        self._envoys += 1
        base_id = 5_000_000 + (os.getpid() % 100_000) * 16 + self._envoys  # clear of tests/e2e
        config, admin = self.path(f"{name}.envoy.yaml"), self.path(f"{name}.admin")
        bootstrap = copy.deepcopy(bootstrap)
        bootstrap["admin"] = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}}
        config.write_text(yaml.safe_dump(bootstrap, sort_keys=False))
        log = self.path(f"{name}.envoy.log")
        command = [ENVOY, "-c", str(config), "--base-id", str(base_id), "--concurrency", "1"]
        command += ["--admin-address-path", str(admin), "-l", "warning", "--log-path", str(log)]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        stack.callback(stop, process)

        def ready() -> bool:
            address = admin.read_text().strip() if admin.exists() else ""
            return bool(address) and http_get(f"http://{address}/ready")[0] == 200

        try:
            wait_until(ready, process, 15, f"envoy {name}")
        except Skip as exc:
            raise Skip(f"{exc}: {tail(log)}") from None
        return process.pid

    def start_upstream(self, stack: contextlib.ExitStack) -> None:
        """The MCP server stand-in: an Envoy answering every request with a fixed JSON-RPC result."""
        port = free_port()
        listed = {  # tools/list (the mixed load): a list of its own
            "match": {"prefix": "/", "headers": [{"name": "mcp-method", "string_match": {"exact": "tools/list"}}]},
            "direct_response": {"status": 200, "body": {"inline_string": LIST_UPSTREAM_BODY}},
            "response_headers_to_add": [{"header": {"key": "content-type", "value": "application/json"}}],
        }
        legacy_list = {**listed, "match": {"prefix": "/", "headers": [{"name": "x-bench-list", "present_match": True}]}}
        route = {
            "match": {"prefix": "/"},
            "direct_response": {"status": 200, "body": {"inline_string": UPSTREAM_BODY}},
            "response_headers_to_add": [{"header": {"key": "content-type", "value": "application/json"}}],
        }
        manager = {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
            ".HttpConnectionManager",
            "stat_prefix": "upstream",
            "route_config": {
                "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [listed, legacy_list, route]}]
            },
            # A direct response sent before the request body is read closes the connection; a real
            # server reads the body first, so does this one (buffer, then answer).
            "http_filters": [BUFFER, ROUTER],
        }
        listener = {
            "name": "upstream",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [
                {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}]}
            ],
        }
        self.start_envoy("upstream", {"static_resources": {"listeners": [listener]}}, stack)
        self.upstream = f"127.0.0.1:{port}"

    def authz_config(
        self,
        run: Run,
        *,
        header_only: bool = False,
        policy: dict[str, Any] | None = None,
        http: bool = False,
        grpc_server: str | None = None,
    ) -> dict[str, Any]:
        """The authorizer's own config for this case: the dev issuer, one server, the upstream.

        ``http``: Envoy asks the authorizer over HTTP ext_authz (``listen.http``) instead of gRPC.
        ``grpc_server``: ``listen.grpc_server`` (``grpcio`` | ``h2corn``); None: the config's default.
        """
        server: dict[str, Any] = {
            "name": "bench",
            "resource": run.resource,
            "upstream": self.upstream,
            "scopes_supported": ["tools:read", "tools:write"],
            "header_only": header_only,
        }
        if policy is not None:
            server["policy"] = policy
        listen = {"grpc": f"127.0.0.1:{free_port()}", "discovery": f"127.0.0.1:{free_port()}"}
        if grpc_server is not None:  # start_authorizer_and_envoy moves it into the environment
            listen["grpc_server"] = grpc_server
        envoy: dict[str, Any] = {"listen": f"127.0.0.1:{run.front_port}", "admin_port": 0}
        if http:
            listen["http"] = f"127.0.0.1:{free_port()}"
            envoy["authorizer"] = "http"
        return {
            "listen": listen,
            "issuers": [
                {
                    "name": "dev",
                    "issuer": run.issuer,
                    "local_key_file": str(self.key),
                    "algorithms": ["ES256"],
                    "token_type": "at+jwt",
                }
            ],
            "servers": [server],
            "log_level": "warning",
            "envoy": envoy,
        }

    def rendered(self, spec: dict[str, Any]) -> dict[str, Any]:
        return render_envoy(parse_config(yaml.safe_dump(spec), "bench"))


def authorizer_command(config: Path) -> list[str]:
    script = BIN / "mcp-authz"
    if script.exists():
        return [str(script), "serve", "-c", str(config)]
    if (ROOT / "authz" / "cli.py").exists():  # not pip-installed: the same entry point from the tree
        entry = "import sys; from authz.cli import main; sys.exit(main())"
        return [sys.executable, "-c", entry, "serve", "-c", str(config)]
    raise Skip("mcp-authz CLI not installed (no .venv/bin/mcp-authz, no authz/cli.py)")


def with_filters(bootstrap: dict[str, Any], filters: list[dict[str, Any]]) -> dict[str, Any]:
    """The rendered bootstrap with its HTTP filters replaced, per-route ext_authz settings dropped."""
    result = copy.deepcopy(bootstrap)
    manager = result["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    manager["http_filters"] = [*filters, ROUTER]
    for route in manager["route_config"]["virtual_hosts"][0]["routes"]:
        route.pop("typed_per_filter_config", None)
    result["static_resources"]["clusters"] = [
        c for c in result["static_resources"]["clusters"] if c["name"] not in ("mcp_authz", "mcp_discovery")
    ]
    manager["route_config"]["virtual_hosts"][0]["routes"] = [
        r for r in manager["route_config"]["virtual_hosts"][0]["routes"] if "mcp_discovery" not in str(r)
    ]
    return result


def jwt_authn(bench: Bench, run: Run, *, cache: bool = False) -> dict[str, Any]:
    """Envoy's in-process JWT check of the same token: issuer, audience, ES256 against an inline JWKS."""
    provider: dict[str, Any] = {
        "issuer": run.issuer,
        "audiences": [run.resource],
        "local_jwks": {"inline_string": json.dumps(bench.jwks)},
        "forward": False,
    }
    if cache:
        provider["jwt_cache_config"] = {"jwt_cache_size": 100}
    return {
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {"dev": provider},
            "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "dev"}}],
        },
    }


def in_process_reference(bench: Bench, run: Run) -> list[dict[str, Any]]:
    """The fastest per-tool authorization a user could build in Envoy alone (issue 19 item 3): jwt_authn with
    its cache and the payload in dynamic metadata, Envoy's MCP filter (1.40) parsing the body, and RBAC on the
    MCP method, the tool name and the scope claim. No 401 challenge, step-up, sessions, revocation or lists."""
    [authn] = [jwt_authn(bench, run, cache=True)]
    authn["typed_config"]["providers"]["dev"]["payload_in_metadata"] = "jwt_payload"

    def mcp_field(*path: str, exact: str) -> dict[str, Any]:
        return {
            "filter": "envoy.filters.http.mcp",
            "path": [{"key": key} for key in path],
            "value": {"string_match": {"exact": exact}},
        }

    scope = {
        "filter": "envoy.filters.http.jwt_authn",
        "path": [{"key": "jwt_payload"}, {"key": "scope"}],
        "value": {"string_match": {"safe_regex": {"regex": r"(^|.* )tools:read( .*|$)"}}},
    }
    policy = {
        "permissions": [
            {
                "and_rules": {
                    "rules": [
                        {"metadata": mcp_field("method", exact="tools/call")},
                        {"metadata": mcp_field("params", "name", exact=TOOL)},
                    ]
                }
            }
        ],
        "principals": [{"metadata": scope}],
    }
    return [
        authn,
        {
            "name": "envoy.filters.http.mcp",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.mcp.v3.Mcp",
                "traffic_mode": "REJECT_NO_MCP",
            },
        },
        {
            "name": "envoy.filters.http.rbac",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
                "rules": {"action": "ALLOW", "policies": {"search-with-tools-read": policy}},
            },
        },
    ]


# ---------------------------------------------------------------- cases


class Case(Protocol):
    @property
    def name(self) -> str: ...  # short id for --cases

    @property
    def title(self) -> str: ...

    def start(self, bench: Bench, run: Run, stack: contextlib.ExitStack) -> Front: ...


@dataclass(frozen=True)
class EnvoyCase:
    """Envoy alone, with the renderer's listener and routes but other HTTP filters (or none)."""

    name: str
    title: str
    filters: Callable[[Bench, Run], list[dict[str, Any]]]

    def start(self, bench: Bench, run: Run, stack: contextlib.ExitStack) -> Front:
        bootstrap = with_filters(bench.rendered(bench.authz_config(run)), self.filters(bench, run))
        pid = bench.start_envoy(self.name, bootstrap, stack)
        return Front(run.resource, bench.headers(run), pid)


@dataclass(frozen=True)
class AuthzCase:
    """Envoy rendered by mcp-authz, with ``mcp-authz serve`` as its ext_authz (gRPC, or HTTP if ``http``)."""

    name: str
    title: str
    header_only: bool = False
    policy: dict[str, Any] | None = None
    http: bool = False
    grpc_server: str | None = None  # listen.grpc_server; None: the default

    def start(self, bench: Bench, run: Run, stack: contextlib.ExitStack) -> Front:
        spec = bench.authz_config(
            run, header_only=self.header_only, policy=self.policy, http=self.http, grpc_server=self.grpc_server
        )
        authz, pid = start_authorizer_and_envoy(bench, self.name, spec, stack)
        return Front(run.resource, bench.headers(run), pid, authz.pid)


def start_authorizer_and_envoy(
    bench: Bench, name: str, spec: dict[str, Any], stack: contextlib.ExitStack
) -> tuple[subprocess.Popen[bytes], int]:
    """``mcp-authz serve`` with ``spec`` (ready once ``/readyz`` says so), then the Envoy rendered from it."""
    spec = copy.deepcopy(spec)
    env = dict(os.environ)
    grpc_server = spec["listen"].pop("grpc_server", None)  # the gRPC front: MCP_AUTHZ_GRPC_SERVER (authz.app)
    if grpc_server is not None:
        env["MCP_AUTHZ_GRPC_SERVER"] = grpc_server
    config = bench.path(f"{name}.authz.yaml")
    config.write_text(yaml.safe_dump(spec, sort_keys=False))
    log = bench.path(f"{name}.authz.log")
    with log.open("wb") as out:
        command = authorizer_command(config)
        authz = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    stack.callback(stop, authz)
    readyz = f"http://{spec['listen']['discovery']}/readyz"
    try:
        wait_until(lambda: http_get(readyz)[0] == 200, authz, 20, "mcp-authz serve")
    except Skip as exc:
        raise Skip(f"{exc}: {tail(log)}") from None
    return authz, bench.start_envoy(name, bench.rendered(spec), stack)


def start_redis(bench: Bench, stack: contextlib.ExitStack) -> str:
    """A throwaway redis-server on loopback (no persistence); returns its URL."""
    server = shutil.which("redis-server")
    if server is None:
        raise Skip("redis-server not found (apt-get install redis-server)")
    port = free_port()
    command = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    log = bench.path(f"redis-{port}.log")
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=bench.workdir)
    stack.callback(stop, process)

    def accepts() -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
        return False

    wait_until(accepts, process, 10, "redis-server")
    return f"redis://127.0.0.1:{port}/0"


def start_redis_topology(bench: Bench, stack: contextlib.ExitStack, topology: str) -> dict[str, Any]:
    """A Sentinel set or a Redis Cluster on loopback (the e2e fixtures' own); returns the store section."""
    if shutil.which("redis-server") is None or (topology == "sentinel" and shutil.which("redis-sentinel") is None):
        raise Skip("redis-server / redis-sentinel not found (apt-get install redis-server redis-sentinel)")
    sys.path.insert(0, str(ROOT / "tests" / "e2e"))
    from redis_topologies import start_redis_cluster, start_sentinel_set

    log_dir = Path(bench.path(f"redis-{topology}"))
    log_dir.mkdir(parents=True, exist_ok=True)
    if topology == "sentinel":
        sentinel = start_sentinel_set(log_dir)
        stack.callback(sentinel.stop)
        return {"url": sentinel.url}
    cluster = start_redis_cluster(log_dir)
    stack.callback(cluster.stop)
    return {"cluster": {"nodes": cluster.seeds}}


@dataclass(frozen=True)
class StoreCase:
    """mcp-authz with shared state on every call: revocation lookup, session binding (2025-11-25 request
    with an ``Mcp-Session-Id``) and a rate limit that never refuses; on the memory store or on Redis."""

    name: str
    title: str
    redis: bool
    topology: str = "single"  # with redis: single, sentinel (primary, 2 replicas, 3 sentinels), cluster (6 nodes)

    def start(self, bench: Bench, run: Run, stack: contextlib.ExitStack) -> Front:
        spec = bench.authz_config(run)
        spec["servers"][0]["rate_limits"] = [{"name": "bench", "limit": 1_000_000, "window": 60}]
        if self.redis and self.topology == "single":
            spec["store"] = {"url": start_redis(bench, stack)}
        elif self.redis:
            spec["store"] = start_redis_topology(bench, stack, self.topology)
        authz, pid = start_authorizer_and_envoy(bench, self.name, spec, stack)
        headers = {k: v for k, v in bench.headers(run).items() if k not in ("Mcp-Method", "Mcp-Name")}
        headers.update({"MCP-Protocol-Version": "2025-11-25", "Mcp-Session-Id": "bench-session-0001"})
        return Front(run.resource, headers, pid, authz.pid)


class TokenEndpoint:
    """A stand-in RFC 8693 token endpoint on loopback: one fixed token, an hour long; counts requests."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        endpoint = self
        self.requests = 0
        answer = json.dumps({"access_token": "bench-downstream-token", "token_type": "Bearer", "expires_in": 3600})

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", "0")))
                endpoint.requests += 1
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer.encode())

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/token"

    def __enter__(self) -> TokenEndpoint:
        import threading

        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass(frozen=True)
class ExchangeCase:
    """mcp-authz exchanging the caller's token (RFC 8693) for every call, from a warm cache: the smoke
    request makes the one exchange, every measured call reuses it (one subject throughout)."""

    name: str
    title: str

    def start(self, bench: Bench, run: Run, stack: contextlib.ExitStack) -> Front:
        endpoint = stack.enter_context(TokenEndpoint())
        spec = bench.authz_config(run)
        spec["servers"][0]["token_exchange"] = {
            "token_endpoint": endpoint.url,
            "resource": "http://127.0.0.1:9/downstream",
            "scopes": ["api:read"],
            "client_id": "bench",
            "client_secret": "bench-secret",
        }
        authz, pid = start_authorizer_and_envoy(bench, self.name, spec, stack)
        stack.callback(lambda: EXCHANGES.__setitem__(self.name, endpoint.requests))
        return Front(run.resource, bench.headers(run), pid, authz.pid)


EXCHANGES: dict[str, int] = {}  # case name -> requests its token endpoint got (1 with a warm cache)


def mixed_lua(headers: dict[str, str], listed: dict[str, str]) -> str:
    """wrk: one tools/list after every ``CALLS_PER_LIST`` tools/call, on each connection."""

    def table(values: dict[str, str]) -> str:
        return "{" + ", ".join(f'["{k}"] = [==[{v}]==]' for k, v in values.items()) + "}"

    return "\n".join(
        [
            "local n, call, list = 0, nil, nil",
            "init = function(args)  -- wrk.host is known here, not at load time",
            f'  call = wrk.format("POST", nil, {table(headers)}, [==[{BODY}]==])',
            f'  list = wrk.format("POST", nil, {table(listed)}, [==[{LIST_BODY}]==])',
            "end",
            "request = function()",
            "  n = n + 1",
            f"  if n % {CALLS_PER_LIST + 1} == 0 then return list end",
            "  return call",
            "end",
            "",
        ]
    )


@dataclass(frozen=True)
class MixedCase:
    """mcp-authz (gRPC) with a small policy under the mixed load, with or without the list filter
    (``filter_lists``: Envoy's ext_proc after ext_authz, served by the same authorizer process)."""

    name: str
    title: str
    filter_lists: bool
    legacy: bool = False  # 2025-11-25 requests (a session, no Mcp-Method): the Check routes them
    grpc_server: str = "grpcio"  # listen.grpc_server

    def start(self, bench: Bench, run: Run, stack: contextlib.ExitStack) -> Front:
        spec = bench.authz_config(
            run,
            grpc_server=self.grpc_server,
            policy={
                "default": "deny",
                "rules": [
                    {"name": "protocol", "methods": ["initialize", "ping", "notifications/*", "*/list"]},
                    {"name": "search", "tools": [TOOL], "scopes": ["tools:read"]},
                    {"name": "others", "tools": ["tool_*"], "scopes": ["tools:write"]},
                ],
            },
        )
        spec["servers"][0]["filter_lists"] = self.filter_lists
        authz, pid = start_authorizer_and_envoy(bench, self.name, spec, stack)
        headers = bench.headers(run)
        listed = {**headers, "Mcp-Method": "tools/list"}
        listed.pop("Mcp-Name")
        if self.legacy:  # the stand-in upstream finds the list request by a header of its own
            headers = {k: v for k, v in headers.items() if k not in ("Mcp-Method", "Mcp-Name")}
            headers.update({"MCP-Protocol-Version": "2025-11-25", "Mcp-Session-Id": "bench-session-0001"})
            listed = {**headers, "X-Bench-List": "1"}
        request = urllib.request.Request(run.resource, data=LIST_BODY.encode(), headers=listed, method="POST")
        with urllib.request.urlopen(request, timeout=5) as response:  # the list as the client sees it
            names = [t["name"] for t in json.loads(response.read())["result"]["tools"]]
        if names != ([TOOL] if self.filter_lists else LIST_TOOLS):
            raise Skip(f"tools/list gave {names}")
        return Front(run.resource, headers, pid, authz.pid, lua=mixed_lua(headers, listed))


def policy_of(size: int) -> dict[str, Any]:
    """``size`` rules of which only the last one matches the benchmark call (all are evaluated)."""
    rules: list[dict[str, Any]] = [
        {"name": f"tool-{i}", "tools": [f"tool_{i}", f"tool_{i}_*"], "scopes": ["tools:write"]} for i in range(size - 2)
    ]
    rules.append({"name": "protocol", "methods": ["initialize", "ping", "notifications/*", "*/list"]})
    rules.append({"name": "search", "tools": [TOOL], "scopes": ["tools:read"], "when": f'jwt.sub == "{SUBJECT}"'})
    return {"default": "deny", "rules": rules}


BASELINE = "jwt_authn"
CASES: list[Case] = [
    EnvoyCase("envoy", "Envoy, no auth", lambda bench, run: []),
    EnvoyCase(BASELINE, "Envoy jwt_authn (ES256, inline JWKS)", lambda bench, run: [jwt_authn(bench, run)]),
    EnvoyCase(
        "jwt_authn-cache",
        "Envoy jwt_authn, jwt_cache_config",
        lambda bench, run: [jwt_authn(bench, run, cache=True)],
    ),
    EnvoyCase(
        "envoy-per-tool",
        "Envoy alone per tool: jwt_authn (cache) + MCP filter + RBAC on method, tool, scope",
        in_process_reference,
    ),
    AuthzCase("mcp-authz", "Envoy + mcp-authz, no policy, header-only", header_only=True, grpc_server="grpcio"),
    AuthzCase("mcp-authz-body", "Envoy + mcp-authz, no policy, body sent", grpc_server="grpcio"),
    AuthzCase("mcp-authz-policy", "Envoy + mcp-authz, 50 rules, body sent", policy=policy_of(50), grpc_server="grpcio"),
    AuthzCase("h2corn", "as mcp-authz, gRPC front on h2corn", header_only=True, grpc_server="h2corn"),
    AuthzCase("h2corn-body", "as mcp-authz-body, gRPC front on h2corn", grpc_server="h2corn"),
    AuthzCase("h2corn-policy", "as mcp-authz-policy, gRPC front on h2corn", policy=policy_of(50), grpc_server="h2corn"),
    AuthzCase("http", "Envoy + mcp-authz over HTTP ext_authz, no policy, header-only", header_only=True, http=True),
    AuthzCase("http-body", "Envoy + mcp-authz over HTTP ext_authz, no policy, body sent", http=True),
    AuthzCase(
        "http-policy", "Envoy + mcp-authz over HTTP ext_authz, 50 rules, body sent", policy=policy_of(50), http=True
    ),
    AuthzCase(
        "http-policy-headers",
        "Envoy + mcp-authz over HTTP ext_authz, 50 rules, header-only",
        header_only=True,
        policy=policy_of(50),
        http=True,
    ),
]
CASES += [
    StoreCase("store-memory", "Envoy + mcp-authz, revocation + session + rate limit, memory store", redis=False),
    StoreCase("store-redis", "Envoy + mcp-authz, revocation + session + rate limit, Redis store", redis=True),
    StoreCase("store-sentinel", "the same, Redis Sentinel (primary, 2 replicas, 3 sentinels)", True, "sentinel"),
    StoreCase("store-cluster", "the same, Redis Cluster (3 masters, 3 replicas)", True, "cluster"),
]
CASES += [ExchangeCase("exchange-warm", "Envoy + mcp-authz, no policy, body sent, token exchange (warm cache)")]
CASES += [
    MixedCase("mixed", f"Envoy + mcp-authz, 3 rules, 1 tools/list per {CALLS_PER_LIST} calls", filter_lists=False),
    MixedCase(
        "mixed-extproc",
        f"the same with filter_lists (ext_proc), 1 tools/list per {CALLS_PER_LIST} calls",
        filter_lists=True,
    ),
    MixedCase(
        "mixed-extproc-h2corn",
        "as mixed-extproc, gRPC front (ext_authz and ext_proc) on h2corn",
        filter_lists=True,
        grpc_server="h2corn",
    ),
    MixedCase("mixed-legacy", "as mixed, 2025-11-25 requests (no Mcp-Method)", filter_lists=False, legacy=True),
    MixedCase("mixed-legacy-extproc", "as mixed-extproc, 2025-11-25 requests", filter_lists=True, legacy=True),
]
NO_AUTH = "envoy"
CACHED = "jwt_authn-cache"


# ---------------------------------------------------------------- load and results


@dataclass
class Result:
    case: Case
    skipped: str | None = None
    rps: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    requests: int = 0
    bad: int = 0
    envoy_us: float | None = None
    authz_us: float | None = None


def lua_script(path: Path, headers: dict[str, str]) -> Path:
    lines = ['wrk.method = "POST"', f"wrk.body = [==[{BODY}]==]"]
    lines += [f'wrk.headers["{k}"] = [==[{v}]==]' for k, v in headers.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def parse_wrk(output: str) -> tuple[float, float, float, int, int]:
    """req/s, p50 ms, p99 ms, requests, non-2xx + socket errors."""

    def latency(percent: str) -> float:
        m = re.search(rf"^\s*{percent}%\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
        if m is None:
            raise ValueError(f"no {percent}% line in wrk output:\n{output}")
        return float(m.group(1)) * _UNITS_MS[m.group(2)]

    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    total = re.search(r"(\d+) requests in", output)
    if rps is None or total is None:
        raise ValueError(f"unexpected wrk output:\n{output}")
    bad = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", output))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    bad += sum(int(n) for n in errors.groups()) if errors else 0
    return float(rps.group(1)), latency("50"), latency("99"), int(total.group(1)), bad


def wrk(url: str, script: Path, seconds: int, args: argparse.Namespace) -> str:
    command = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{seconds}s", "--latency", "-s", str(script)]
    run = subprocess.run([*command, url], capture_output=True, text=True, timeout=seconds + 60)
    if run.returncode != 0:
        raise RuntimeError(f"wrk failed: {(run.stderr or run.stdout).strip()}")
    return run.stdout


def smoke(front: Front) -> None:
    """One request must get a 200: never benchmark refusals."""
    request = urllib.request.Request(front.url, data=BODY.encode(), headers=front.headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        detail = exc.headers.get("www-authenticate") or exc.read()[:200].decode(errors="replace")
        raise Skip(f"smoke request got {exc.code}: {detail}") from None


def measure(bench: Bench, case: Case, args: argparse.Namespace) -> Result:
    with contextlib.ExitStack() as stack:
        try:
            front = case.start(bench, Run(case.name), stack)
            smoke(front)
        except Skip as exc:
            return Result(case, skipped=str(exc))
        script = lua_script(bench.path(f"{case.name}.lua"), front.headers)
        if front.lua is not None:
            script.write_text(front.lua)
        if args.warmup > 0:
            wrk(front.url, script, args.warmup, args)
        pids = {"envoy": front.envoy_pid, "authz": front.authorizer_pid}
        before = {k: tree_cpu_ticks(p) for k, p in pids.items() if p}
        output = wrk(front.url, script, args.duration, args)
        after = {k: tree_cpu_ticks(p) for k, p in pids.items() if p}
        rps, p50, p99, requests, bad = parse_wrk(output)
        per_request = {k: (after[k] - before[k]) * CLOCK_TICK_US / max(requests, 1) for k in before}
        return Result(case, None, rps, p50, p99, requests, bad, per_request.get("envoy"), per_request.get("authz"))


def table(results: list[Result], args: argparse.Namespace) -> str:
    """One line per case; ``vs jwt``/``vs jwt$``/``vs envoy``: req/s over the jwt_authn, cached
    jwt_authn and no-auth cases of the same run."""

    def rps_of(name: str) -> float | None:
        return next((r.rps for r in results if r.case.name == name and not r.skipped), None)

    def ratio(rps: float, base: float | None) -> str:
        return f"{rps / base:.2f}x" if base else "-"

    bases = (rps_of(BASELINE), rps_of(CACHED), rps_of(NO_AUTH))
    envoy_alone = next((r.envoy_us for r in results if r.case.name == NO_AUTH and not r.skipped), None)
    head = (
        f"{'case':<20} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'vs jwt':>7} {'vs jwt$':>7} {'vs envoy':>8}"
        f" {'envoy µs':>9} {'authz µs':>9} {'authz/E0':>8}  note"
    )
    rounds = f", median of {args.repeat} rounds" if args.repeat > 1 else ""
    lines = [
        f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s{rounds}, POST tools/call, {os.cpu_count()} CPUs",
        head,
        "-" * len(head),
    ]
    for r in results:
        if r.skipped:
            lines.append(f"{r.case.name:<20} skipped: {r.skipped}")
            continue
        ratios = f"{ratio(r.rps, bases[0]):>7} {ratio(r.rps, bases[1]):>7} {ratio(r.rps, bases[2]):>8}"
        envoy = f"{r.envoy_us:.0f}" if r.envoy_us is not None else "-"
        authz = f"{r.authz_us:.0f}" if r.authz_us is not None else "-"
        unit = f"{r.authz_us / envoy_alone:.2f}x" if r.authz_us is not None and envoy_alone else "-"
        note = r.case.title + (f"; {r.bad} bad responses/errors" if r.bad else "")
        figures = f"{r.rps:>9.0f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} {ratios} {envoy:>9} {authz:>9} {unit:>8}"
        lines.append(f"{r.case.name:<20} {figures}  {note}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--duration", type=int, default=5, help="seconds of measured load per case")
    parser.add_argument("--warmup", type=int, default=1, help="seconds of unmeasured load per case (0: none)")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    names = [c.name for c in CASES]
    parser.add_argument("--cases", default=",".join(names), help=f"comma-separated subset of {names}")
    parser.add_argument("--repeat", type=int, default=1, help="rounds over all cases; the table shows medians")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (configs, logs)")
    args = parser.parse_args(argv)
    args.cases = [n.strip() for n in args.cases.split(",") if n.strip()]
    unknown = set(args.cases) - set(names)
    if unknown:
        parser.error(f"unknown cases {sorted(unknown)}; known: {names}")
    if args.duration < 1 or args.warmup < 0 or args.repeat < 1:
        parser.error("--duration and --repeat must be at least 1 and --warmup at least 0")
    if args.connections < args.threads:
        parser.error("--connections must be at least --threads")
    return args


@contextlib.contextmanager
def workdir(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="mcp-authz-bench-"))
    try:
        yield path
    finally:
        if keep:
            print(f"work directory kept: {path}", file=sys.stderr)
        else:
            shutil.rmtree(path, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for tool in (ENVOY, "wrk"):
        if shutil.which(tool) is None and not Path(tool).is_file():
            print(f"bench: {tool} not found", file=sys.stderr)
            return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the clean-ups below
    runs: dict[str, list[Result]] = {c.name: [] for c in CASES if c.name in args.cases}
    with workdir(args.keep) as path, contextlib.ExitStack() as stack:
        bench = Bench(path)
        bench.start_upstream(stack)
        for round_ in range(1, args.repeat + 1):  # rounds interleave the cases: drift hits all alike
            for case in CASES:
                if case.name in runs:
                    label = f" (round {round_}/{args.repeat})" if args.repeat > 1 else ""
                    print(f"running {case.name}: {case.title}{label}", file=sys.stderr, flush=True)
                    result = measure(bench, case, args)
                    if result.skipped:  # a port taken between free_port() and bind: try once more
                        print(f"  retrying: {result.skipped[:200]}", file=sys.stderr, flush=True)
                        result = measure(bench, case, args)
                    runs[case.name].append(result)
    print(table([median(r) for r in runs.values()], args))
    memory = median(runs["store-memory"]) if "store-memory" in runs else None
    for name in ("store-redis", "store-sentinel", "store-cluster"):
        if memory is not None and not memory.skipped and name in runs and not (found := median(runs[name])).skipped:
            print(f"{name} / store-memory req/s: {found.rps / memory.rps:.2f}x")
    for with_, without in (
        ("mixed-extproc", "mixed"),
        ("mixed-extproc-h2corn", "mixed-extproc"),
        ("mixed-legacy-extproc", "mixed-legacy"),
    ):
        mixed = [median(runs[n]) for n in (with_, without) if n in runs]
        if len(mixed) == 2 and not (mixed[0].skipped or mixed[1].skipped):
            print(f"{with_} / {without} req/s: {mixed[0].rps / mixed[1].rps:.2f}x")
    for new, old in (("h2corn", "mcp-authz"), ("h2corn-body", "mcp-authz-body"), ("h2corn-policy", "mcp-authz-policy")):
        fronts = [median(runs[n]) for n in (new, old) if n in runs]
        if len(fronts) == 2 and not (fronts[0].skipped or fronts[1].skipped):
            cpu = (fronts[0].authz_us or 0) / (fronts[1].authz_us or 1)
            print(f"{new} / {old}: req/s {fronts[0].rps / fronts[1].rps:.2f}x, authorizer CPU per Check {cpu:.2f}x")
    pair = [median(runs[n]) for n in ("exchange-warm", "mcp-authz-body") if n in runs]
    if len(pair) == 2 and not (pair[0].skipped or pair[1].skipped):
        exchanges = EXCHANGES.get("exchange-warm")
        print(f"exchange-warm / mcp-authz-body req/s: {pair[0].rps / pair[1].rps:.2f}x ({exchanges} exchanges)")
    return 0


def median(results: list[Result]) -> Result:
    """Each figure's median over the measured runs of one case (skipped if none was measured)."""
    measured = [r for r in results if not r.skipped]
    if not measured:
        return results[0]
    results = measured

    def mid(values: list[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return statistics.median(present) if present else None

    return Result(
        results[0].case,
        None,
        statistics.median(r.rps for r in results),
        statistics.median(r.p50_ms for r in results),
        statistics.median(r.p99_ms for r in results),
        sum(r.requests for r in results),
        sum(r.bad for r in results),
        mid([r.envoy_us for r in results]),
        mid([r.authz_us for r in results]),
    )


if __name__ == "__main__":
    sys.exit(main())
