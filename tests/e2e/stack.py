"""One protected MCP deployment for end-to-end tests: sample server ← Envoy + mcp-authz ← client.

`start_stack` writes an authorizer config for

- the test identity provider (issuer `idp`, keys from its own discovery: JWKS over HTTP),
- a second, local issuer `dev` whose key lives in the log directory (`authz.identity.devkey`):
  tests mint tokens with it that the real identity provider would never issue (expired, not yet
  valid, odd claims), signed by a key the authorizer trusts,
- one MCP server `demo` at `http://127.0.0.1:<envoy port>/mcp` in front of a fresh sample server,

then starts the authorizer (ready when its JWKS are loaded) and the Envoy that
`authz.render.envoy.render_envoy_yaml` renders for exactly that config. The test modules hold
one stack per module (module-scoped fixture) and clear the sample server's logs per test.

The authorizer logs every denial (JSON, `logger: mcp_authz.decision`, with its `reason`);
`Stack.decisions()` reads them back, so a test can tell *why* a request was refused.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml
from harness import (
    Authorizer,
    Envoy,
    Factory,
    IdP,
    RawMcp,
    SampleServer,
    free_port,
)

from authz.config.load import parse_config
from authz.config.runtime import Config
from authz.identity import devkey
from authz.render.envoy import render_envoy_yaml

__all__ = ["ACCEPT", "DEFAULT_POLICY", "META", "Stack", "call_body", "challenge_params", "post_call", "start_stack"]

ACCEPT = "application/json, text/event-stream"
META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
}
"""The `params._meta` envelope of a 2026-07-28 request."""

DEFAULT_POLICY: dict[str, Any] = {
    "default": "deny",
    "rules": [
        {
            "name": "protocol",
            "methods": [
                "initialize",
                "notifications/*",
                "ping",
                "server/discover",
                "*/list",
                "resources/templates/list",
            ],
        },
        {"name": "stream-and-close", "http_methods": ["GET", "DELETE"]},
        {"name": "read-tools", "tools": ["search", "read_file", "echo_headers"], "scopes": ["tools:read"]},
        {"name": "write-tools", "tools": ["delete_repo"], "scopes": ["tools:write"]},
        {
            "name": "admin-only",
            "tools": ["admin_*"],
            "scopes": ["tools:write"],
            "when": '"admins" in jwt.groups',
        },
    ],
}
"""examples/config.yaml's rules (plus `echo_headers`, the sample server's header mirror, for readers)."""


@dataclass(frozen=True)
class Stack:
    name: str
    config: Config
    config_path: Path
    idp: IdP
    sample: SampleServer
    authorizer: Authorizer
    envoy: Envoy
    dev_key: Path
    dev_issuer: str

    @property
    def port(self) -> int:
        return self.envoy.listener_ports[0]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The MCP endpoint behind Envoy: the only thing a client is given."""
        return f"{self.base_url}/mcp"

    @property
    def resource(self) -> str:
        """The protected resource (the audience tokens must carry): the same URL."""
        return self.url

    @property
    def max_request_bytes(self) -> int:
        return self.config.envoy.max_request_bytes

    def idp_token(self, client_id: str, scope: str | None = None, *, resource: str | None = None) -> str:
        """A client-credentials access token from the real identity provider for this server."""
        return self.idp.access_token(client_id, resource or self.resource, scope=scope)

    def dev_token(
        self,
        *,
        subject: str = "dev-user",
        scopes: Sequence[str] = ("tools:read",),
        audience: str | None = None,
        lifetime: int = 600,
        extra: Mapping[str, Any] | None = None,
    ) -> str:
        """A token of the local `dev` issuer (a key the authorizer trusts, claims as the test likes)."""
        return devkey.mint(
            self.dev_key,
            issuer=self.dev_issuer,
            audience=audience or self.resource,
            subject=subject,
            scopes=list(scopes),
            lifetime=lifetime,
            extra=dict(extra or {}),
        )

    def raw(self, *, token: str | None = None, protocol_version: str = "2026-07-28", **kw: Any) -> RawMcp:
        return RawMcp(self.url, token=token, protocol_version=protocol_version, **kw)

    def clear(self) -> None:
        """Forget what the sample server saw (call log, header log)."""
        self.sample.clear_logs()

    def decisions(self) -> list[dict[str, Any]]:
        """Decision log records of the authorizer (denials at info level), oldest first."""
        records = []
        for line in self.authorizer.proc.log_text().splitlines():
            if not line.startswith("{"):
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("logger") == "mcp_authz.decision":
                records.append(record)
        return records

    def last_denial(self, after: int, timeout: float = 2.0) -> dict[str, Any]:
        """The latest denial among the decision records after the first `after` (waits for the log to flush)."""
        deadline = time.monotonic() + timeout
        while True:
            records = [r for r in self.decisions()[after:] if r.get("message") == "deny"]
            if records:
                return records[-1]
            if time.monotonic() > deadline:
                raise AssertionError(f"no denial logged by the authorizer ({self.authorizer.proc.log_path})")
            time.sleep(0.02)

    def stop(self) -> None:
        for proc in (self.envoy.proc, self.authorizer.proc, self.sample.proc):
            proc.stop()


# ---------------------------------------------------------------- raw requests


def challenge_params(value: str) -> dict[str, str]:
    """The auth-params of a `Bearer` challenge (RFC 6750 §3)."""
    scheme, _, rest = value.partition(" ")
    assert scheme == "Bearer", value
    params = {m.group(1): re.sub(r"\\(.)", r"\1", m.group(2)) for m in re.finditer(r'(\w+)="((?:[^"\\]|\\.)*)"', rest)}
    assert rest.count("=") == len(params), f"unparsed parameters in {value!r}"
    return params


