#!/usr/bin/env bash
# Set up a fresh machine for mcp-authz: Python venv with the project and its test tools,
# redis-server and redis-sentinel (Debian) for the store tests, and the test identity provider (npm oidc-provider).
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

if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-sentinel >/dev/null 2>&1; then
  # redis-sentinel: the Sentinel topology of the store's fail-over tests (redis-cli builds the Cluster)
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq redis-server redis-sentinel >/dev/null
  else sudo apt-get update -qq && sudo apt-get install -y -qq redis-server redis-sentinel >/dev/null; fi
fi

if [ ! -d tests/idp/node_modules/oidc-provider ]; then
  (cd tests/idp && npm ci --silent --no-audit --no-fund)
fi

# Manifest schemas: Istio and Gateway API CRD schemas (npm), read by tests/schemas/validate.mjs.
if [ ! -d tests/schemas/node_modules/@kubernetes-models/istio ]; then
  (cd tests/schemas && npm ci --silent --no-audit --no-fund)
fi

# Helm for `helm lint` / `helm template` in the suite (tests/helm/helm_run.py): PyPI helm-sdkpy embeds Helm and
# needs Python >= 3.12, so it gets a small venv of its own from a python3.12 on PATH or in pyenv's versions.
# Without one the Helm chart tests fail, saying why.
if [ ! -x .venv-helm/bin/python ]; then
  # A pyenv shim named python3.12 can exist and still fail ("command not found" for the global version),
  # so each candidate must run before it is used.
  py312=""
  for candidate in "$(command -v python3.12 || true)" \
      "$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")"/versions/3.1[2-9]*/bin/python; do
    if [ -n "$candidate" ] && [ -x "$candidate" ] \
        && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1; then
      py312=$candidate && break
    fi
  done
  if [ -n "$py312" ]; then
    "$py312" -m venv .venv-helm
    .venv-helm/bin/pip install --quiet --disable-pip-version-check 'helm-sdkpy==0.1.32'
  else
    echo "setup: no Python >= 3.12 found: the Helm chart tests (tests/unit/render/test_helm_chart.py) will fail" >&2
  fi
fi
