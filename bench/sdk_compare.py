"""Does moving auth out of a Python MCP server into Envoy + mcp-authz make the server faster?

    .venv/bin/python bench/sdk_compare.py [--duration 5] [--warmup 1] [--repeat 4] [--connections 16] [--cases a,b]
    .venv/bin/python bench/sdk_compare.py --profile sdk-auth [--profile-process server|authz] [--duration 10]

One run, one RS256 key, one token, one request: a 2026-07-28 ``tools/call`` of the sample MCP server's
``search`` tool (``examples/sample_server.py``, the ``mcp`` SDK's streamable-HTTP server under uvicorn),
with ``Authorization: Bearer <RS256 at+jwt>``. The token's issuer is a loopback stand-in serving OIDC
metadata and the JWKS; the SDK's verifier and mcp-authz both fetch the key from it and check the same
token (signature, ``typ``, ``iss``, ``aud``, ``exp``, scope ``tools:read``). Cases:

- ``sdk-noauth``: the sample server without auth, hit directly (the ``vs noauth`` baseline);
- ``sdk-auth``: the sample server with the SDK's in-process bearer auth (``--auth-issuer``), hit
  directly: what users run without an authorizer (the ``vs sdk-auth`` baseline);
- ``envoy-noauth``: Envoy (the rendered listener, no auth filter) in front of the server without auth;
- ``envoy-sdk-auth``: the same Envoy in front of the server with the SDK's auth (users who run Envoy
  anyway, as an ingress or a mesh sidecar, and keep auth in the server);
- ``authz-grpc``: Envoy + ``mcp-authz serve`` as gRPC ext_authz (body sent, one rule requiring
  ``tools:read`` for the tool) in front of the server without auth;
- ``authz-http``: the same with ``envoy.authorizer: http`` (Envoy's HTTP ext_authz).

Every case has its own processes, all started first (idle while other cases run); each is checked: the
request gets a 200 with a tool result, and the same request without the token a 401 where auth is on.
Then ``--repeat`` rounds run every case in turn (warm-up, then ``wrk --latency``), the order reversed in
every other round. Every run is printed with ratios to the baselines of the same round, then per case
the median and range of those ratios. CPU per call (utime+stime from /proc of each process and its
children over the measured run, divided by requests) is given for the MCP server, Envoy, the authorizer
and wrk: on a shared host req/s moves with the neighbours, CPU per call much less.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import importlib.util
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import yaml
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench

SAMPLE_SERVER = bench.ROOT / "examples" / "sample_server.py"
RESOURCE = "http://mcp.bench.localhost/mcp"  # the token's audience in every case (the SDK is told it too)
SCOPE = "tools:read"
TOOL = "search"
REVISION = "2026-07-28"
BODY = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {
            "name": TOOL,
            "arguments": {"query": "readme"},
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": REVISION,
                "io.modelcontextprotocol/clientInfo": {"name": "sdk-compare", "version": "0"},
                "io.modelcontextprotocol/clientCapabilities": {},
            },
        },
    },
    separators=(",", ":"),
)
POLICY = {"default": "deny", "rules": [{"name": "search", "tools": [TOOL], "scopes": [SCOPE]}]}
SDK_AUTH = "sdk-auth"
NO_AUTH = "sdk-noauth"
ENVOY_SDK_AUTH = "envoy-sdk-auth"


# ---------------------------------------------------------------- the issuer and its token


class Issuer:
    """A loopback stand-in authorization server: one RSA key, OIDC metadata and the JWKS over HTTP."""

    def __init__(self) -> None:
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(self._key.public_key()))
        canonical = json.dumps({k: jwk[k] for k in ("e", "kty", "n")}, separators=(",", ":"))
        self.kid = base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()
        jwk.update(kid=self.kid, use="sig", alg="RS256")
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler({"keys": [jwk]}))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.jwks_uri = f"{self.url}/jwks.json"
        self.fetches = 0

    def _handler(self, jwks: dict[str, Any]) -> type[BaseHTTPRequestHandler]:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/.well-known/openid-configuration":
                    body: dict[str, Any] = {"issuer": issuer.url, "jwks_uri": issuer.jwks_uri}
                elif self.path == "/jwks.json":
                    body = jwks
                else:
                    self.send_error(404)
                    return
                issuer.fetches += 1
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    def __enter__(self) -> Issuer:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def token(self, lifetime: int = 3600) -> str:
        """An RFC 9068 access token (RS256, ``typ: at+jwt``) for ``RESOURCE`` with scope ``tools:read``."""
        now = int(time.time())
        claims = {
            "iss": self.url,
            "aud": RESOURCE,
            "sub": bench.SUBJECT,
            "client_id": "sdk-compare",
            "scope": SCOPE,
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self.kid, "typ": "at+jwt"})


def request_headers(token: str | None) -> dict[str, str]:
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": REVISION,
        "Mcp-Method": "tools/call",
        "Mcp-Name": TOOL,
    }
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return headers


# ---------------------------------------------------------------- cases


@dataclass
class Front:
    """A started case: where wrk sends requests, and whose CPU to measure."""

    url: str
    server_pid: int
    envoy_pid: int | None = None
    authz_pid: int | None = None
    auth: bool = True  # a request without the token must be refused


@dataclass
class Context:
    bench: bench.Bench
    issuer: Issuer
    workdir: Path
    seq: int = 0

    def name(self, case: str) -> str:
        self.seq += 1
        return f"{case}-{self.seq}"


def start_sample_server(ctx: Context, name: str, stack: contextlib.ExitStack, *, auth: bool) -> tuple[str, int]:
    """The sample MCP server (no call or header logs); returns (host:port, pid)."""
    port = bench.free_port()
    command = [sys.executable, str(SAMPLE_SERVER), "--host", "127.0.0.1", "--port", str(port)]
    if auth:
        command += ["--auth-issuer", ctx.issuer.url, "--auth-resource", RESOURCE, "--auth-scopes", SCOPE]
    env = {k: v for k, v in os.environ.items() if k not in ("SAMPLE_CALL_LOG", "SAMPLE_HEADER_LOG")}
    log = ctx.workdir / f"{name}.server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=bench.ROOT, env=env)
    stack.callback(bench.stop, process)

    def accepts() -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
        return False

    try:
        bench.wait_until(accepts, process, 30, "sample server")
    except bench.Skip as exc:
        raise bench.Skip(f"{exc}: {bench.tail(log)}") from None
    return f"127.0.0.1:{port}", process.pid


def authz_spec(ctx: Context, run: bench.Run, upstream: str, *, http: bool, header_only: bool = False) -> dict[str, Any]:
    """bench.py's authorizer config with this run's RS256 issuer, resource and one-rule policy."""
    ctx.bench.upstream = upstream
    spec = ctx.bench.authz_config(run, policy=POLICY, http=http, header_only=header_only)
    spec["issuers"] = [
        {
            "name": "bench-rs256",
            "issuer": ctx.issuer.url,
            "jwks_uri": ctx.issuer.jwks_uri,
            "algorithms": ["RS256"],
            "token_type": "at+jwt",
        }
    ]
    spec["servers"][0]["resource"] = RESOURCE
    return spec


def direct(auth: bool) -> Callable[[Context, contextlib.ExitStack], Front]:
    def start(ctx: Context, stack: contextlib.ExitStack) -> Front:
        address, pid = start_sample_server(ctx, ctx.name("sdk"), stack, auth=auth)
        return Front(f"http://{address}/mcp", pid, auth=auth)

    return start


def envoy_only(auth: bool) -> Callable[[Context, contextlib.ExitStack], Front]:
    """Envoy with the rendered listener and routes but no auth filter, in front of the server."""

    def start(ctx: Context, stack: contextlib.ExitStack) -> Front:
        name = ctx.name("envoy-sdk-auth" if auth else "envoy-noauth")
        address, pid = start_sample_server(ctx, name, stack, auth=auth)
        run = bench.Run(name)
        bootstrap = bench.with_filters(ctx.bench.rendered(authz_spec(ctx, run, address, http=False)), [])
        envoy = ctx.bench.start_envoy(name, bootstrap, stack)
        return Front(run.base + bench.MCP_PATH, pid, envoy, auth=auth)

    return start


def with_authz(http: bool, header_only: bool = False) -> Callable[[Context, contextlib.ExitStack], Front]:
    def start(ctx: Context, stack: contextlib.ExitStack) -> Front:
        name = ctx.name("authz-http" if http else "authz-grpc")
        address, pid = start_sample_server(ctx, name, stack, auth=False)
        run = bench.Run(name)
        spec = authz_spec(ctx, run, address, http=http, header_only=header_only)
        config = ctx.workdir / f"{name}.authz.yaml"
        config.write_text(yaml.safe_dump(spec, sort_keys=False))
        log = ctx.workdir / f"{name}.authz.log"
        with log.open("wb") as out:
            command = bench.authorizer_command(config)
            authz = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=bench.ROOT)
        stack.callback(bench.stop, authz)
        readyz = f"http://{spec['listen']['discovery']}/readyz"
        try:
            bench.wait_until(lambda: bench.http_get(readyz)[0] == 200, authz, 20, "mcp-authz serve")
        except bench.Skip as exc:
            raise bench.Skip(f"{exc}: {bench.tail(log)}") from None
        envoy = ctx.bench.start_envoy(name, ctx.bench.rendered(spec), stack)
        return Front(run.base + bench.MCP_PATH, pid, envoy, authz.pid)

    return start


@dataclass(frozen=True)
class Case:
    name: str
    title: str
    start: Callable[[Context, contextlib.ExitStack], Front]


CASES = [
    Case(NO_AUTH, "SDK server, no auth, direct", direct(auth=False)),
    Case(SDK_AUTH, "SDK server, SDK's in-process RS256 bearer auth, direct", direct(auth=True)),
    Case("envoy-noauth", "Envoy (no auth filter) -> SDK server, no auth", envoy_only(auth=False)),
    Case(ENVOY_SDK_AUTH, "Envoy (no auth filter) -> SDK server with its in-process auth", envoy_only(auth=True)),
    Case("authz-grpc", "Envoy + mcp-authz (gRPC ext_authz) -> SDK server, no auth", with_authz(http=False)),
    Case("authz-http", "Envoy + mcp-authz (HTTP ext_authz) -> SDK server, no auth", with_authz(http=True)),
]
EXTRA_CASES = [  # only with --cases
    Case(
        "authz-http-headers",
        "as authz-http with header_only: true (no body buffered for the Check)",
        with_authz(http=True, header_only=True),
    ),
]
ALL = CASES + EXTRA_CASES


# ---------------------------------------------------------------- load and results


@dataclass
class Result:
    case: Case
    round: int
    skipped: str | None = None
    rps: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    requests: int = 0
    bad: int = 0
    cpu_us: dict[str, float] | None = None  # process -> µs of CPU per call


def post(url: str, headers: dict[str, str]) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=BODY.encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def smoke(front: Front, token: str) -> None:
    """The call must get a tool result; without the token it must get a 401 where auth is on."""
    status, body = post(front.url, request_headers(token))
    result = json.loads(body).get("result") if status == 200 else None
    if not isinstance(result, dict) or result.get("isError") is not False:
        raise bench.Skip(f"smoke request got {status}: {body[:200]!r}")
    if front.auth:
        status, body = post(front.url, request_headers(None))
        if status != 401:
            raise bench.Skip(f"request without a token got {status}, not 401: {body[:200]!r}")


def lua_script(path: Path, token: str) -> Path:
    lines = ['wrk.method = "POST"', f"wrk.body = [==[{BODY}]==]"]
    lines += [f'wrk.headers["{k}"] = [==[{v}]==]' for k, v in request_headers(token).items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def children_cpu_s() -> float:
    """User+system seconds of this process's reaped children (the wrk runs, each waited for)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def start(ctx: Context, case: Case, token: str, stack: contextlib.ExitStack) -> Front | str:
    """Start ``case`` (its processes stay up until ``stack`` closes) and smoke-test it; a reason if it
    cannot run. Tried twice: a port can be taken between free_port() and the bind."""
    reason = ""
    for attempt in (1, 2):
        processes = contextlib.ExitStack()
        try:
            front = case.start(ctx, processes)
            smoke(front, token)
        except bench.Skip as exc:
            processes.close()
            reason = str(exc)
            if attempt == 1:
                print(f"  retrying {case.name}: {reason[:200]}", file=sys.stderr, flush=True)
            continue
        stack.enter_context(processes)
        return front
    return reason


