"""Where the authorizer's CPU goes under load: one bench case, wrk driving it, py-spy sampling it.

    .venv/bin/pip install py-spy
    .venv/bin/python bench/profile.py http-policy [--duration 10] [--rate 500] [--top 25] [--raw FILE]

Starts the case as bench.py does (same upstream, Envoy, authorizer and request), runs wrk for
``--duration`` seconds while ``py-spy record --nonblocking`` samples the authorizer, then prints
the share of samples by leaf frame ("self") and by frame anywhere on the stack ("inclusive").
Frames of native code (uvloop's event loop and socket calls, grpcio's C core) show up as the
innermost Python frame that called them, typically ``Runner.run``; threads of grpcio show up
as ``Thread.run``.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench


def summarize(raw: Path, top: int) -> str:
    """py-spy's collapsed stacks (``frame;frame;... count`` lines) → two ranked lists."""
    leaf: Counter[str] = Counter()
    anywhere: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(encoding="utf-8").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        leaf[frames[-1]] += n
        for frame in set(frames):
            anywhere[frame] += n
    lines = [f"{total} samples", "self:"]
    lines += [f"  {n / total:6.1%}  {frame}" for frame, n in leaf.most_common(top)]
    lines.append("inclusive:")
    lines += [f"  {n / total:6.1%}  {frame}" for frame, n in anywhere.most_common(top)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    names = [c.name for c in bench.CASES if isinstance(c, bench.AuthzCase)]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("case", choices=names)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--rate", type=int, default=500, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--raw", type=Path, help="keep py-spy's collapsed stacks in this file")
    args = parser.parse_args(argv)
    spy = shutil.which("py-spy", path=str(bench.BIN)) or shutil.which("py-spy")
    if spy is None:
        print("profile: py-spy not found (.venv/bin/pip install py-spy)", file=sys.stderr)
        return 2
    case = next(c for c in bench.CASES if c.name == args.case)
    with tempfile.TemporaryDirectory(prefix="mcp-authz-profile-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        runner = bench.Bench(work)
        runner.start_upstream(stack)
        front = case.start(runner, bench.Run(case.name), stack)
        bench.smoke(front)
        assert front.authorizer_pid is not None
        script = bench.lua_script(work / "load.lua", front.headers)
        bench.wrk(front.url, script, 1, args)  # warm up
        raw = args.raw or work / "stacks.txt"
        command = [spy, "record", "--pid", str(front.authorizer_pid), "--duration", str(args.duration)]
        command += ["--rate", str(args.rate), "--nonblocking", "--format", "raw", "--output", str(raw)]
        sampler = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        before = bench.tree_cpu_ticks(front.authorizer_pid)
        output = bench.wrk(front.url, script, args.duration, args)
        after = bench.tree_cpu_ticks(front.authorizer_pid)
        _, stderr = sampler.communicate(timeout=args.duration + 30)
        if sampler.returncode != 0 or not raw.exists():
            print(f"profile: py-spy failed: {stderr.decode(errors='replace').strip()}", file=sys.stderr)
            return 1
        rps, _, p99, requests, bad = bench.parse_wrk(output)
        per_check = (after - before) * bench.CLOCK_TICK_US / max(requests, 1)
        print(f"{case.name}: {rps:.0f} req/s, p99 {p99:.2f} ms, authorizer {per_check:.0f} µs CPU per Check")
        if bad:
            print(f"warning: {bad} bad responses or socket errors")
        print(summarize(raw, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
