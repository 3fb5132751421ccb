"""`policy explain` and config reload, in process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from authz.app import Authorizer
from authz.cli import main
from authz.config.load import load_config
from authz.identity import devkey
from authz.model import HttpRequest

CONFIG = """
listen: {{grpc: "127.0.0.1:0", discovery: ""}}
issuers:
  - {{name: dev, issuer: "https://dev.example", local_key_file: "{key}", algorithms: [ES256]}}
servers:
  - name: demo
    resource: https://mcp.example/mcp
    policy:
      rules:
        - {{name: read, tools: [search], scopes: [tools:read]}}
        - {{name: write, tools: [{write_tool}], scopes: [tools:write]}}
"""


def _write(path: Path, key: Path, write_tool: str = "delete_repo") -> None:
    path.write_text(CONFIG.format(key=key, write_tool=write_tool), encoding="utf-8")


def _token(key: Path, scopes: list[str]) -> str:
    return devkey.mint(
        key, issuer="https://dev.example", audience="https://mcp.example/mcp", subject="alice", scopes=scopes
    )


def _call(tool: str, token: str) -> HttpRequest:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool}}
    headers = {"content-type": "application/json", "authorization": f"Bearer {token}"}
    return HttpRequest("POST", "/mcp", headers, json.dumps(body).encode())


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    key = devkey.ensure_key(tmp_path / "k.pem")
    config = tmp_path / "config.yaml"
    _write(config, key)
    return config, key


def test_explain_prints_decision_and_rule(
    files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, key = files
    request = tmp_path / "req.json"
    request.write_text(
        json.dumps({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "delete_repo"}})
    )
    code = main(
        ["policy", "explain", "-c", str(config), "--token", _token(key, ["tools:read"]), "--request", str(request)]
    )
    out = json.loads(capsys.readouterr().out)
    assert code == 1
    assert (out["decision"], out["status"], out["reason"], out["rule"]) == ("deny", 403, "insufficient_scope", "write")
    code = main(
        ["policy", "explain", "-c", str(config), "--token", _token(key, ["tools:write"]), "--request", str(request)]
    )
    out = json.loads(capsys.readouterr().out)
    assert (code, out["decision"], out["rule"]) == (0, "allow", "write")


async def test_reload_swaps_valid_config_and_refuses_invalid(files: tuple[Path, Path]) -> None:
    config, key = files
    authorizer = Authorizer(load_config(config), str(config))
    token = _token(key, ["tools:read", "tools:write"])
    assert (await authorizer.checker.check(_call("delete_repo", token))).allowed
    assert not (await authorizer.checker.check(_call("drop_db", token))).allowed

    _write(config, key, write_tool="drop_db")
    assert await authorizer.reload()
    assert (await authorizer.checker.check(_call("drop_db", token))).allowed
    assert not (await authorizer.checker.check(_call("delete_repo", token))).allowed

    before = authorizer.checker
    config.write_text("servers: [not: valid", encoding="utf-8")
    assert not await authorizer.reload()
    assert authorizer.checker is before
    assert (await authorizer.checker.check(_call("drop_db", token))).allowed
    await authorizer.stop()


async def test_policy_explain_and_the_admin_explain_answer_alike(tmp_path: Path) -> None:
    """One implementation and one redaction rule: the same request file gives the same answer from the
    CLI (config alone) and the admin API (live Checker): identity headers shown, credentials redacted."""
    from google.protobuf import json_format
    from support import dev_stack, server_spec, tool_call

    from authz.admin._pb import admin_pb2
    from authz.admin.service import AdminService
    from authz.explain.offline import REDACTED, explain_file
    from authz.explain.request import from_file
    from authz.store.memory import MemoryStore

    server = server_spec(credentials={"header": "X-Api-Key", "value_secret": "integration-secret-value"})
    stack = dev_stack(tmp_path, [server])
    spec = {"body": tool_call("search"), "headers": {"Mcp-Protocol-Version": "2025-11-25"}, "server": "mcp"}
    token = stack.token(scopes=["tools:read"])
    offline = await explain_file(stack.config, spec, token)

    given = from_file(spec)
    request = admin_pb2.ExplainRequest(
        server=given.server, method=given.method, path=given.path, headers=given.headers, body=given.body, token=token
    )
    reply = await AdminService(lambda: stack.checker, MemoryStore).Explain(request, None)  # type: ignore[arg-type]
    live = json_format.MessageToDict(reply, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    assert live == offline
    assert offline["decision"] == "allow"
    assert offline["headers"]["x-mcp-subject"] == "alice" and offline["headers"]["x-api-key"] == REDACTED