def measure(front: Front, script: Path, case: Case, round_: int, args: argparse.Namespace) -> Result:
    """Warm-up, then the measured wrk run, with CPU per call of every process of the case."""
    if args.warmup > 0:
        bench.wrk(front.url, script, args.warmup, args)
    pids = {"server": front.server_pid, "envoy": front.envoy_pid, "authz": front.authz_pid}
    before = {k: bench.tree_cpu_ticks(p) for k, p in pids.items() if p}
    wrk_before = children_cpu_s()
    output = bench.wrk(front.url, script, args.duration, args)
    wrk_s = children_cpu_s() - wrk_before
    after = {k: bench.tree_cpu_ticks(p) for k, p in pids.items() if p}
    rps, p50, p99, requests, bad = bench.parse_wrk(output)
    cpu = {k: (after[k] - before[k]) * bench.CLOCK_TICK_US / max(requests, 1) for k in before}
    cpu["wrk"] = wrk_s * 1e6 / max(requests, 1)
    return Result(case, round_, None, rps, p50, p99, requests, bad, cpu)


def mean(case: Case, results: list[Result]) -> tuple[float, float, dict[str, float]] | None:
    """(req/s, p99 ms, CPU µs per call by process) averaged over the measured rounds of ``case``."""
    runs = [r for r in results if r.case.name == case.name and not r.skipped]
    if not runs:
        return None
    cpus = {k: statistics.fmean((r.cpu_us or {})[k] for r in runs) for k in (runs[0].cpu_us or {})}
    return statistics.fmean(r.rps for r in runs), statistics.fmean(r.p99_ms for r in runs), cpus


