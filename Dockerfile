# mcp-authz: the authorizer (gRPC and HTTP ext_authz) and the discovery service in one small image.
# Build: docker build -t mcp-authz:$(mcp-authz --version | cut -d' ' -f2) .   (the tag the renderers default to)
# Run:   docker run -v $PWD/config.yaml:/etc/mcp-authz/config.yaml:ro --read-only -p 9191-9193:9191-9193 mcp-authz:TAG
# See docs/install.md.

# ---- build: scripts/build-wheels.sh (the test suite replays the same script): the wheel, every dependency's
#      wheel at its pinned version (constraints.txt), a virtual environment installed from those wheels only
FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml setup.py MANIFEST.in README.md LICENSE constraints.txt ./
COPY proto ./proto
COPY authz ./authz
COPY discovery ./discovery
COPY scripts/build-wheels.sh ./scripts/
RUN bash scripts/build-wheels.sh /opt/mcp-authz /wheels

# ---- runtime: the virtual environment only; nothing runs a shell (exec form), nothing is written outside /tmp
FROM python:3.11-slim-bookworm
# MCP_AUTHZ_LISTEN_HOST: the host of listen.* when the config leaves them out (a container is reached from outside)
ENV PATH=/opt/mcp-authz/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MCP_AUTHZ_LISTEN_HOST=0.0.0.0
COPY --from=build /opt/mcp-authz /opt/mcp-authz
USER 10001:10001
# gRPC ext_authz, discovery (/healthz, /readyz, /.well-known/*), HTTP ext_authz
EXPOSE 9191 9192 9193
# GET /readyz on listen.discovery's default port, without curl
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 CMD ["mcp-authz", "health"]
ENTRYPOINT ["mcp-authz", "serve", "-c", "/etc/mcp-authz/config.yaml"]
