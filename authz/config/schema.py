"""The config file's schema: pydantic models, every field with its description and default.

Validation that needs only the file lives here (types, bounds, references between sections); turning a
validated file into what the Check reads is ``authz.config.compile``. The configuration reference
(docs/configuration.md) and the JSON Schema are generated from these models (``authz.config.reference``).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Literal, get_args
from urllib.parse import parse_qs, unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from authz.config.profiles import PROFILES, TENANT, ProfileName
from authz.config.runtime import DEFAULT_MAX_INFLIGHT, HostPort
from authz.contract import ENVOY_HEADER_PREFIX
from authz.model import KNOWN_REVISIONS

ASYMMETRIC_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA")
Algorithm = Literal["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"]


class _Spec(BaseModel):
    """Unknown keys are refused; a validated section is immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- schema: listen addresses


class ListenSpec(_Spec):
    grpc: str = Field(
        "127.0.0.1:9191",
        description="gRPC ext_authz (envoy.service.auth.v3) and grpc.health.v1. Left out: port 9191 on "
        "`$MCP_AUTHZ_LISTEN_HOST` if that is set (the image sets 0.0.0.0), else on 127.0.0.1.",
    )
    http: str = Field(
        "",
        description="HTTP ext_authz (Envoy `http_service`, Istio `envoyExtAuthzHttp`): the same Check, "
        "a faster transport. Empty string disables it.",
    )
    discovery: str = Field(
        "127.0.0.1:9192",
        description="HTTP: RFC 9728 / RFC 8414 documents, /healthz, /readyz. Empty string disables it. Left out: "
        "port 9192 on `$MCP_AUTHZ_LISTEN_HOST` if that is set (the image sets 0.0.0.0), else on 127.0.0.1.",
    )
    http_shared_secret: SecretStr | None = Field(
        None,
        description="A secret Envoy sends in `x-mcp-authz-secret` on every HTTP authorization request (the "
        "rendered Envoy reads it from `$MCP_AUTHZ_HTTP_SHARED_SECRET`); a request without it is refused 403 "
        "before anything else (compared in constant time). Write it as `${MCP_AUTHZ_HTTP_SHARED_SECRET}`; at least "
        "16 characters. Required when `http` listens beyond loopback, unless `http_mesh_mtls`.",
    )
    http_mesh_mtls: bool = Field(
        False,
        description="The `http` port is reached only through a service mesh sidecar that enforces mutual TLS and "
        "admits only the mesh's Envoys (what `render istio` and the Helm chart set up: STRICT PeerAuthentication "
        "and an ALLOW AuthorizationPolicy by principals); lets `http` listen beyond loopback without "
        "`http_shared_secret`.",
    )
    grpc_server: Literal["grpcio", "h2corn"] = Field(
        "grpcio",
        description="Which server serves `grpc` (docs/grpc-server.md): `grpcio`, or `h2corn` (a Rust HTTP/2 "
        "server with a small gRPC layer of our own, several times less CPU per Check). `$MCP_AUTHZ_GRPC_SERVER` "
        "overrides it.",
    )
    max_inflight: int = Field(
        DEFAULT_MAX_INFLIGHT,
        ge=1,
        le=100_000,
        description="Checks in progress at once on each front (`grpc`, `http`), counted from the request's "
        "arrival to its answer. Beyond it a Check is refused at once with a retryable 503 instead of queueing past "
        "Envoy's timeout (docs/operations.md, admission control). Changes on restart.",
    )

    @field_validator("http", "discovery")
    @classmethod
    def _host_port(cls, value: str) -> str:
        return _host_port(value)

    @field_validator("grpc")
    @classmethod
    def _grpc(cls, value: str) -> str:
        HostPort.parse(value)
        return value

    @model_validator(mode="after")
    def _http_callers(self) -> ListenSpec:
        """Whoever reaches the HTTP front can make up the Envoy-set headers: beyond loopback, only Envoy may."""
        secret = self.http_shared_secret
        if secret is not None and len(secret.get_secret_value()) < 16:
            raise ValueError("http_shared_secret: at least 16 characters")
        if self.http and not HostPort.parse(self.http).is_loopback and secret is None and not self.http_mesh_mtls:
            raise ValueError(
                f"http: {self.http} is reachable beyond loopback, where anyone could forge the headers Envoy sets "
                "and get decisions: set http_shared_secret (Envoy sends it) or, behind a mesh sidecar that "
                "enforces mTLS and admits only Envoys, http_mesh_mtls: true; or listen on 127.0.0.1"
            )
        return self


def _host_port(value: str) -> str:
    """A ``host:port`` address or the empty string (off)."""
    if value:
        HostPort.parse(value)
    return value


# ---------------------------------------------------------------- schema: issuers (how to verify)