def ceiling(cpus: dict[str, float]) -> float:
    """req/s the CPU per call allows with nothing else on the host: the MCP server (one Python process,
    one core at most) and all processes together (every core) must both keep up. A model, not a measurement."""
    return min(1e6 / cpus["server"], (os.cpu_count() or 1) * 1e6 / sum(cpus.values()))


def ratio(value: float, base: float | None) -> str:
    return f"{value / base:.2f}x" if base else "-"


def table(results: list[Result], args: argparse.Namespace) -> str:
    """Every measured run (ratios to the baselines of the same round), then a summary per case."""

    def rps_of(name: str, round_: int | None) -> float | None:
        values = [r.rps for r in results if r.case.name == name and not r.skipped and round_ in (None, r.round)]
        return statistics.fmean(values) if values else None

    def cpu(r: Result, key: str) -> str:
        value = (r.cpu_us or {}).get(key)
        return f"{value:.0f}" if value is not None else "-"

    head = (
        f"{'case':<18} {'round':>5} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'vs sdk-auth':>11} {'vs noauth':>9}"
        f" {'server µs':>9} {'envoy µs':>8} {'authz µs':>8} {'wrk µs':>6} {'total µs':>8}"
    )
    lines = [
        f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s (warm-up {args.warmup}s), one authenticated"
        f" tools/call, {os.cpu_count()} CPUs; µs = CPU per call (utime+stime of the process and its children)",
        head,
        "-" * len(head),
    ]
    for r in sorted(results, key=lambda r: ([c.name for c in ALL].index(r.case.name), r.round)):
        if r.skipped:
            lines.append(f"{r.case.name:<18} {r.round:>5} skipped: {r.skipped}")
            continue
        ratios = f"{ratio(r.rps, rps_of(SDK_AUTH, r.round)):>11} {ratio(r.rps, rps_of(NO_AUTH, r.round)):>9}"
        figures = f"{r.rps:>7.0f} {r.p50_ms:>7.2f} {r.p99_ms:>7.2f} {ratios}"
        bad = f"  ({r.bad} bad responses/errors)" if r.bad else ""
        spent = f"{cpu(r, 'server'):>9} {cpu(r, 'envoy'):>8} {cpu(r, 'authz'):>8} {cpu(r, 'wrk'):>6}"
        total = sum((r.cpu_us or {}).values())
        lines.append(f"{r.case.name:<18} {r.round:>5} {figures} {spent} {total:>8.0f}{bad}")

    def per_round(name: str, base: str) -> str:
        """Median (min-max) over the rounds of req/s over ``base``'s req/s in the same round."""
        values = [r.rps / b for r in results if r.case.name == name and not r.skipped and (b := rps_of(base, r.round))]
        if not values:
            return "-"
        return f"{statistics.median(values):.2f}x ({min(values):.2f}-{max(values):.2f})"

    means = {c.name: mean(c, results) for c in ALL}
    base_cpus = (means.get(SDK_AUTH) or (0.0, 0.0, None))[2]
    lines += [
        "",
        "over the rounds: req/s, p99, CPU means; vs: median (min-max) of the per-round ratios of req/s;",
        "calls/CPU: calls per CPU-second of all processes (wrk included), over sdk-auth's; ceiling: the req/s",
        "these CPU figures would allow on an otherwise idle host (see ceiling(); a model), over sdk-auth's:",
        f"{'case':<18} {'req/s':>6} {'p99 ms':>7} {'vs sdk-auth':>19} {'vs noauth':>19} {'vs envoy-sdk-auth':>19}"
        f" {'server µs':>9} {'total µs':>8} {'calls/CPU':>9} {'ceiling':>7}",
    ]
    for name, m in means.items():
        if m is None:
            continue
        rps, p99, cpus = m
        ratios = f"{per_round(name, SDK_AUTH):>19} {per_round(name, NO_AUTH):>19} {per_round(name, ENVOY_SDK_AUTH):>19}"
        total = sum(cpus.values())
        efficiency = ratio(1 / total, 1 / sum(base_cpus.values()) if base_cpus else None)
        limit = ratio(ceiling(cpus), ceiling(base_cpus) if base_cpus else None)
        spent = f"{cpus['server']:>9.0f} {total:>8.0f} {efficiency:>9} {limit:>7}"
        lines.append(f"{name:<18} {rps:>6.0f} {p99:>7.2f} {ratios} {spent}")
    return "\n".join(lines)


