"""Clients for end-to-end tests: the user at the identity provider's login and consent forms (`LoginDriver`),
the `mcp` SDK's OAuth providers wired to the test IdP, `mcp_client`, and `RawMcp` for hand-made JSON-RPC."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import itertools
import json
import secrets
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any, Final
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import httpx
import httpx2
from components import M2M_CLIENTS, IdP
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

DEFAULT_REDIRECT_URI: Final = "http://127.0.0.1:33418/callback"
"""Redirect URI for auth-code clients. Nothing listens there: `LoginDriver` stops at the redirect."""

MODE_AUTO: Final = "auto"
"""`mcp.Client(mode=...)`: probe `server/discover` (2026-07-28), fall back to `initialize`."""
MODE_2026_07_28: Final = "2026-07-28"
"""`mcp.Client(mode=...)`: speak 2026-07-28 at once, no probe."""
MODE_2025_11_25: Final = "legacy"
"""`mcp.Client(mode=...)`: the `initialize` handshake; the SDK always offers 2025-11-25 (for 2025-06-18 use RawMcp)."""


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