def call_body(tool: str, arguments: dict[str, Any], request_id: int = 1) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": tool, "arguments": arguments, "_meta": META},
    }


def post_call(
    stack: Stack, tool: str, arguments: dict[str, Any], *, headers: list[tuple[str, str]] | None = None
) -> httpx.Response:
    """A 2026-07-28 tools/call with the routing headers the SDK would send, plus `headers`."""
    sent = [
        ("content-type", "application/json"),
        ("accept", ACCEPT),
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/call"),
        ("mcp-name", tool),
        *(headers or []),
    ]
    return httpx.post(stack.url, content=json.dumps(call_body(tool, arguments)), headers=sent, timeout=10.0)


def start_stack(
    log_dir: Path,
    *,
    name: str,
    idp: IdP,
    sample_server: Factory[SampleServer],
    authorizer: Factory[Authorizer],
    envoy: Factory[Envoy],
    server: Mapping[str, Any] | None = None,
    envoy_settings: Mapping[str, Any] | None = None,
    log_level: str = "info",
    grpc_server: str | None = None,
    port: int | None = None,
    issuer: Mapping[str, Any] | None = None,
    listen: Mapping[str, Any] | None = None,
) -> Stack:
    """Start a sample server, the authorizer and Envoy for one `demo` server.

    `server` overrides fields of the `demo` server entry (policy, origins, revisions, header_only,
    scopes_supported, ...); `envoy_settings` overrides the config's `envoy` section; `grpc_server` names
    the gRPC front (grpcio | h2corn; else the run's choice, see `components.with_grpc_server`, or the default);
    `port` is Envoy's (when the IdP must know the MCP URL first); `issuer` overrides fields of the `idp` issuer
    entry (profile, token_type, ...; a None value removes the field); `listen` adds to the `listen` section
    (e.g. `http` for `envoy_settings={"authorizer": "http"}`).
    """
    sample = sample_server()
    port = port or free_port()
    resource = f"http://127.0.0.1:{port}/mcp"
    dev_key = devkey.ensure_key(log_dir / f"{name}-dev-key.pem")
    dev_issuer = f"http://127.0.0.1:{port}/dev"
    server_spec: dict[str, Any] = {
        "name": "demo",
        "resource": resource,
        "upstream": sample.upstream,
        "resource_name": "Demo MCP server",
        "scopes_supported": ["tools:read", "tools:write"],
        "mode": "strict",
        "origins": [f"http://127.0.0.1:{port}", f"http://localhost:{port}"],
        "policy": DEFAULT_POLICY,
        **(server or {}),
    }
    spec = {
        "listen": {"grpc": f"127.0.0.1:{free_port()}", "discovery": f"127.0.0.1:{free_port()}", **(listen or {})},
        "log_level": log_level,
        "issuers": [
            {
                k: v
                for k, v in {
                    "name": "idp",
                    "issuer": idp.issuer,
                    "algorithms": ["RS256", "ES256"],
                    "token_type": "at+jwt",
                    **(issuer or {}),
                }.items()
                if v is not None
            },
            {
                "name": "dev",
                "issuer": dev_issuer,
                "local_key_file": str(dev_key),
                "algorithms": ["ES256"],
                "token_type": "at+jwt",
            },
        ],
        "servers": [server_spec],
        "envoy": {
            "listen": f"127.0.0.1:{port}",
            "admin_port": free_port(),
            "max_request_bytes": 65536,
            "timeout_ms": 2000,  # generous: two cores shared by every process of the suite
            **(envoy_settings or {}),
        },
    }
    text = yaml.safe_dump(spec, sort_keys=False)
    config_path = log_dir / f"{name}-authz.yaml"
    config_path.write_text(text, encoding="utf-8")
    config = parse_config(text, str(config_path))
    started: list[Any] = [sample]
    try:
        authz = authorizer(config_path, env={"MCP_AUTHZ_GRPC_SERVER": grpc_server} if grpc_server else None)
        started.append(authz)
        proxy = envoy(render_envoy_yaml(config))
        started.append(proxy)
    except BaseException:
        for component in started:
            component.proc.stop()
        raise
    return Stack(
        name=name,
        config=config,
        config_path=config_path,
        idp=idp,
        sample=sample,
        authorizer=authz,
        envoy=proxy,
        dev_key=dev_key,
        dev_issuer=dev_issuer,
    )


def sample_spec(key: Path, port: int, upstream: str, **top: Any) -> dict[str, Any]:
    """A config with one MCP server ``sample`` behind Envoy on ``port`` (development issuer, a read and an
    admin rule), for tests that look at what surrounds a decision (audit, telemetry); ``top`` adds sections."""
    base = f"http://127.0.0.1:{port}"
    return {
        "listen": {"grpc": f"127.0.0.1:{free_port()}", "discovery": f"127.0.0.1:{free_port()}"},
        "issuers": [{"name": "dev", "issuer": f"{base}/dev", "local_key_file": str(key)}],
        "servers": [
            {
                "name": "sample",
                "resource": f"{base}/mcp",
                "upstream": upstream,
                "scopes_supported": ["tools:read", "tools:admin"],
                "policy": {
                    "default": "deny",
                    "rules": [
                        {"name": "protocol", "methods": ["initialize", "ping", "notifications/*", "*/list"]},
                        {"name": "read", "tools": ["search"], "scopes": ["tools:read"]},
                        {"name": "admin", "tools": ["delete_repo"], "scopes": ["tools:admin"]},
                    ],
                },
            }
        ],
        **top,
        "envoy": {"listen": f"127.0.0.1:{port}", "admin_port": free_port()},
    }