def profile(ctx: Context, case: Case, token: str, args: argparse.Namespace) -> int:
    """One case under the same load while py-spy samples its MCP server (``--profile-process authz``:
    its authorizer); prints bench/profile.py's summary (share of samples by leaf frame and anywhere)."""
    spy = shutil.which("py-spy", path=str(bench.BIN)) or shutil.which("py-spy")
    if spy is None:
        print("sdk_compare: py-spy not found (.venv/bin/pip install py-spy)", file=sys.stderr)
        return 2
    loader = importlib.util.spec_from_file_location("bench_profile", Path(__file__).with_name("profile.py"))
    assert loader is not None and loader.loader is not None
    summary = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(summary)
    with contextlib.ExitStack() as stack:
        front = case.start(ctx, stack)
        smoke(front, token)
        pid = front.authz_pid if args.profile_process == "authz" else front.server_pid
        if pid is None:
            print(f"sdk_compare: {case.name} has no authorizer", file=sys.stderr)
            return 2
        script = lua_script(ctx.workdir / f"{case.name}.lua", token)
        bench.wrk(front.url, script, max(args.warmup, 1), args)
        raw = ctx.workdir / f"{case.name}.stacks.txt"
        command = [spy, "record", "--pid", str(pid), "--duration", str(args.duration), "--rate", "250"]
        command += ["--nonblocking", "--format", "raw", "--output", str(raw)]
        sampler = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        before = bench.tree_cpu_ticks(pid)
        output = bench.wrk(front.url, script, args.duration, args)
        after = bench.tree_cpu_ticks(pid)
        _, stderr = sampler.communicate(timeout=args.duration + 30)
        if sampler.returncode != 0 or not raw.exists():
            print(f"sdk_compare: py-spy failed: {stderr.decode(errors='replace').strip()}", file=sys.stderr)
            return 1
        rps, _, p99, requests, _ = bench.parse_wrk(output)
        per_call = (after - before) * bench.CLOCK_TICK_US / max(requests, 1)
        print(
            f"{case.name} ({args.profile_process}): {rps:.0f} req/s, p99 {p99:.2f} ms, {per_call:.0f} µs CPU per call"
        )
        print(summary.summarize(raw, args.top))
    return 0


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--duration", type=int, default=5, help="seconds of measured load per case and round")
    parser.add_argument("--warmup", type=int, default=1, help="seconds of unmeasured load first (0: none)")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=4, help="rounds over all cases (interleaved)")
    names = [c.name for c in ALL]
    default = ",".join(c.name for c in CASES)
    parser.add_argument("--cases", default=default, help=f"comma-separated subset of {names} (default: {default})")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (configs, logs)")
    parser.add_argument("--profile", choices=names, help="instead: sample one case with py-spy and summarize")
    parser.add_argument("--profile-process", choices=("server", "authz"), default="server")
    parser.add_argument("--top", type=int, default=25, help="--profile: frames listed per ranking")
    args = parser.parse_args(argv)
    args.cases = [n.strip() for n in args.cases.split(",") if n.strip()]
    unknown = set(args.cases) - set(names)
    if unknown:
        parser.error(f"unknown cases {sorted(unknown)}; known: {names}")
    if args.duration < 1 or args.warmup < 0 or args.repeat < 1 or args.connections < args.threads:
        parser.error("need --duration >= 1, --warmup >= 0, --repeat >= 1, --connections >= --threads")
    return args