class IssuerSpec(_Spec):
    name: str = Field(description="Name that servers[].issuers refers to.")
    issuer: str = Field(description="Exact value of the `iss` claim (RFC 8414 issuer identifier).")
    jwks_uri: str | None = Field(
        None, description="JWKS URL. If absent, found through RFC 8414 then OIDC discovery on `issuer`."
    )
    local_key_file: str | None = Field(
        None,
        description="Development only: a PEM private key whose public half is this issuer's JWKS "
        "(served by the discovery service at /jwks/<name>.json; `mcp-authz token` signs with it).",
    )
    algorithms: list[Algorithm] = Field(
        ["RS256", "PS256", "ES256", "EdDSA"],
        description="Allowed JWS algorithms (RFC 8725 §3.1). `none` and HMAC are never accepted.",
    )
    audiences: list[str] = Field(
        [], description="Extra `aud` values accepted besides the MCP server's resource URL (RFC 8707)."
    )
    clock_skew: int = Field(30, ge=0, le=300, description="Seconds of leeway for exp/nbf/iat.")
    required_claims: list[str] = Field(["exp", "iss", "aud", "sub"], description="Claims a token must carry.")
    token_type: str | None = Field(
        None, description="Required JOSE `typ`, e.g. `at+jwt` for RFC 9068 access tokens. Unset: not checked."
    )
    max_token_bytes: int = Field(8000, ge=256, le=65536, description="Longer tokens are refused unparsed.")
    max_lifetime: int = Field(86400, ge=60, description="Seconds: tokens whose exp is further ahead are refused.")
    jwks_refresh: int = Field(300, ge=10, description="Seconds between background JWKS refreshes.")
    jwks_min_refetch: int = Field(
        10, ge=0, description="Seconds: an unknown `kid` triggers a refetch at most this often."
    )
    jwks_timeout: float = Field(3.0, gt=0, le=30, description="Seconds for one JWKS or metadata fetch.")
    require_jti: bool = Field(False, description="Refuse tokens without `jti` (needed for revocation by id).")
    require_exp: bool = Field(
        False,
        description="Refuse tokens without `exp` (a revoked `jti` is kept only until its `exp`), even when "
        "required_claims leaves `exp` out.",
    )
    profile: ProfileName = Field(
        "generic",
        description="The identity provider's habits (docs/idp/): which claims carry scopes, the client id and "
        "the token id, the `typ` its access tokens carry (checked unless `token_type` says otherwise), and for "
        "`entra` the tenant claim of a multi-tenant issuer. Settings written here win over the profile; "
        "`mcp-authz config check` prints what the profile sets.",
    )
    scope_claims: list[str] | None = Field(
        None,
        description="Claims whose values are scopes (a space-separated string or an array), merged. "
        "Unset: the profile's (`scope`, `scp` for generic).",
    )
    scope_prefix: str | None = Field(
        None,
        description="How clients must ask this IdP for a scope: `<prefix><scope>` in challenges and "
        "`scopes_supported`, while tokens and policy use the short name (Entra ID: the Application ID URI and "
        "`/`; `{resource}` stands for the MCP server's resource URL, the entra profile's default). Unset: the "
        "profile's (none but entra).",
    )
    tenants: list[str] = Field(
        [],
        description="A multi-tenant issuer (`issuer` holding `{tenantid}`, e.g. "
        "`https://login.microsoftonline.com/{tenantid}/v2.0`): the tenant ids accepted; each token's tenant "
        "claim (`tid`) must name the tenant of its `iss`. Needs `jwks_uri` (the keys all tenants share).",
    )

    @model_validator(mode="after")
    def _one_key_source(self) -> IssuerSpec:
        if self.jwks_uri and self.local_key_file:
            raise ValueError("set jwks_uri or local_key_file, not both")
        if not self.algorithms:
            raise ValueError("algorithms: at least one algorithm is required")
        return self

    @model_validator(mode="after")
    def _tenants(self) -> IssuerSpec:
        templated = TENANT in self.issuer
        if templated and not self.tenants:
            raise ValueError(f"tenants: an issuer with {TENANT} needs the tenant ids it accepts")
        if self.tenants and not templated:
            raise ValueError(f"tenants: only for an issuer holding {TENANT} (e.g. .../{TENANT}/v2.0)")
        if templated and not self.jwks_uri:
            raise ValueError(f"jwks_uri: an issuer with {TENANT} has no single metadata document; name the keys")
        if templated and PROFILES[self.profile].tenant_claim is None:
            raise ValueError(f"profile: {self.profile!r} has no tenant claim; a {TENANT} issuer needs profile entra")
        for tenant in self.tenants:
            if not re.fullmatch(r"[A-Za-z0-9._-]+", tenant):
                raise ValueError(f"tenants: {tenant!r} is not a tenant id (letters, digits, '.', '_', '-')")
        return self

    @field_validator("issuer", "jwks_uri")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in ("https", "http"):
            raise ValueError(f"expected an http(s) URL, got {value!r}")
        return value


# ---------------------------------------------------------------- schema: policy (who may do what)


class RuleSpec(_Spec):
    name: str = Field(description="Shown in logs, audit events and `policy explain`.")
    methods: list[str] | None = Field(
        None,
        description="JSON-RPC methods (globs). Default: `tools/call` if `tools` is set, "
        "`prompts/get` if `prompts`, `resources/*` if `resources`, else every method.",
    )
    tools: list[str] | None = Field(None, description="Tool names (globs) for tools/call.")
    resources: list[str] | None = Field(None, description="Resource URIs (globs) for resources/read|subscribe.")
    prompts: list[str] | None = Field(None, description="Prompt names (globs) for prompts/get.")
    http_methods: list[str] | None = Field(
        None, description="HTTP methods (GET = SSE stream, DELETE = end session). Default: any."
    )
    scopes: list[str] = Field([], description="Scopes the token must all have; else 403 insufficient_scope.")
    any_scopes: list[str] = Field([], description="Scopes of which the token needs at least one.")
    when: str | None = Field(None, description="CEL over `jwt`, `mcp`, `request`; false → 403.")
    effect: Literal["allow", "deny"] = Field("allow", description="What a matching rule decides.")
    approval: bool = Field(
        False, description="A call this rule allows waits for a person's approval (see `approvals`)."
    )


class PolicySpec(_Spec):
    default: Literal["allow", "deny"] = Field("deny", description="Decision when no rule matches.")
    rules: list[RuleSpec] = Field([], description="Ordered; the first rule that matches decides.")


# ---------------------------------------------------------------- schema: MCP servers (what is protected)


class IdentityHeadersSpec(_Spec):
    subject: str = Field("x-mcp-subject", description="Header carrying the caller's `sub` upstream.")
    client_id: str = Field("x-mcp-client-id", description="Header carrying `client_id` (or `azp`).")
    scopes: str = Field("x-mcp-scopes", description="Header carrying the granted scopes, space-separated.")
    issuer: str = Field("x-mcp-issuer", description="Header carrying the token's issuer.")


PROXY_PRESETS: dict[str, tuple[str, str | None, str | None]] = {
    # preset: (user header, email header, groups header)
    "oauth2-proxy": ("X-Auth-Request-User", "X-Auth-Request-Email", "X-Auth-Request-Groups"),
    "authelia": ("Remote-User", "Remote-Email", "Remote-Groups"),
    "cloudflare": ("Cf-Access-Authenticated-User-Email", "Cf-Access-Authenticated-User-Email", None),
}


