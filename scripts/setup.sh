#!/usr/bin/env bash
# Set up a fresh machine for mcp-authz: Python venv with the project and its test tools,
# redis-server (Debian) for the store tests, and the test identity provider (npm oidc-provider).
# Safe to run again: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
stamp=.venv/.mcp-authz-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/pip install --quiet --disable-pip-version-check -e '.[test]'
  # xds-protos carries an older copy of opentelemetry/proto/*; whichever package pip installs last wins.
  # Reinstall opentelemetry-proto so the OTLP exporters get the definitions they were built for.
  otel_proto=$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("opentelemetry-proto"))')
  .venv/bin/pip install --quiet --disable-pip-version-check --force-reinstall --no-deps "opentelemetry-proto==$otel_proto"
  touch "$stamp"
fi

if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq redis-server >/dev/null
  else sudo apt-get update -qq && sudo apt-get install -y -qq redis-server >/dev/null; fi
fi

if [ ! -d tests/idp/node_modules/oidc-provider ]; then
  (cd tests/idp && npm ci --silent --no-audit --no-fund)
fi
