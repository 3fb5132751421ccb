"""Goodput under overload: admission control (``listen.max_inflight``) against a load past saturation.

    .venv/bin/python bench/overload.py [--front grpc|h2corn|http] [--duration 5] [--sweep 8,16,32,64,128]
                                       [--factor 4] [--extra 4000] [--max-inflight 256] [--compare] [--keep]

One Envoy rendered by mcp-authz (one worker) in front of the direct-response upstream of bench.py, the
authorizer behind it on the chosen front, the same ``tools/call`` as bench.py, driven by ``wrk``: a closed
loop, each connection sending its next request as soon as the previous one is answered (a 503 included:
clients that ignore ``Retry-After``, the harsh case). Figures:

- **goodput**: answers 200 per second (the upstream answered; a 503 or a timeout is not goodput);
- **peak**: the highest goodput of the sweep; **saturating load**: the smallest connection count of the sweep
  whose goodput reaches 95% of the peak (more connections add waiting, not throughput);
- the same load at ``--factor`` times the saturating connection count, and at each ``--extra`` count (4000:
  the run of issue 21 item 8), with the goodput as a share of the peak.

``--compare`` repeats everything with admission control out of the way (``max_inflight: 100000``), the
behaviour before it existed. Prints figures; asserts nothing (bench/README.md has a run).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench as b

OFF = 100_000  # max_inflight that never binds: admission control out of the way
SATURATED = 0.95  # a connection count saturates once its goodput reaches this share of the peak
WRK_TIMEOUT = "10s"  # wrk's own timeout (default 2 s) above Envoy's ext_authz timeout: answers are not lost


@dataclass(frozen=True)
class Point:
    connections: int
    seconds: int
    requests: int
    non_2xx: int
    socket_errors: int
    p50_ms: float
    p99_ms: float
    envoy_cores: float
    authz_cores: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def goodput(self) -> float:
        return (self.requests - self.non_2xx) / self.seconds

    @property
    def refused(self) -> float:
        """Share of answers that were not 2xx."""
        return self.non_2xx / self.requests if self.requests else 0.0


def parse(output: str, connections: int, seconds: int, cores: tuple[float, float]) -> Point:
    total = re.search(r"(\d+) requests in", output)
    if total is None:
        raise ValueError(f"unexpected wrk output:\n{output}")
    non_2xx = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", output))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    socket_errors = sum(int(n) for n in errors.groups()) if errors else 0

    def latency(percent: str) -> float:
        found = re.search(rf"^\s*{percent}%\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
        return float(found.group(1)) * b._UNITS_MS[found.group(2)] if found else float("nan")

    return Point(
        connections, seconds, int(total.group(1)), non_2xx, socket_errors, latency("50"), latency("99"), *cores
    )


def load(front: b.Front, script: Path, connections: int, seconds: int, threads: int) -> Point:
    """One wrk run at ``connections``, with the CPU of Envoy and the authorizer (cores) over it."""
    pids = (front.envoy_pid, front.authorizer_pid or 0)
    before = [b.tree_cpu_ticks(p) for p in pids]
    started = time.monotonic()
    command = ["wrk", f"-t{min(threads, connections)}", f"-c{connections}", f"-d{seconds}s", "--latency"]
    command += ["--timeout", WRK_TIMEOUT, "-s", str(script), front.url]
    run = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 90)
    if run.returncode != 0:
        raise RuntimeError(f"wrk failed: {(run.stderr or run.stdout).strip()}")
    wall = time.monotonic() - started
    cores = tuple((b.tree_cpu_ticks(p) - t) * b.CLOCK_TICK_US / 1e6 / wall for p, t in zip(pids, before, strict=True))
    return parse(run.stdout, connections, seconds, (cores[0], cores[1]))


def start(bench: b.Bench, args: argparse.Namespace, max_inflight: int, stack: contextlib.ExitStack) -> b.Front:
    run = b.Run(f"overload-{args.front}-{max_inflight}")
    spec = bench.authz_config(run, http=args.front == "http", grpc_server="h2corn" if args.front == "h2corn" else None)
    spec["listen"]["max_inflight"] = max_inflight
    authz, envoy_pid = b.start_authorizer_and_envoy(bench, run.name, spec, stack)
    front = b.Front(run.resource, bench.headers(run), envoy_pid, authz.pid)
    b.smoke(front)
    return front


def line(label: str, p: Point, peak: float) -> str:
    return (
        f"{label:<14} {p.connections:>6} {p.rps:>9,.0f} {p.goodput:>9,.0f} {p.goodput / peak:>7.0%} {p.refused:>6.0%}"
        f" {p.socket_errors:>7} {p.p50_ms:>8.1f} {p.p99_ms:>8.1f} {p.envoy_cores:>6.2f} {p.authz_cores:>6.2f}"
    )


def measure(bench: b.Bench, args: argparse.Namespace, max_inflight: int) -> list[str]:
    """The sweep, the saturating load, and the overload runs for one ``max_inflight``."""
    with contextlib.ExitStack() as stack:
        front = start(bench, args, max_inflight, stack)
        script = b.lua_script(bench.path(f"overload-{max_inflight}.lua"), front.headers)
        subprocess.run(["wrk", "-t1", "-c8", "-d1s", "-s", str(script), front.url], capture_output=True)  # warm-up
        sweep = []
        for connections in args.sweep:
            sweep.append(load(front, script, connections, args.duration, args.threads))
            print(f"  c={connections}: goodput {sweep[-1].goodput:,.0f}/s", file=sys.stderr, flush=True)
        peak = max(p.goodput for p in sweep)
        saturating = next(p for p in sweep if p.goodput >= SATURATED * peak)
        overloads = sorted({args.factor * saturating.connections, *args.extra})
        points = []
        for connections in overloads:
            points.append(load(front, script, connections, args.duration, args.threads))
            print(f"  c={connections}: goodput {points[-1].goodput:,.0f}/s", file=sys.stderr, flush=True)
    label = "off" if max_inflight == OFF else str(max_inflight)
    out = [f"max_inflight {label}: peak goodput {peak:,.0f}/s; saturating load {saturating.connections} connections"]
    out += [line("sweep", p, peak) for p in sweep]
    for p in points:
        times = p.connections / saturating.connections
        out.append(line(f"{times:g}x saturating", p, peak))
    factor = next(p for p in points if p.connections == args.factor * saturating.connections)
    out.append(
        f"goodput at {args.factor}x the saturating load ({factor.connections} connections): "
        f"{factor.goodput:,.0f}/s = {factor.goodput / peak:.0%} of the peak"
    )
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--front", choices=["grpc", "h2corn", "http"], default="grpc")
    parser.add_argument("--duration", type=int, default=5, help="seconds per load point")
    parser.add_argument("--sweep", default="8,16,32,64,128", help="connection counts to find the peak and saturation")
    parser.add_argument("--factor", type=int, default=4, help="overload: this many times the saturating connections")
    parser.add_argument("--extra", default="4000", help="further overload connection counts (comma-separated)")
    parser.add_argument("--max-inflight", type=int, default=256, help="listen.max_inflight of the authorizer")
    parser.add_argument("--compare", action="store_true", help="also run with admission control off")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (configs, logs)")
    args = parser.parse_args(argv)
    args.sweep = sorted(int(n) for n in args.sweep.split(",") if n.strip())
    args.extra = [int(n) for n in args.extra.split(",") if n.strip()]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for tool in (b.ENVOY, "wrk"):
        if shutil.which(tool) is None and not Path(tool).is_file():
            print(f"overload: {tool} not found", file=sys.stderr)
            return 2
    settings = [args.max_inflight, OFF] if args.compare else [args.max_inflight]
    report = [
        f"front {args.front}, wrk -t{args.threads} --timeout {WRK_TIMEOUT}, {args.duration}s per point, "
        f"{os.cpu_count()} CPUs",
        f"{'load':<14} {'conns':>6} {'req/s':>9} {'goodput':>9} {'of peak':>7} {'non2xx':>6} {'errors':>7}"
        f" {'p50 ms':>8} {'p99 ms':>8} {'envoy':>6} {'authz':>6}  (cores)",
    ]
    with b.workdir(args.keep) as path, contextlib.ExitStack() as stack:
        bench = b.Bench(path)
        bench.start_upstream(stack)
        for max_inflight in settings:
            print(f"max_inflight {max_inflight}:", file=sys.stderr, flush=True)
            report += measure(bench, args, max_inflight)
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
