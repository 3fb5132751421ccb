"""A protected MCP deployment whose dependencies a test can break: JWKS server, authorizer, load.

sample server ← Envoy (rendered by ``render envoy``) + ``mcp-authz serve`` ← client, where the one
issuer's keys come over HTTP from `jwks_server.py` (a process the test switches between modes or
stops), tokens are signed by EC keys the test holds (`Signer`), and a second process
(`loadgen.py`) can send load. Every tool call carries a unique marker (32 hex digits) as the trace id of
its ``traceparent`` and as its ``query`` argument: the authorizer's audit event for it carries the trace
id, the sample server's call log the argument, so each answer can be matched with its reason and with
what reached the MCP server.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
import yaml
from cryptography.hazmat.primitives.asymmetric import ec
from harness import Authorizer, Envoy, Factory, Proc, SampleServer, free_port
from jwks_server import JwksControl, start_jwks_server
from stack import ACCEPT, call_body

from authz.config.load import parse_config
from authz.render.envoy import render_envoy_yaml

HERE = Path(__file__).resolve().parent

POLICY: dict[str, Any] = {
    "default": "deny",
    "rules": [
        {"name": "protocol", "methods": ["initialize", "notifications/*", "ping", "server/discover", "*/list"]},
        {"name": "read-tools", "tools": ["search"], "scopes": ["tools:read"]},
        {"name": "write-tools", "tools": ["delete_repo"], "scopes": ["tools:write"]},
    ],
}


@dataclass(frozen=True)
class Signer:
    """An EC P-256 key the test signs with; its public half goes into the JWKS server's set."""

    kid: str
    private: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))

    def jwk(self) -> dict[str, Any]:
        public: dict[str, Any] = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.private.public_key()))
        return {**public, "kid": self.kid, "use": "sig", "alg": "ES256"}


def jwks(*signers: Signer) -> dict[str, Any]:
    return {"keys": [s.jwk() for s in signers]}


