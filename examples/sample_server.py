"""A sample MCP server to put behind Envoy + mcp-authz.

    python examples/sample_server.py --host 127.0.0.1 --port 8000

Serves streamable HTTP on `/mcp`, for both protocol eras on the same endpoint: the stateless
2026-07-28 revision (requests carrying `MCP-Protocol-Version: 2026-07-28`, `server/discover`) and
the session-based revisions (2025-06-18, 2025-11-25: `initialize`, `Mcp-Session-Id`). The `mcp`
SDK routes on the `MCP-Protocol-Version` header; this file only builds the server.

It does no authorization of its own: that is the point. For tests it records what reached it:
- `SAMPLE_CALL_LOG`: a file that gets one JSON line per tool call, `{"tool": name, "arguments": {...}}`
  (and `{"prompt": ...}` / `{"resource": uri}` lines for prompts rendered and resources read).
- `SAMPLE_HEADER_LOG`: a file that gets one JSON line per HTTP request,
  `{"method": ..., "path": ..., "headers": {lower-case name: value}}` (repeated headers joined by ", ").
- `SAMPLE_COUNTDOWN_TOOL=1` adds a tool `countdown(count)` that sends `count` progress notifications
  before its answer (a long SSE stream).

The SDK's DNS-rebinding (Host/Origin) checks are off: requests arrive through a proxy with the
proxy's Host, and Origin checks are the proxy's job here.

`--auth-issuer URL` turns on the SDK's own in-process OAuth resource server instead (RFC 9728
metadata, 401 challenges, RFC 9068 JWT access tokens from that issuer checked here with PyJWT),
which is what users run when there is no authorizer in front: the baseline to compare with.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping
from typing import Any

import httpx2
import jwt
import uvicorn
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from mcp_types import ListToolsResult, PaginatedRequestParams
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["HeaderLogMiddleware", "build_app", "build_server", "main"]


def _append_json_line(path: str | None, record: Mapping[str, Any]) -> None:
    if not path:
        return
    line = json.dumps(record, separators=(",", ":"), sort_keys=True) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)


def _log_call(record: Mapping[str, Any]) -> None:
    _append_json_line(os.environ.get("SAMPLE_CALL_LOG"), record)


class HeaderLogMiddleware:
    """ASGI middleware: append every HTTP request's method, path and headers to a JSON-lines file."""

    def __init__(self, app: ASGIApp, path: str | None) -> None:
        self._app = app
        self._path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self._path:
            headers: dict[str, str] = {}
            for raw_name, raw_value in scope["headers"]:
                name = raw_name.decode("latin-1").lower()
                value = raw_value.decode("latin-1")
                headers[name] = f"{headers[name]}, {value}" if name in headers else value
            _append_json_line(self._path, {"method": scope["method"], "path": scope["path"], "headers": headers})
        await self._app(scope, receive, send)


