#!/usr/bin/env bash
# The image's build stage (Dockerfile), replayed as it is by the test suite (tests/packaging/test_wheel.py):
#   1. the build tools at their pinned versions (constraints.txt) in a throwaway venv;
#   2. the project's wheel with `python -m build` (setup.py compiles proto/ into authz/admin/_pb);
#   3. a wheel of every runtime dependency at its pinned version;
#   4. a virtual environment at PREFIX installed from those wheels only, refused if a version is not pinned
#      (no pip in it: $PYTHON's own pip, 22.3 or later, installs into both venvs with --python).
# Usage: bash scripts/build-wheels.sh PREFIX [WHEELS_DIR]   ($PYTHON: the interpreter, default python3)
# It builds in the directory it is in (the Docker build context): run it on a copy of the sources.
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=$1
wheels=${2:-$(mktemp -d)}
python=${PYTHON:-python3}
lock=$PWD/constraints.txt
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

pip() { "$python" -m pip --disable-pip-version-check "$@"; }

"$python" -m venv --without-pip "$work/tools"
pip --python "$work/tools/bin/python" install --quiet -c "$lock" build setuptools grpcio-tools
"$work/tools/bin/python" -m build --wheel --no-isolation --outdir "$wheels" .
pip wheel --quiet -c "$lock" --wheel-dir "$wheels" "$wheels"/mcp_authz-*.whl

"$python" -m venv --without-pip "$prefix"
pip --python "$prefix/bin/python" install --quiet --no-index --find-links "$wheels" -c "$lock" mcp-authz
# xds-protos carries an older copy of opentelemetry/proto/*; the OTLP exporters need their own.
pip --python "$prefix/bin/python" install --quiet --no-index --find-links "$wheels" -c "$lock" --force-reinstall \
  --no-deps opentelemetry-proto
"$prefix/bin/python" - "$lock" <<'PY'
"""Every installed distribution is pinned, at the pinned version (else: run scripts/lock.sh)."""
import importlib.metadata
import re
import sys


def key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


pins = {}
for line in open(sys.argv[1], encoding="utf-8"):
    name, sep, version = line.split("#")[0].strip().partition("==")
    if sep:
        pins[key(name)] = version
unpinned = sorted(
    f"{dist.metadata['Name']}=={dist.version}"
    for dist in importlib.metadata.distributions()
    if key(dist.metadata["Name"]) not in {"pip", "setuptools", "mcp-authz"}
    and pins.get(key(dist.metadata["Name"])) != dist.version
)
if unpinned:
    sys.exit("build-wheels.sh: not pinned by constraints.txt (run scripts/lock.sh): " + " ".join(unpinned))
PY
"$prefix/bin/mcp-authz" --version