@dataclass
class FaultStack:
    log_dir: Path
    config_path: Path
    issuer: str
    resource: str
    jwks: JwksControl
    jwks_proc: Proc
    sample: SampleServer
    authorizer: Authorizer
    envoy: Envoy
    spec: dict[str, Any]  # the config the authorizer was started with
    retired: list[Proc] = field(default_factory=list)  # authorizer processes killed earlier (their logs count)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.envoy.listener_ports[0]}/mcp"

    # ------------------------------------------------------------------ tokens and requests

    def token(self, signer: Signer, scopes: Sequence[str] = ("tools:read",), subject: str = "fault-user") -> str:
        """A fresh RFC 9068 token (new jti: never in the token cache) signed by `signer`."""
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "aud": self.resource,
            "sub": subject,
            "client_id": "fault-client",
            "iat": now,
            "nbf": now,
            "exp": now + 600,
            "jti": uuid.uuid4().hex,
            "scope": " ".join(scopes),
        }
        headers = {"kid": signer.kid, "typ": "at+jwt"}
        return jwt.encode(claims, signer.private, algorithm="ES256", headers=headers)

    def call(self, tool: str = "search", token: str | None = None, *, timeout: float = 10.0) -> tuple[int, str]:
        """A 2026-07-28 tools/call through Envoy with a unique marker; (status, marker)."""
        marker = uuid.uuid4().hex
        headers = {
            "traceparent": f"00-{marker}-{marker[:16]}-01",
            "content-type": "application/json",
            "accept": ACCEPT,
            "mcp-protocol-version": "2026-07-28",
            "mcp-method": "tools/call",
            "mcp-name": tool,
        }
        if token is not None:
            headers["authorization"] = f"Bearer {token}"
        body = json.dumps(call_body(tool, {"query": marker}))
        response = httpx.post(self.url, content=body, headers=headers, timeout=timeout)
        return response.status_code, marker

    # ------------------------------------------------------------------ what the processes recorded

    def _log_lines(self) -> list[dict[str, Any]]:
        records = []
        for proc in [*self.retired, self.authorizer.proc]:
            for line in proc.log_text().splitlines():
                if line.startswith("{"):
                    try:
                        records.append(json.loads(line))
                    except ValueError:
                        continue
        return records

    def audit(self) -> dict[str, dict[str, Any]]:
        """Audit events by marker (the trace id of the request's `traceparent`)."""
        return {
            str(r["trace_id"]): r
            for r in self._log_lines()
            if r.get("stream") == "mcp-authz-audit" and isinstance(r.get("trace_id"), str)
        }

    def reason(self, marker: str, timeout: float = 5.0) -> tuple[int, str]:
        """(status, reason) of the authorizer's decision for the call carrying `marker`."""
        deadline = time.monotonic() + timeout
        while True:
            event = self.audit().get(marker)
            if event is not None:
                return int(event["status"]), str(event["reason"])
            if time.monotonic() > deadline:
                raise AssertionError(f"no audit event for {marker} in {self.authorizer.proc.log_path}")
            time.sleep(0.05)

    def reached_upstream(self) -> set[str]:
        """Markers of the tool calls the sample MCP server ran."""
        return {
            str(c["arguments"]["query"])
            for c in self.sample.calls()
            if isinstance(c.get("arguments"), dict) and "query" in c["arguments"]
        }

    def stats(self, timeout: float = 5.0) -> dict[str, Any]:
        """The authorizer's `stats` log line, asked for with SIGUSR1."""
        pid = self.authorizer.proc.pid
        assert pid is not None
        before = sum(1 for r in self._log_lines() if r.get("message") == "stats")
        os.kill(pid, signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while True:
            found = [r for r in self._log_lines() if r.get("message") == "stats"]
            if len(found) > before:
                return found[-1]
            if time.monotonic() > deadline:
                raise AssertionError("the authorizer logged no stats after SIGUSR1")
            time.sleep(0.05)

    # ------------------------------------------------------------------ breaking things

    def restart_jwks(self) -> None:
        """Start the JWKS server again on its port (empty key set until `jwks.set`)."""
        self.jwks_proc = start_jwks_server(self.log_dir, self.jwks.port)

    def kill_authorizer(self) -> None:
        """SIGKILL the authorizer process and wait until it is gone."""
        proc = self.authorizer.proc
        assert proc.pid is not None
        os.kill(proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while proc.alive:
            if time.monotonic() > deadline:
                raise AssertionError("the authorizer survived SIGKILL")
            time.sleep(0.02)
        self.retired.append(proc)

    def restart_authorizer(self, factory: Factory[Authorizer]) -> None:
        """Start the authorizer again on the same config (same ports); returns once it is ready."""
        self.authorizer = factory(self.config_path)

    def stop(self) -> None:
        for proc in (self.envoy.proc, self.authorizer.proc, self.sample.proc, self.jwks_proc):
            proc.stop()


def config_spec(
    *,
    issuer: str,
    jwks_uri: str,
    resource: str,
    upstream: str,
    port: int,
    issuer_fields: Mapping[str, Any] | None = None,
    server_fields: Mapping[str, Any] | None = None,
    **top: Any,
) -> dict[str, Any]:
    """The authorizer config: one JWKS-over-HTTP issuer, one server `demo`, Envoy in front."""
    return {
        "listen": {"grpc": f"127.0.0.1:{free_port()}", "discovery": f"127.0.0.1:{free_port()}"},
        "log_level": "info",
        "issuers": [
            {
                "name": "faulty",
                "issuer": issuer,
                "jwks_uri": jwks_uri,
                "algorithms": ["ES256"],
                "token_type": "at+jwt",
                "jwks_timeout": 0.5,
                "jwks_min_refetch": 0,
                "jwks_refresh": 3600,
                **(issuer_fields or {}),
            }
        ],
        "servers": [
            {
                "name": "demo",
                "resource": resource,
                "upstream": upstream,
                "scopes_supported": ["tools:read", "tools:write"],
                "policy": POLICY,
                **(server_fields or {}),
            }
        ],
        "envoy": {"listen": f"127.0.0.1:{port}", "admin_port": free_port(), "timeout_ms": 2000},
        **top,
    }


def start_fault_stack(
    log_dir: Path,
    *,
    name: str,
    signer: Signer,
    sample_server: Factory[SampleServer],
    authorizer: Factory[Authorizer],
    envoy: Factory[Envoy],
    issuer_fields: Mapping[str, Any] | None = None,
    server_fields: Mapping[str, Any] | None = None,
    **top: Any,
) -> FaultStack:
    """JWKS server serving `signer`'s key, sample server, authorizer (ready: keys loaded), Envoy."""
    jwks_port = free_port()
    jwks_proc = start_jwks_server(log_dir, jwks_port)
    control = JwksControl(jwks_port)
    control.set("ok", jwks=jwks(signer))
    sample = sample_server(json_response=True)
    port = free_port()
    resource = f"http://127.0.0.1:{port}/mcp"
    issuer = f"{control.base}/issuer"
    spec = config_spec(
        issuer=issuer,
        jwks_uri=control.jwks_uri,
        resource=resource,
        upstream=sample.upstream,
        port=port,
        issuer_fields=issuer_fields,
        server_fields=server_fields,
        **top,
    )
    config_path = log_dir / f"{name}-authz.yaml"
    text = yaml.safe_dump(spec, sort_keys=False)
    config_path.write_text(text, encoding="utf-8")
    authz = authorizer(config_path)
    proxy = envoy(render_envoy_yaml(parse_config(text, str(config_path))))
    return FaultStack(log_dir, config_path, issuer, resource, control, jwks_proc, sample, authz, proxy, spec)


def write_config(path: Path, spec: Mapping[str, Any] | str) -> None:
    """Replace the config file in one step (the authorizer also watches its mtime)."""
    text = spec if isinstance(spec, str) else yaml.safe_dump(dict(spec), sort_keys=False)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------- load


@dataclass
class Load:
    """A running loadgen.py process."""

    popen: subprocess.Popen[bytes]
    out: Path
    log: Path

    def stop(self) -> list[dict[str, Any]]:
        """End the load now (SIGTERM: requests under way finish) and return its results."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        return self.results()

    def results(self, timeout: float = 60.0) -> list[dict[str, Any]]:
        self.popen.wait(timeout)
        text = self.log.read_text(encoding="utf-8")
        assert self.popen.returncode == 0 and "LOAD DONE" in text, text[-2000:]
        return [json.loads(line) for line in self.out.read_text(encoding="utf-8").splitlines() if line]


def start_load(
    log_dir: Path, url: str, kinds: Sequence[Mapping[str, Any]], *, duration: float, concurrency: int = 8
) -> Load:
    """Start loadgen.py against `url`; returns once its first requests are under way."""
    run = uuid.uuid4().hex[:8]
    spec_path = log_dir / f"load-{run}.json"
    spec_path.write_text(
        json.dumps({"url": url, "duration": duration, "concurrency": concurrency, "run": run, "kinds": list(kinds)}),
        encoding="utf-8",
    )
    out = log_dir / f"load-{run}.jsonl"
    log = log_dir / f"load-{run}.log"
    with open(log, "wb") as sink:
        popen = subprocess.Popen(
            [sys.executable, HERE / "loadgen.py", spec_path, out], stdout=sink, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + 20
    while "LOAD STARTED" not in log.read_text(encoding="utf-8"):
        if popen.poll() is not None or time.monotonic() > deadline:
            popen.kill()
            raise AssertionError(f"loadgen did not start: {log.read_text(encoding='utf-8')[-2000:]}")
        time.sleep(0.02)
    return Load(popen, out, log)


def rss_kb(pid: int) -> int:
    """VmRSS of a process, in kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))
