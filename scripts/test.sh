#!/usr/bin/env bash
# Set up (see setup.sh) and run the whole test suite: lint, types, unit, security, end-to-end.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/mypy
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