class CloudflareSpec(_Spec):
    team_domain: str = Field(
        description="The Zero Trust team domain, e.g. `https://myteam.cloudflareaccess.com`: the `iss` of "
        "the `Cf-Access-Jwt-Assertion` JWT."
    )
    audience: list[str] = Field(
        description="The Access application's AUD tag(s); the assertion's `aud` must contain one of them."
    )
    jwks_uri: str | None = Field(
        None, description="The team's signing keys; default `<team_domain>/cdn-cgi/access/certs`."
    )
    groups_claim: str | None = Field(
        None,
        description="Claim of the assertion holding the user's groups (a list; dotted path for nested "
        "claims, e.g. `custom.groups`). Unset: no groups.",
    )
    clock_skew: int = Field(30, ge=0, le=300, description="Seconds of leeway for exp/nbf/iat.")
    jwks_refresh: int = Field(300, ge=10, description="Seconds between background refreshes of the team's keys.")
    jwks_min_refetch: int = Field(
        10, ge=0, description="Seconds: an unknown `kid` triggers a refetch at most this often."
    )
    jwks_timeout: float = Field(3.0, gt=0, le=30, description="Seconds for one fetch of the team's keys.")

    @field_validator("audience", mode="before")
    @classmethod
    def _one_or_more(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("audience")
    @classmethod
    def _not_empty(cls, value: list[str]) -> list[str]:
        if not value or not all(value):
            raise ValueError("at least one non-empty AUD tag is required")
        return value

    @field_validator("team_domain")
    @classmethod
    def _team_domain(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme != "https" or not parts.hostname or parts.path.strip("/") or parts.query:
            raise ValueError(f"expected https://<team>.cloudflareaccess.com, got {value!r}")
        return value.rstrip("/")

    @field_validator("jwks_uri")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in ("https", "http"):
            raise ValueError(f"expected an http(s) URL, got {value!r}")
        return value


class ProxySpec(_Spec):
    preset: Literal["oauth2-proxy", "authelia", "cloudflare", "none"] = Field(
        "none",
        description="Header names of a known proxy: oauth2-proxy (`X-Auth-Request-*`), authelia (`Remote-*`), "
        "cloudflare (Cloudflare Access: the user is the `email` of the verified `Cf-Access-Jwt-Assertion`, "
        "see `cloudflare`). A preset replaces user_header, email_header and groups_header.",
    )
    cloudflare: CloudflareSpec | None = Field(
        None,
        description="Cloudflare Access (preset cloudflare, required with it): a valid assertion JWT of this "
        "team and application is a trust rule of its own.",
    )
    user_header: str = Field("X-Authenticated-User", description="Header with the user name; becomes `sub`.")
    email_header: str | None = Field(None, description="Header with the user's email; becomes `email`.")
    groups_header: str | None = Field(
        None, description="Header with the user's groups, comma-separated; becomes the list `groups`."
    )
    trusted_principals: list[str] = Field(
        [],
        description="mTLS peer principals (SPIFFE ID / URI SAN, else DNS SAN, else subject) of the proxy; "
        "exact or `*`/`?` globs. Every configured rule kind must pass (principal AND CIDR when both set).",
    )
    trusted_cidrs: list[str] = Field(
        [], description="Source addresses of the proxy (CIDRs). At least one trust rule kind is required."
    )
    passthrough_headers: list[str] = Field(
        [],
        description="Other headers the proxy sets (e.g. X-Tenant-Id) that reach the MCP server only when the "
        "caller was identified by the proxy; removed upstream on every other request.",
    )
    on_untrusted: Literal["deny", "strip"] = Field(
        "deny",
        description="An untrusted request carrying any identity header: deny → 401 (`proxy_untrusted`); "
        "strip → the headers are ignored (and removed upstream) and identification goes on.",
    )

    @field_validator("trusted_cidrs")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        for cidr in value:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"not a CIDR: {cidr!r}") from None
        return value


class CredentialsSpec(_Spec):
    header: str = Field(
        description="Header the MCP server receives the integration secret in (e.g. `Authorization`, "
        "`X-Api-Key`); a copy sent by the client is replaced."
    )
    value_secret: str = Field(
        description="The secret: plain, `${ENV}`, or `v2:<iv_hex>:<authTag_hex>:<ciphertext_hex>` "
        "(AES-256-GCM, see `secrets`). Never logged or audited."
    )
    prefix: str = Field("", description="Written before the secret in the header, e.g. `Bearer `.")

    @field_validator("header")
    @classmethod
    def _header(cls, value: str) -> str:
        return _injectable_header(value)

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        return _header_text(value)


# RFC 9110 §5.1 field-name token; hop-by-hop and framing headers cannot carry a credential.
_FIELD_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_NOT_INJECTABLE = frozenset({"host", "content-length", "content-type", "transfer-encoding", "connection", "te"})


def _injectable_header(value: str) -> str:
    if not _FIELD_NAME.fullmatch(value) or value.lower() in _NOT_INJECTABLE:
        raise ValueError(f"{value!r} is not a header name a credential can be injected in")
    return value


def _header_text(value: str) -> str:
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError("control characters cannot be sent in a header")
    return value


class TokenExchangeSpec(_Spec):
    token_endpoint: str | None = Field(None, description="The token endpoint the exchange (RFC 8693) is sent to.")
    issuer: str | None = Field(
        None,
        description="Instead of token_endpoint: the name of an `issuers` entry whose RFC 8414 / OIDC metadata "
        "names the token endpoint (fetched at the first exchange).",
    )
    audience: str | None = Field(None, description="`audience` of the downstream API (RFC 8693 §2.1).")
    resource: str | None = Field(None, description="`resource` of the downstream API (RFC 8707).")
    scopes: list[str] = Field([], description="`scope` asked for the downstream API.")
    client_id: str = Field(description="The authorizer's client at the issuer (HTTP Basic authentication).")
    client_secret: str = Field(description="Its secret: plain, `${ENV}` or `v2:` encrypted. Never logged.")
    header: str = Field("authorization", description="Header the exchanged token is sent to the MCP server in.")
    prefix: str = Field("Bearer ", description="Written before the exchanged token in the header.")
    timeout: float = Field(3.0, gt=0, le=30, description="Seconds for one exchange; a failure denies the call.")
    refresh_before: int = Field(
        30, ge=0, le=3600, description="Seconds before its expiry an exchanged token is no longer reused."
    )

    @field_validator("header")
    @classmethod
    def _header(cls, value: str) -> str:
        return _injectable_header(value)

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        return _header_text(value)

    @model_validator(mode="after")
    def _target(self) -> TokenExchangeSpec:
        if not self.audience and not self.resource:
            raise ValueError("token_exchange: set audience and/or resource of the downstream API")
        if (self.token_endpoint is None) == (self.issuer is None):
            raise ValueError("token_exchange: set token_endpoint or issuer (one of them)")
        if self.token_endpoint is not None and urlsplit(self.token_endpoint).scheme not in ("https", "http"):
            raise ValueError(f"token_endpoint: expected an http(s) URL, got {self.token_endpoint!r}")
        return self


class SessionsSpec(_Spec):
    bind: bool = Field(
        True,
        description="Bind each `Mcp-Session-Id` to the subject that first uses it; another subject presenting "
        "it is refused and logged (`session_hijack`). Anonymous and stateless (2026-07-28) requests have none.",
    )
    ttl: int = Field(
        3600, ge=10, le=30 * 86400, description="Seconds a binding lives after its last use (refreshed on use)."
    )
    hijack_status: Literal[404, 403] = Field(
        404,
        description="Status for a session id presented by another subject. 404 (default): the same answer as "
        "for an unknown session, so a guessed id is not confirmed to exist and MCP clients start a new "
        "session; 403: an explicit refusal.",
    )


class RateLimitSpec(_Spec):
    name: str = Field(description="Shown in logs and audit events (reason `rate_limited`).")
    per: Literal["subject", "subject_tool"] = Field(
        "subject", description="What is counted: each subject, or each subject and tool name (tools/call)."
    )
    tools: list[str] | None = Field(
        None, description="Only tools/call of these tools (globs) count. Unset: every request (per: subject)."
    )
    limit: int = Field(ge=1, le=1_000_000, description="Calls allowed per window (also the largest burst).")
    window: int = Field(ge=1, le=86400, description="Seconds; calls refill evenly (token bucket, GCRA).")


class ServerSpec(_Spec):
    name: str = Field(description="Name Envoy sends in the `mcp_server` context extension.")
    resource: str = Field(description="Public URL of the MCP endpoint; the audience tokens must carry.")
    upstream: str = Field("127.0.0.1:8000", description="host:port of the MCP server (used by `render`).")
    hosts: list[str] | None = Field(
        None,
        description="Host names (no port; `*` for any) that select this server, with the resource's path, when "
        "Envoy sends no `mcp_server` context extension (Istio's gRPC provider). Default: the resource's host.",
    )
    issuers: list[str] | None = Field(None, description="Issuer names trusted for this server. Default: all.")
    scopes_supported: list[str] = Field([], description="Advertised in RFC 9728 metadata and 401 challenges.")
    resource_name: str | None = Field(None, description="Human-readable name in RFC 9728 metadata.")
    mode: Literal["strict", "optional", "permissive"] = Field(
        "strict",
        description="strict: a valid token is required. optional: no token → anonymous caller, "
        "a bad token → 401. permissive: a missing or bad token → anonymous caller (policy decides).",
    )
    identity: list[Literal["jwt", "proxy"]] = Field(
        ["jwt"],
        description="Identity sources tried in this order: jwt (Bearer access token), proxy (headers of a "
        "trusted authenticating proxy, see `proxy`). The first that identifies the caller wins.",
    )
    proxy: ProxySpec | None = Field(None, description="Trusted proxy identity; required when identity has proxy.")
    identity_headers: IdentityHeadersSpec = Field(
        default_factory=IdentityHeadersSpec,  # type: ignore[arg-type]
        description="Header names for the caller's identity upstream; client-sent copies are overwritten.",
    )
    origins: list[str] | None = Field(
        None,
        description="Allowed `Origin` values (DNS-rebinding defence); the rendered Envoy also answers their CORS "
        "preflights and lets their browsers read `WWW-Authenticate` and `Mcp-Session-Id`. Unset: not checked.",
    )
    revisions: list[str] = Field(list(KNOWN_REVISIONS), description="MCP protocol revisions accepted.")
    header_only: bool = Field(
        False,
        description="Decide 2026-07-28 requests on Mcp-Method/Mcp-Name without the body. Only for "
        "upstreams that validate header/body agreement themselves (as the revision requires).",
    )
    audiences: list[str] = Field(
        [],
        description="Extra `aud` values accepted for this server besides its `resource` (for IdPs without "
        "RFC 8707 resource indicators: an Auth0 API identifier, an Entra application id or `api://...`, a "
        "Keycloak audience mapper's value). `config check` warns when two servers share one: a token for "
        "one is then accepted by the other.",
    )
    param_headers: dict[str, dict[str, str]] = Field(
        {},
        description="MCP 2026-07-28 `Mcp-Param-{Name}` headers, per tool: the `x-mcp-header` names the tool's "
        "input schema declares and the argument each one mirrors, as a dotted path into `arguments` (e.g. "
        "`{execute_sql: {Region: region, Tenant: target.tenant}}`). Each declared header is checked against the "
        "body like `Mcp-Name` (400 -32020 when it disagrees, is sent twice or is badly encoded; required in "
        "2026-07-28 when the argument is set) and handed to policy as `mcp.params.<Name>`; header_only decides "
        "2026-07-28 requests on them. `Mcp-Param-*` headers not listed here are forwarded unchanged, never read.",
    )
    policy: PolicySpec | None = Field(None, description="Per-operation rules. Unset: any valid caller.")
    filter_lists: bool = Field(
        False,
        description="Remove from tools/list, prompts/list, resources/list and resources/templates/list "
        "results the entries this caller's policy refuses (Envoy ext_proc, see `ext_proc`). The Check hands "
        "the caller to the processor as dynamic metadata: needs `envoy.authorizer: grpc`.",
    )
    credentials: CredentialsSpec | None = Field(
        None, description="An integration secret (API key, client secret) injected as a header on allow."
    )
    token_exchange: TokenExchangeSpec | None = Field(
        None,
        description="RFC 8693: exchange the caller's token for one of the downstream API and inject it on "
        "allow; cached per subject, audience and scopes until shortly before it expires; a failure denies.",
    )
    sessions: SessionsSpec = Field(
        default_factory=SessionsSpec,  # type: ignore[arg-type]
        description="MCP session binding (kept in the store, shared by replicas).",
    )
    rate_limits: list[RateLimitSpec] = Field(
        [], description="Limits per subject or subject and tool (kept in the store); over a limit → 429."
    )

    @model_validator(mode="after")
    def _proxy_trust(self) -> ServerSpec:
        if len(set(self.identity)) != len(self.identity) or not self.identity:
            raise ValueError("identity: list jwt and/or proxy, each once")
        if "proxy" in self.identity:
            proxy = self.proxy
            if proxy is None or not (proxy.trusted_principals or proxy.trusted_cidrs or proxy.cloudflare):
                raise ValueError(
                    "identity has proxy but proxy sets no trust rule: set proxy.trusted_principals and/or "
                    "proxy.trusted_cidrs (or preset cloudflare with proxy.cloudflare), or anyone could send "
                    "the identity headers"
                )
        if self.proxy is not None:
            if self.proxy.preset == "cloudflare" and self.proxy.cloudflare is None:
                raise ValueError(
                    "proxy.preset cloudflare needs proxy.cloudflare (team_domain, audience): the "
                    "Cf-Access-Jwt-Assertion must be verified, its headers alone prove nothing"
                )
            if self.proxy.cloudflare is not None and self.proxy.preset != "cloudflare":
                raise ValueError("proxy.cloudflare is only used with proxy.preset cloudflare")
            reserved = [h for h in _proxy_header_names(self.proxy) if h.lower().startswith(ENVOY_HEADER_PREFIX)]
            if reserved:
                raise ValueError(f"proxy headers {reserved}: {ENVOY_HEADER_PREFIX}* headers are set by Envoy only")
        return self

    @model_validator(mode="after")
    def _upstream_headers(self) -> ServerSpec:
        names = [h.header.lower() for h in (self.credentials, self.token_exchange) if h is not None]
        if len(set(names)) != len(names):
            raise ValueError("credentials.header and token_exchange.header must differ")
        taken = {v.lower() for _, v in self.identity_headers}
        if taken & set(names):
            raise ValueError(f"injected header {sorted(taken & set(names))} is also an identity header")
        return self

    @field_validator("upstream")
    @classmethod
    def _upstream(cls, value: str) -> str:
        HostPort.parse(value)
        return value

    @field_validator("resource")
    @classmethod
    def _resource_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("https", "http") or not parts.netloc or parts.fragment:
            raise ValueError(f"expected an absolute http(s) URL without fragment, got {value!r}")
        return value

    @field_validator("revisions")
    @classmethod
    def _revisions(cls, value: list[str]) -> list[str]:
        unknown = [v for v in value if v not in KNOWN_REVISIONS]
        if unknown or not value:
            raise ValueError(f"unknown revisions {unknown}; known: {list(KNOWN_REVISIONS)}")
        return value

    @field_validator("param_headers")
    @classmethod
    def _param_headers(cls, value: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
        for tool, headers in value.items():
            _check_param_headers(tool, headers)
        return value


def _check_param_headers(tool: str, headers: dict[str, str]) -> None:
    """One tool's ``Mcp-Param-{Name}`` declarations: RFC 9110 tokens, unique ignoring case, dotted paths."""
    if not tool or not headers:
        raise ValueError(f"tool {tool!r}: name the tool and at least one Name: argument.path")
    seen: dict[str, str] = {}
    for name, path in headers.items():
        if not _FIELD_NAME.fullmatch(name):
            raise ValueError(f"{tool}: {name!r} is not an RFC 9110 token (the x-mcp-header value, e.g. Region)")
        if name.lower() in seen:
            raise ValueError(f"{tool}: {seen[name.lower()]!r} and {name!r} are one header (names ignore case)")
        seen[name.lower()] = name
        if not path or any(not part for part in path.split(".")):
            raise ValueError(f"{tool}.{name}: {path!r} is not a dotted path into the arguments (e.g. target.tenant)")


# ---------------------------------------------------------------- schema: Envoy and the whole file


class EnvoySpec(_Spec):
    listen: str = Field("127.0.0.1:8080", description="Where the rendered Envoy listens for MCP clients.")
    max_request_bytes: int = Field(
        1_048_576, ge=1024, le=16_777_216, description="Body bound sent to the Check (with_request_body)."
    )
    timeout_ms: int = Field(1000, ge=50, le=60000, description="ext_authz gRPC timeout in Envoy.")
    authorizer: Literal["grpc", "http"] = Field(
        "grpc", description="Which ext_authz transport the rendered Envoy uses (`http` needs listen.http)."
    )
    admin_port: int = Field(0, ge=0, le=65535, description="Envoy admin port on 127.0.0.1 (0: ephemeral).")
    version: str = Field(
        "1.40",
        pattern=r"^[0-9]+\.[0-9]+$",
        description="The Envoy release (`major.minor`) the rendered config is for; from 1.40 on it has the MCP "
        "filter (`mcp_filter`).",
    )
    mcp_filter: bool | None = Field(
        None,
        description="Put Envoy's MCP filter (`envoy.filters.http.mcp`) before ext_authz, so the Check reads its "
        "parse (dynamic metadata) instead of the body for requests of revisions without batches, on servers whose "
        "policy needs no tool arguments (docs/envoy-mcp-filter.md). Opt-in for now (left out: off); it needs "
        "`version` 1.40 or later and `max_request_bytes` at most 10 MiB (the filter's bound). Istio's sidecars "
        "keep the body.",
    )

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        HostPort.parse(value)
        return value

    @model_validator(mode="after")
    def _mcp_filter(self) -> EnvoySpec:
        if self.mcp_filter:
            if envoy_release(self.version) < MCP_FILTER_SINCE:
                raise ValueError(f"mcp_filter: Envoy's MCP filter needs version 1.40 or later, not {self.version}")
            if self.max_request_bytes > MCP_FILTER_MAX_BYTES:
                raise ValueError(
                    f"mcp_filter: the filter parses at most {MCP_FILTER_MAX_BYTES} bytes; lower max_request_bytes "
                    f"({self.max_request_bytes}) or set mcp_filter: false"
                )
        return self


MCP_FILTER_SINCE = (1, 40)  # the first Envoy with envoy.filters.http.mcp as rendered (attribute_source)
MCP_FILTER_MAX_BYTES = 10 * 1024 * 1024  # its max_request_body_size bound


def envoy_release(version: str) -> tuple[int, int]:
    """``"1.40"`` → ``(1, 40)``."""
    major, minor = version.split(".")
    return int(major), int(minor)


class ExtProcSpec(_Spec):
    failure: Literal["closed", "open"] = Field(
        "closed",
        description="When the list filter cannot work (processor unreachable or too slow, a list response it "
        "cannot parse): closed → the response is replaced by a JSON-RPC error carrying the request's id; "
        "open → the response passes unfiltered (Envoy `failure_mode_allow`).",
    )
    message_timeout_ms: int = Field(
        1000, ge=50, le=60000, description="Envoy's ext_proc `message_timeout`: the longest wait for one answer."
    )
    max_body_bytes: int = Field(
        4_194_304,
        ge=1024,
        le=67_108_864,
        description="Largest list response (JSON) or single SSE event the processor holds to rewrite; a larger "
        "one is a failure (see `failure`). Other events stream through without being held.",
    )


class WebhookSpec(_Spec):
    url: str = Field(description="Where batches of audit events are POSTed (a JSON array per request).")
    secret: str = Field(
        description="HMAC-SHA256 key signing each batch (`X-Mcp-Authz-Signature`): `${ENV}` or `v2:` "
        "(see `secrets`), at least 16 bytes. Never logged."
    )
    batch_size: int = Field(100, ge=1, le=10000, description="Events per POST at most.")
    flush_interval: float = Field(
        1.0, gt=0, le=60, description="Seconds a partial batch waits for more events before it is sent."
    )
    queue_size: int = Field(
        10000,
        ge=1,
        le=1_000_000,
        description="Events waiting to be sent at most; when full, new events are "
        "dropped and counted (a Check never waits for the webhook).",
    )
    timeout: float = Field(5.0, gt=0, le=60, description="Seconds for one POST.")
    max_retries: int = Field(
        5,
        ge=0,
        le=20,
        description="Retries of a failed POST (exponential backoff from 0.5 s, at most 30 s); "
        "then the batch is dropped and counted.",
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if urlsplit(value).scheme not in ("https", "http") or not urlsplit(value).netloc:
            raise ValueError(f"expected an http(s) URL, got {value!r}")
        return value

    @field_validator("secret")
    @classmethod
    def _secret_length(cls, value: str) -> str:
        if len(value.encode()) < 16:
            raise ValueError("the webhook secret must have at least 16 bytes")
        return value


class TelemetrySpec(_Spec):
    service_name: str = Field("mcp-authz", description="OpenTelemetry `service.name` of traces and metrics.")
    otlp_endpoint: str | None = Field(
        None,
        description="OTLP receiver: `http://collector:4318` for http/protobuf (`/v1/traces`, `/v1/metrics` "
        "appended), `http://collector:4317` for grpc. Unset: nothing is exported by OTLP and no span is made.",
    )
    otlp_protocol: Literal["http/protobuf", "grpc"] = Field("http/protobuf", description="OTLP transport.")
    traces: bool = Field(True, description="A span per Check (needs otlp_endpoint), parented on `traceparent`.")
    metrics: bool = Field(
        True, description="Metrics at `/metrics` on the discovery port, and by OTLP when otlp_endpoint is set."
    )
    sample_ratio: float = Field(
        1.0, ge=0, le=1, description="Share of new traces recorded; a sampled `traceparent` parent is followed."
    )
    export_interval: float = Field(60.0, ge=1, le=3600, description="Seconds between OTLP metric exports.")

    @field_validator("otlp_endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is not None and (urlsplit(value).scheme not in ("https", "http") or not urlsplit(value).netloc):
            raise ValueError(f"expected an http(s) URL, got {value!r}")
        return value


class AuditSpec(_Spec):
    enabled: bool = Field(
        True, description='Write one JSON audit event per decision to stdout (`"stream": "mcp-authz-audit"`).'
    )
    argument_keys: list[str] = Field(
        [],
        description="Tool argument keys copied into audit events; every other argument is left out. Default: none.",
    )
    webhook: WebhookSpec | None = Field(
        None, description="Also POST audit events in signed batches to a URL (docs/observability.md, Audit webhook)."
    )


class AdminSpec(_Spec):
    listen: str = Field(
        "",
        description="host:port of the admin gRPC API (proto/mcp_authz/admin/v1: revoke, sessions, explain). "
        "Empty string (the default) disables it.",
    )
    token: SecretStr | None = Field(
        None,
        description="Admin token: callers send `authorization: Bearer <token>` metadata (compared in constant "
        "time). Write it as `${ENV_VAR}`; at least 16 characters. Never logged.",
    )
    tls_cert: str | None = Field(None, description="PEM server certificate of the admin port (TLS).")
    tls_key: str | None = Field(None, description="PEM private key of `tls_cert`.")
    client_ca: str | None = Field(
        None,
        description="PEM CA bundle: callers must present a client certificate it signed (mTLS). Needs tls_cert.",
    )

    @model_validator(mode="after")
    def _guarded(self) -> AdminSpec:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("set tls_cert and tls_key together")
        if self.client_ca and not self.tls_cert:
            raise ValueError("client_ca (mTLS) needs tls_cert and tls_key")
        if self.token is not None and len(self.token.get_secret_value()) < 16:
            raise ValueError("token: at least 16 characters")
        if self.listen and self.token is None and not self.client_ca:
            raise ValueError(
                "listen is set but neither token nor client_ca (mTLS) is: the admin API would be open to anyone"
            )
        return self

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        return _host_port(value)


class SecretsSpec(_Spec):
    keys: list[str] = Field(
        [],
        description="Keys for `v2:` values, each exactly 32 characters used as raw bytes (AES-256-GCM), "
        "usually `${ENV}`. Several for rotation: the first that authenticates a value wins.",
    )
    key_files: list[str] = Field([], description="Files holding one key each (mounted secrets); tried after keys.")


class ApprovalsSpec(_Spec):
    webhook_url: str = Field(description="Where approval requests are POSTed (JSON, HMAC-SHA256 signed).")
    webhook_secret: str = Field(description="HMAC key signing approval requests; `${ENV}` or `v2:`.")
    callback_secret: str = Field(
        description="HMAC key a late answer to POST /approvals/<id> (discovery service) must be signed with."
    )
    wait_ms: int = Field(
        800, ge=50, description="How long a Check waits for the answer; must be below envoy.timeout_ms."
    )
    keep_seconds: int = Field(
        900, ge=1, le=86400, description="How long a late approval (or a pending request) is kept for the retry."
    )
    include_arguments: bool = Field(False, description="Send the tool arguments in the approval request.")
    max_clock_skew: int = Field(
        300, ge=1, le=3600, description="Seconds a signed callback's timestamp may differ from now (replays)."
    )

    @field_validator("webhook_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if urlsplit(value).scheme not in ("https", "http"):
            raise ValueError(f"expected an http(s) URL, got {value!r}")
        return value


class StoreFailureSpec(_Spec):
    revocation: Literal["closed", "open"] = Field(
        "closed", description="Store unusable: closed → 503 `store_unavailable`; open → not revoked."
    )
    sessions: Literal["closed", "open"] = Field(
        "closed", description="Store unusable: closed → 503 `store_unavailable`; open → binding not checked."
    )
    rate_limits: Literal["closed", "open"] = Field(
        "closed", description="Store unusable: closed → 503 `store_unavailable`; open → not limited."
    )


SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
STORE_SCHEMES = ("redis", "rediss", "unix", *SENTINEL_SCHEMES)


def _store_nodes(values: list[str]) -> list[str]:
    """Each entry ``host:port``; the error names the entry (``entry 1: expected host:port, got 'x'``)."""
    for n, value in enumerate(values):
        try:
            HostPort.parse(value)
        except ValueError as exc:
            raise ValueError(f"entry {n}: {exc}") from None
    return values


def sentinel_url_parts(url: str) -> dict[str, Any]:
    """A ``redis+sentinel://[[user]:password@]host:port[,host:port...]/MASTER[/DB][?query]`` URL taken apart:
    ``nodes``, ``master``, ``db``, ``username``, ``password`` (the data nodes'), ``tls``, ``query``.

    ValueError naming the part that is wrong, never echoing the URL (it may hold a password)."""
    parts = urlsplit(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    path = [p for p in parts.path.split("/") if p]
    if not hosts or not path or len(path) > 2:
        raise ValueError("a sentinel URL is redis+sentinel://host:port[,host:port...]/MASTER[/DB]")
    if len(path) == 2 and not path[1].isdigit():
        raise ValueError("the database of a sentinel URL (after the master's name) is a number")
    nodes = []
    for n, host in enumerate(hosts.split(",")):
        try:
            nodes.append(HostPort.parse(host))
        except ValueError:
            raise ValueError(f"sentinel {n} of the URL is not host:port") from None
    username, _, password = userinfo.partition(":")
    return {
        "nodes": tuple(nodes),
        "master": unquote(path[0]),
        "db": int(path[1]) if len(path) == 2 else 0,
        "username": unquote(username) or None,
        "password": unquote(password) or None,
        "tls": parts.scheme == "rediss+sentinel",
        "query": {k: v[-1] for k, v in parse_qs(parts.query).items()},
    }


class StoreTlsSpec(_Spec):
    ca_file: str | None = Field(
        None, description="PEM file of the CA that signed the servers' certificates; unset: the system's."
    )
    cert_file: str | None = Field(None, description="Client certificate (PEM), where the servers require one.")
    key_file: str | None = Field(None, description="The client certificate's private key (PEM).")
    check_hostname: bool = Field(
        True, description="The server's certificate must name the address it is reached at (what sentinels announce)."
    )


class SentinelSpec(_Spec):
    nodes: list[str] = Field(min_length=1, description="The sentinels, `host:port` each (any one answering is enough).")
    master: str = Field(
        min_length=1, description="The name the sentinels watch the master under (`sentinel monitor NAME`)."
    )
    db: int = Field(0, ge=0, le=1023, description="Database number on the data nodes.")
    username: str | None = Field(None, description="The sentinels' own ACL user, where they require one.")
    password: str | None = Field(
        None, description="The sentinels' own password (`requirepass` in sentinel.conf); usually `${ENV}`."
    )
    tls: bool | None = Field(None, description="TLS to the sentinels too; unset: whenever `store.tls` is set.")

    @field_validator("nodes")
    @classmethod
    def _host_ports(cls, value: list[str]) -> list[str]:
        return _store_nodes(value)


class ClusterSpec(_Spec):
    nodes: list[str] = Field(
        min_length=1, description="Seed nodes, `host:port` each; the client learns the rest (and follows MOVED/ASK)."
    )

    @field_validator("nodes")
    @classmethod
    def _host_ports(cls, value: list[str]) -> list[str]:
        return _store_nodes(value)


class StoreSpec(_Spec):
    url: str | None = Field(
        None,
        description="Redis URL shared by replicas: `redis://[:password@]host:port/db`, `rediss://` (TLS; a private "
        "CA with `?ssl_ca_certs=/path/ca.pem`) or `unix://path?db=N`; Sentinel as "
        "`redis+sentinel://[:password@]host:port[,host:port...]/MASTER[/DB]` (`rediss+sentinel://` for TLS to the "
        "sentinels and data nodes; `?sentinel_password=`); usually `${ENV}`. Unset (and no `sentinel`/`cluster`): "
        "the in-memory store of this process.",
    )
    sentinel: SentinelSpec | None = Field(
        None, description="Redis Sentinel, as a section instead of a `redis+sentinel://` URL."
    )
    cluster: ClusterSpec | None = Field(None, description="Redis Cluster: its seed nodes. Database 0 only.")
    username: str | None = Field(
        None, description="ACL user on the data nodes (with `sentinel` or `cluster`; a URL carries its own)."
    )
    password: str | None = Field(
        None,
        description="Password of the data nodes (with `sentinel` or `cluster`; a URL carries its own); "
        "usually `${ENV}`.",
    )
    tls: StoreTlsSpec | None = Field(
        None, description="TLS to the data nodes (with `sentinel` or `cluster`; a URL says `rediss://`)."
    )
    revocation_replicas: int = Field(
        0,
        ge=0,
        le=16,
        description="A revocation waits (`WAIT`) until this many Redis replicas have it, or the admin call fails: "
        "then a fail-over cannot lose it. 0: do not wait (replication is asynchronous).",
    )
    revocation_wait_ms: int = Field(
        500, ge=1, le=10000, description="How long a revocation waits for `revocation_replicas`."
    )
    max_sessions_per_subject: int = Field(
        100,
        ge=1,
        le=100_000,
        description="Live MCP sessions one subject may hold (all servers); a new one beyond: 429 `too_many_sessions`.",
    )
    key_prefix: str = Field("mcp-authz:", description="Prefix of every Redis key and the pub/sub channel.")
    timeout_ms: int = Field(
        50, ge=1, le=10000, description="Deadline of one store call; past it the call fails (see `failure`)."
    )
    pool_size: int = Field(32, ge=1, le=1024, description="Most Redis connections held open.")
    resync_seconds: int = Field(
        30, ge=1, le=3600, description="Seconds between full reloads of the local revocation copy."
    )
    failure: StoreFailureSpec = Field(
        default_factory=StoreFailureSpec,  # type: ignore[arg-type]
        description="What a Check does, per feature, while the store is unusable.",
    )
    allow_inconsistent_state: bool = Field(
        False,
        description="Accept more than one replica with the in-memory store (`render` and the Helm chart refuse it "
        "otherwise): each replica then keeps its own state, so a revocation, a session binding or a rate limit is "
        "seen by the replica that recorded it only.",
    )

    @field_validator("url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        scheme = urlsplit(value).scheme  # never echo the URL: it may hold a password
        if scheme not in STORE_SCHEMES:
            raise ValueError("expected a redis://, rediss://, unix://, redis+sentinel:// or rediss+sentinel:// URL")
        if scheme in SENTINEL_SCHEMES:
            sentinel_url_parts(value)
        return value

    @field_validator("key_prefix")
    @classmethod
    def _no_hash_tag(cls, value: str) -> str:
        if "{" in value or "}" in value:
            raise ValueError("must not contain { or }: the store puts the revocation keys in one hash slot with them")
        return value

    @model_validator(mode="after")
    def _one_topology(self) -> StoreSpec:
        given = [k for k in ("url", "sentinel", "cluster") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"set one of url, sentinel, cluster (found {' and '.join(given)})")
        if self.url is not None:
            extra = [k for k in ("username", "password", "tls") if getattr(self, k) is not None]
            if extra:
                raise ValueError(f"{', '.join(extra)}: only with sentinel or cluster; a url carries its own")
        if not given and self.revocation_replicas:
            raise ValueError("revocation_replicas needs Redis (url, sentinel or cluster)")
        return self


MAX_TOKEN_CACHE_SIZE = 1_000_000  # token_cache_size: ~400 MB at ~0.4 KB per cached token (docs/tokens.md)


class ConfigSpec(_Spec):
    listen: ListenSpec = Field(default_factory=ListenSpec, description="Listen addresses.")  # type: ignore[arg-type]
    issuers: list[IssuerSpec] = Field(description="Token issuers (authorization servers).")
    servers: list[ServerSpec] = Field(description="MCP servers protected by this authorizer.")
    allow_insecure_http: bool = Field(
        False,
        description="Accept plain `http://` issuer, JWKS, token exchange and webhook URLs off loopback (keys, "
        "tokens and signed events then travel unencrypted); each one is logged as a warning at load. "
        "Default: refused, only https:// or a loopback host.",
    )
    failure_status: int = Field(
        503, ge=400, le=599, description="Status of a deny caused by an internal error (fail closed)."
    )
    token_cache_size: int = Field(
        10_000,
        ge=1,
        le=MAX_TOKEN_CACHE_SIZE,
        description="Verified tokens kept in memory (the oldest goes first when full); bounds the authorizer's "
        "memory: ~0.4 KB per token, plus the token's claims (~3 KB) where a policy uses CEL (docs/tokens.md).",
    )

    @field_validator("token_cache_size", mode="before")
    @classmethod
    def _token_cache_size(cls, value: Any) -> Any:
        if isinstance(value, int) and value > MAX_TOKEN_CACHE_SIZE:
            raise ValueError(
                f"{value} is above the maximum {MAX_TOKEN_CACHE_SIZE} (~400 MB of cached tokens, ~3 GB with CEL "
                f"policies); set at most {MAX_TOKEN_CACHE_SIZE}: tokens beyond it are verified again, not refused"
            )
        return value

    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="JSON logs on stderr.")
    envoy: EnvoySpec = Field(
        default_factory=EnvoySpec,  # type: ignore[arg-type]
        description="Settings of the Envoy chain that `mcp-authz render envoy` writes.",
    )
    audit: AuditSpec = Field(
        default_factory=AuditSpec,  # type: ignore[arg-type]
        description="Audit events: one JSON line per decision on stdout, never the token.",
    )
    telemetry: TelemetrySpec = Field(
        default_factory=TelemetrySpec,  # type: ignore[arg-type]
        description="OpenTelemetry traces and metrics (Prometheus `/metrics` on the discovery port).",
    )
    ext_proc: ExtProcSpec = Field(
        default_factory=ExtProcSpec,  # type: ignore[arg-type]
        description="The list filter (Envoy ext_proc, served on listen.grpc) for servers with `filter_lists`.",
    )
    admin: AdminSpec = Field(
        default_factory=AdminSpec,  # type: ignore[arg-type]
        description="The admin API (revocation, sessions, explain) on its own port; off unless `admin.listen`.",
    )
    secrets: SecretsSpec = Field(
        default_factory=SecretsSpec,  # type: ignore[arg-type]
        description="Keys decrypting `v2:` secrets (credentials, token_exchange, approvals).",
    )
    approvals: ApprovalsSpec | None = Field(
        None, description="Human approval of tool calls whose rule says `approval: true`."
    )
    store: StoreSpec = Field(
        default_factory=StoreSpec,  # type: ignore[arg-type]
        description="Shared state (revocation, session binding, rate limits): in memory, or Redis for replicas.",
    )


def cross_checks(spec: ConfigSpec) -> list[str]:
    """What no single section can check: names that must be unique or must exist, sections that must agree.

    Each problem is one ``key: message`` line naming the key's path (``servers.1.issuers``); all are reported.
    """
    errors = [
        *_duplicates("issuers", "name", [i.name for i in spec.issuers]),
        *_duplicates("servers", "name", [s.name for s in spec.servers]),
        *_duplicates("servers", "resource", [s.resource for s in spec.servers]),
    ]
    issuers = [i.name for i in spec.issuers]
    for k, s in enumerate(spec.servers):
        errors += _duplicates(f"servers.{k}.rate_limits", "name", [r.name for r in s.rate_limits])
        missing = [n for n in s.issuers or [] if n not in issuers]
        if missing:
            errors.append(
                f"servers.{k}.issuers: unknown issuer {_listing(missing)}; the issuers are {_listing(issuers)}"
            )
        named = s.token_exchange.issuer if s.token_exchange is not None else None
        if named is not None and named not in issuers:
            errors.append(
                f"servers.{k}.token_exchange.issuer: {named!r} is not in issuers; the issuers are {_listing(issuers)}"
            )
        if s.filter_lists and spec.envoy.authorizer == "http":
            errors.append(
                f"servers.{k}.filter_lists needs envoy.authorizer: grpc (the HTTP ext_authz front cannot hand "
                "the caller to ext_proc as dynamic metadata)"
            )
        approval = [j for j, r in enumerate(s.policy.rules if s.policy else []) if r.approval]
        if approval and spec.approvals is None:
            errors.append(
                f"servers.{k}.policy.rules.{approval[0]}.approval: rules with approval: true need an approvals section"
            )
        if approval and s.header_only:
            errors.append(f"servers.{k}.header_only: approval rules need the arguments, so header_only must be false")
    if not spec.servers:
        errors.append("servers: at least one MCP server is required")
    if not spec.allow_insecure_http:
        errors += [
            f"{key}: plain http to {where} (not loopback) sends keys, tokens or signed events unencrypted; "
            "use https://, or set allow_insecure_http: true"
            for key, where in insecure_urls(spec)
        ]
    if spec.envoy.authorizer == "http" and not spec.listen.http:
        errors.append("envoy.authorizer: http needs listen.http")
    if spec.approvals is not None and spec.approvals.wait_ms >= spec.envoy.timeout_ms:
        errors.append(
            f"approvals.wait_ms ({spec.approvals.wait_ms}) must be below envoy.timeout_ms "
            f"({spec.envoy.timeout_ms}), or Envoy gives up before the answer"
        )
    return errors


def insecure_urls(spec: ConfigSpec) -> list[tuple[str, str]]:
    """(key, scheme://host) of each URL the authorizer fetches or posts to over plain http off loopback."""
    urls: list[tuple[str, str | None]] = []
    for k, i in enumerate(spec.issuers):
        urls += [(f"issuers.{k}.issuer", i.issuer), (f"issuers.{k}.jwks_uri", i.jwks_uri)]
    for k, s in enumerate(spec.servers):
        if s.token_exchange is not None:
            urls.append((f"servers.{k}.token_exchange.token_endpoint", s.token_exchange.token_endpoint))
        if s.proxy is not None and s.proxy.cloudflare is not None:
            urls.append((f"servers.{k}.proxy.cloudflare.jwks_uri", s.proxy.cloudflare.jwks_uri))
    if spec.audit.webhook is not None:
        urls.append(("audit.webhook.url", spec.audit.webhook.url))
    if spec.approvals is not None:
        urls.append(("approvals.webhook_url", spec.approvals.webhook_url))
    found = []
    for key, url in urls:
        parts = urlsplit(url or "")
        if parts.scheme == "http" and not HostPort(parts.hostname or "", 0).is_loopback:
            found.append((key, f"http://{parts.hostname}"))
    return found


def _duplicates(path: str, key: str, values: list[str]) -> list[str]:
    """``path.N.key: duplicate ...`` for each value that an earlier entry of the list already has."""
    return [
        f"{path}.{j}.{key}: duplicate {key} {value!r} (also {path}.{values.index(value)})"
        for j, value in enumerate(values)
        if values.index(value) < j
    ]


def _listing(names: list[str]) -> str:
    return ", ".join(repr(n) for n in names) if names else "(none)"


def keys_at(loc: tuple[int | str, ...]) -> list[str]:
    """The keys the section holding ``loc`` (a validation error's location, ending in a key) accepts."""
    model: type[BaseModel] = ConfigSpec
    for part in loc[:-1]:
        if isinstance(part, int):
            continue  # an index into a list of sections
        field = model.model_fields.get(part)
        inner = _model_in(field.annotation) if field is not None else None
        if inner is None:
            return []
        model = inner
    return list(model.model_fields)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The section model an annotation holds (``X``, ``X | None``, ``list[X]``), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _proxy_header_names(spec: ProxySpec) -> list[str]:
    names = PROXY_PRESETS.get(spec.preset, (spec.user_header, spec.email_header, spec.groups_header))
    return [n for n in (*names, *spec.passthrough_headers) if n]
