#!/usr/bin/env bash
# Set up (see setup.sh) and run the whole test suite: lint, types, unit, security, end-to-end.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/mypy
# The whole suite reports coverage of the product (authz, discovery) and fails under the floor in pyproject.toml;
# a run of chosen tests (arguments given) does not.
if [ $# -eq 0 ]; then set -- --cov=authz --cov=discovery --cov-report=term:skip-covered; fi
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
