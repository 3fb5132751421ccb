#!/usr/bin/env bash
# Set up (see setup.sh) and run the local stack on embedded defaults:
# Envoy on 127.0.0.1:8080 routing /mcp through the authorizer to a sample MCP server.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/mcp-authz dev up -c examples/config.yaml "$@"