@contextlib.contextmanager
def workdir(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="mcp-authz-sdk-compare-"))
    try:
        yield path
    finally:
        if keep:
            print(f"work directory kept: {path}", file=sys.stderr)
        else:
            shutil.rmtree(path, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for tool in (bench.ENVOY, "wrk"):
        if shutil.which(tool) is None and not Path(tool).is_file():
            print(f"sdk_compare: {tool} not found", file=sys.stderr)
            return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the clean-ups
    results: list[Result] = []
    started = time.monotonic()
    load = os.getloadavg()[0]
    with workdir(args.keep) as path, Issuer() as issuer:
        ctx = Context(bench.Bench(path), issuer, path)
        token = issuer.token()
        if args.profile:
            return profile(ctx, next(c for c in ALL if c.name == args.profile), token, args)
        cases = [c for c in ALL if c.name in args.cases]
        with contextlib.ExitStack() as stack:
            fronts: dict[str, Front] = {}
            for case in cases:  # all up at once (idle between their runs): rounds only run wrk
                print(f"starting {case.name}", file=sys.stderr, flush=True)
                front = start(ctx, case, token, stack)
                if isinstance(front, str):
                    results.append(Result(case, 1, skipped=front))
                else:
                    fronts[case.name] = front
            scripts = {name: lua_script(path / f"{name}.lua", token) for name in fronts}
            for round_ in range(1, args.repeat + 1):
                order = cases if round_ % 2 else cases[::-1]  # alternate the order: no case always runs first
                for case in (c for c in order if c.name in fronts):
                    print(f"running {case.name} (round {round_}/{args.repeat})", file=sys.stderr, flush=True)
                    results.append(measure(fronts[case.name], scripts[case.name], case, round_, args))
    print(table(results, args))
    print(
        f"load average (1 min) {load:.1f} at start, {os.getloadavg()[0]:.1f} at end;"
        f" {time.monotonic() - started:.0f} s in all"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