class JwtAccessTokenVerifier:
    """The SDK's `TokenVerifier` for RFC 9068 JWT access tokens of one issuer and one resource."""

    def __init__(self, issuer: str, resource: str) -> None:
        self._issuer = issuer
        self._resource = resource
        self._keys: dict[str, jwt.PyJWK] = {}

    async def _refresh_keys(self) -> None:
        async with httpx2.AsyncClient(timeout=5.0) as http:
            meta = (await http.get(f"{self._issuer}/.well-known/openid-configuration")).json()
            jwks = (await http.get(meta["jwks_uri"])).json()
        self._keys = {k.key_id: k for k in jwt.PyJWKSet.from_dict(jwks).keys if k.key_id}

    async def verify_token(self, token: str) -> AccessToken | None:
        try:
            header = jwt.get_unverified_header(token)
            if str(header.get("typ", "")).lower() not in ("at+jwt", "application/at+jwt"):
                return None
            kid = str(header.get("kid", ""))
            if kid not in self._keys:
                await self._refresh_keys()
            claims = jwt.decode(
                token,
                self._keys[kid],
                algorithms=["RS256", "PS256", "ES256"],
                audience=self._resource,
                issuer=self._issuer,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        except (jwt.PyJWTError, KeyError, ValueError, httpx2.HTTPError):
            return None
        return AccessToken(
            token=token,
            client_id=str(claims.get("client_id", "")),
            scopes=str(claims.get("scope", "")).split(),
            expires_at=int(claims["exp"]),
            resource=self._resource,
            subject=str(claims["sub"]),
            claims=claims,
        )


class SampleServer(MCPServer):
    """MCPServer with optional tools/list pagination (`page_size` tools per page, cursor = offset)."""

    def __init__(
        self,
        *,
        page_size: int | None = None,
        auth: AuthSettings | None = None,
        token_verifier: JwtAccessTokenVerifier | None = None,
    ) -> None:
        super().__init__(
            "sample-mcp-server",
            version="1.0.0",
            instructions="A sample server for mcp-authz tests.",
            log_level="WARNING",
            auth=auth,
            token_verifier=token_verifier,
        )
        self._page_size = page_size

    async def _handle_list_tools(self, ctx: Any, params: PaginatedRequestParams | None) -> ListToolsResult:
        tools = await self.list_tools()
        if not self._page_size:
            return ListToolsResult(tools=tools)
        start = int(params.cursor) if params is not None and params.cursor else 0
        end = start + self._page_size
        return ListToolsResult(tools=tools[start:end], next_cursor=str(end) if end < len(tools) else None)


_FILES = {
    "docs/readme.md": "# Sample\nA sample repository.\n",
    "src/main.py": "print('hello')\n",
}


def build_server(
    *,
    page_size: int | None = None,
    auth_issuer: str | None = None,
    auth_resource: str | None = None,
    auth_scopes: list[str] | None = None,
) -> MCPServer:
    """The sample server: tools, prompts and resources with a call log (and optional in-process auth)."""
    auth: AuthSettings | None = None
    verifier: JwtAccessTokenVerifier | None = None
    if auth_issuer is not None:
        if auth_resource is None:
            raise ValueError("auth_issuer needs auth_resource")
        auth = AuthSettings(
            issuer_url=auth_issuer,  # type: ignore[arg-type]
            resource_server_url=auth_resource,  # type: ignore[arg-type]
            required_scopes=auth_scopes or None,
            validate_token_resource=True,
        )
        verifier = JwtAccessTokenVerifier(auth_issuer, auth_resource)
    mcp = SampleServer(page_size=page_size, auth=auth, token_verifier=verifier)

    @mcp.tool(description="Search the sample repository.")
    def search(query: str) -> str:
        _log_call({"tool": "search", "arguments": {"query": query}})
        hits = [path for path, text in _FILES.items() if query.lower() in (path + text).lower()]
        return json.dumps(hits)

    @mcp.tool(description="Read a file of the sample repository.")
    def read_file(path: str) -> str:
        _log_call({"tool": "read_file", "arguments": {"path": path}})
        return _FILES.get(path, f"no such file: {path}")

    @mcp.tool(description="Delete a repository (destructive).")
    def delete_repo(repo: str) -> str:
        _log_call({"tool": "delete_repo", "arguments": {"repo": repo}})
        return f"deleted {repo}"

    @mcp.tool(description="Reset the server (administrators only).")
    def admin_reset() -> str:
        _log_call({"tool": "admin_reset", "arguments": {}})
        return "reset done"

    @mcp.tool(description="Return the HTTP request headers this server received for this call.")
    def echo_headers(ctx: Context) -> dict[str, str]:
        _log_call({"tool": "echo_headers", "arguments": {}})
        return {k.lower(): v for k, v in (ctx.headers or {}).items()}

    if os.environ.get("SAMPLE_COUNTDOWN_TOOL"):  # opt-in: the default tool set stays as tests know it

        @mcp.tool(description="Send `count` progress notifications, then answer (a long SSE stream).")
        async def countdown(count: int, ctx: Context) -> str:
            _log_call({"tool": "countdown", "arguments": {"count": count}})
            for i in range(count):
                await ctx.report_progress(i + 1, count, f"step {i + 1} of {count}")
            return f"counted {count}"

    @mcp.prompt(description="Summarize a text.")
    def summarize(text: str) -> str:
        _log_call({"prompt": "summarize", "arguments": {"text": text}})
        return f"Summarize this text:\n{text}"

    @mcp.prompt(description="An administrators' prompt.")
    def admin_prompt() -> str:
        _log_call({"prompt": "admin_prompt", "arguments": {}})
        return "You are the administrator."

    @mcp.resource("file:///docs/readme", name="readme", mime_type="text/markdown")
    def readme() -> str:
        _log_call({"resource": "file:///docs/readme"})
        return _FILES["docs/readme.md"]

    @mcp.resource("file:///secret/keys", name="secret-keys", mime_type="text/plain")
    def secret_keys() -> str:
        _log_call({"resource": "file:///secret/keys"})
        return "not-a-real-secret"

    @mcp.resource("file:///docs/{name}.md", name="doc", mime_type="text/markdown")
    def doc(name: str) -> str:
        _log_call({"resource": f"file:///docs/{name}.md"})
        return _FILES.get(f"docs/{name}.md", "")

    @mcp.resource("file:///secret/{name}.key", name="secret-key", mime_type="text/plain")
    def secret_key(name: str) -> str:
        _log_call({"resource": f"file:///secret/{name}.key"})
        return "not-a-real-secret"

    return mcp


def build_app(
    *,
    page_size: int | None = None,
    json_response: bool = False,
    auth_issuer: str | None = None,
    auth_resource: str | None = None,
    auth_scopes: list[str] | None = None,
) -> ASGIApp:
    """The ASGI app: the SDK's streamable-HTTP app on /mcp, wrapped in the header log."""
    mcp = build_server(
        page_size=page_size, auth_issuer=auth_issuer, auth_resource=auth_resource, auth_scopes=auth_scopes
    )
    app = mcp.streamable_http_app(
        streamable_http_path="/mcp",
        json_response=json_response,
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )
    return HeaderLogMiddleware(app, os.environ.get("SAMPLE_HEADER_LOG"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--page-size", type=int, default=None, help="tools per tools/list page (default: all)")
    parser.add_argument("--json-response", action="store_true", help="answer POSTs with JSON instead of SSE")
    parser.add_argument("--auth-issuer", default=None, help="turn on the SDK's in-process bearer auth for this issuer")
    parser.add_argument("--auth-resource", default=None, help="this server's resource URL (default: its /mcp URL)")
    parser.add_argument("--auth-scopes", default="", help="space-separated scopes every request needs")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    app = build_app(
        page_size=args.page_size,
        json_response=args.json_response,
        auth_issuer=args.auth_issuer,
        auth_resource=args.auth_resource or f"http://{args.host}:{args.port}/mcp",
        auth_scopes=args.auth_scopes.split() or None,
    )
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=False,
        timeout_graceful_shutdown=2,
        lifespan="on",
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
