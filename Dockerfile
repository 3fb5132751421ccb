# mcp-authz: the authorizer (gRPC and HTTP ext_authz) and the discovery service in one small image.
# Build: docker build -t mcp-authz:0.1.0 .   Run: mount the config at /etc/mcp-authz/config.yaml.

# ---- build: wheels for the project and every dependency, installed into a virtual environment
FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml setup.py MANIFEST.in README.md ./
COPY proto ./proto
COPY authz ./authz
COPY discovery ./discovery
RUN pip wheel --wheel-dir /wheels . \
    && python -m venv /opt/mcp-authz \
    && /opt/mcp-authz/bin/pip install --no-index --find-links /wheels mcp-authz==0.1.0 \
    && /opt/mcp-authz/bin/pip install --no-index --find-links /wheels --force-reinstall --no-deps opentelemetry-proto
# (the last line: xds-protos carries an older copy of opentelemetry/proto/*; the OTLP exporters need theirs)

# ---- runtime: the virtual environment only; no compiler, no wheels, no shell needed (exec-form entrypoint)
FROM python:3.11-slim-bookworm
ENV PATH=/opt/mcp-authz/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /opt/mcp-authz /opt/mcp-authz
USER 10001:10001
# gRPC ext_authz, discovery (/healthz, /readyz, /.well-known/*), HTTP ext_authz
EXPOSE 9191 9192 9193
ENTRYPOINT ["mcp-authz", "serve", "-c", "/etc/mcp-authz/config.yaml"]
