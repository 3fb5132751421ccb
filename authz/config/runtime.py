"""The runtime form of the configuration: frozen values the Check, the fronts and the renderers read.

Built once per load or reload by ``authz.config.compile`` (globs and CEL compiled, header names lower-cased,
secrets decrypted, addresses parsed); nothing here parses YAML or knows pydantic.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from authz.config.cel import Expression
from authz.config.secrets import Secret

CLOUDFLARE_ASSERTION_HEADER = "cf-access-jwt-assertion"
FailureMode = Literal["closed", "open"]
_HOST = re.compile(r"\[?[0-9A-Za-z.:\-]+\]?")


@dataclass(frozen=True, slots=True)
class HostPort:
    """A ``host:port`` address (``[v6]:port`` too): the one parser of the config's addresses.

    ``host`` is kept without brackets; ``str()`` writes the address back as the config spells it.
    """

    host: str
    port: int

    @classmethod
    def parse(cls, value: str) -> HostPort:
        """``host:port`` or ``[v6]:port``; ValueError ``expected host:port, got ...`` otherwise."""
        host, sep, port = value.rpartition(":")
        if not sep or not _HOST.fullmatch(host) or not port.isdigit() or len(port) > 5 or int(port) > 65535:
            raise ValueError(f"expected host:port, got {value!r}")
        return cls(host.removeprefix("[").removesuffix("]"), int(port))

    @classmethod
    def of(cls, value: str | HostPort) -> HostPort:
        """``value`` parsed, or as it is when already a HostPort."""
        return value if isinstance(value, HostPort) else cls.parse(value)

    @classmethod
    def optional(cls, value: str) -> HostPort | None:
        """An address that an empty string turns off."""
        return cls.parse(value) if value else None

    @property
    def is_loopback(self) -> bool:
        """``localhost`` or a loopback IP address."""
        try:
            return self.host == "localhost" or ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


# ---------------------------------------------------------------- tokens and policy


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    methods: re.Pattern[str] | None
    tools: re.Pattern[str] | None
    resources: re.Pattern[str] | None
    prompts: re.Pattern[str] | None
    http_methods: frozenset[str] | None
    scopes: frozenset[str]
    any_scopes: tuple[str, ...]
    when: Expression | None
    allow: bool
    approval: bool = False


@dataclass(frozen=True, slots=True)
class Policy:
    rules: tuple[Rule, ...]
    default_allow: bool
    uses_cel: bool
    approval_rules: frozenset[str] = frozenset()  # names of rules whose calls wait for approval


@dataclass(frozen=True, slots=True)
class Issuer:
    name: str
    issuer: str
    jwks_uri: str | None
    local_key_file: str | None
    algorithms: tuple[str, ...]
    audiences: frozenset[str]
    clock_skew: int
    required_claims: tuple[str, ...]
    token_type: str | None
    max_token_bytes: int
    max_lifetime: int
    jwks_refresh: int
    jwks_min_refetch: int
    jwks_timeout: float
    require_jti: bool
    # from the issuer's profile (authz.config.profiles) unless set explicitly
    profile: str = "generic"
    scope_claims: tuple[str, ...] = ("scope", "scp")
    client_id_claims: tuple[str, ...] = ("client_id", "azp")
    token_id_claim: str = "jti"
    tenant_claim: str | None = None
    scope_prefix: str = ""  # clients ask for "<prefix><scope>" ("{resource}": the server's resource URL)
    # every `iss` value accepted, and the tenant each names (None: a single-tenant issuer)
    accepted_issuers: Mapping[str, str | None] = field(default_factory=dict)


# ---------------------------------------------------------------- identity sources


@dataclass(frozen=True, slots=True)
class CloudflareAccess:
    """Cloudflare Access: the assertion's issuer (team domain), accepted AUD tags, and the team's key set.

    ``keys`` is an ``Issuer`` only as the key set's fetch settings (``jwks_uri``...); it is never
    among ``Config.issuers``, so an assertion is never accepted as a Bearer token.
    """

    team_domain: str
    audiences: tuple[str, ...]
    clock_skew: int
    groups_claim: tuple[str, ...] | None  # dotted path, split
    keys: Issuer


@dataclass(frozen=True, slots=True)
class ProxyTrust:
    """A trusted proxy: who it is (principal globs, CIDRs, Cloudflare assertion) and which headers carry the user."""

    user_header: str  # header names lower-case
    email_header: str | None
    groups_header: str | None
    principals: re.Pattern[str] | None  # None: not checked
    cidrs: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] | None  # None: not checked
    strip: bool
    passthrough: tuple[str, ...] = ()  # lower-case; kept upstream only for a proxy-identified caller
    cloudflare: CloudflareAccess | None = None  # None: no assertion checked

    @property
    def headers(self) -> tuple[str, ...]:
        """Every identity header of the proxy (Cloudflare's assertion too), removed upstream in every case."""
        assertion = CLOUDFLARE_ASSERTION_HEADER if self.cloudflare is not None else None
        names = (self.user_header, self.email_header, self.groups_header, assertion)
        return tuple(dict.fromkeys(h for h in names if h))


# ---------------------------------------------------------------- upstream, sessions, MCP servers


@dataclass(frozen=True, slots=True)
class IdentityHeaders:
    """Header names (lower-case) carrying the caller's identity to the MCP server."""

    subject: str
    client_id: str
    scopes: str
    issuer: str

    @property
    def names(self) -> tuple[str, ...]:
        return (self.subject, self.client_id, self.scopes, self.issuer)


@dataclass(frozen=True, slots=True)
class Credential:
    """An integration secret as injected: header name (lower-case) and the whole header value."""

    header: str
    value: Secret


@dataclass(frozen=True, slots=True)
class Exchange:
    """RFC 8693 token exchange for one MCP server's downstream API."""

    token_endpoint: str | None  # None: from the metadata of ``issuer``
    issuer: str | None  # issuer identifier (URL) whose metadata names the token endpoint
    audience: str | None
    resource: str | None
    scopes: tuple[str, ...]
    client_id: str
    client_secret: Secret
    header: str  # lower-case
    prefix: str
    timeout: float
    refresh_before: int


@dataclass(frozen=True, slots=True)
class Approvals:
    webhook_url: str
    webhook_secret: Secret
    callback_secret: Secret
    wait: float  # seconds
    keep_seconds: int
    include_arguments: bool
    max_clock_skew: int


@dataclass(frozen=True, slots=True)
class Sessions:
    bind: bool = True
    ttl: int = 3600
    hijack_status: int = 404


@dataclass(frozen=True, slots=True)
class RateLimit:
    name: str
    per_tool: bool  # key per subject and tool name (only tools/call counts)
    tools: re.Pattern[str] | None  # None: every request counts (per subject) / every tools/call (per tool)
    limit: int
    window: int


_OPENID_SCOPES = frozenset({"openid", "profile", "email", "offline_access"})


@dataclass(frozen=True, slots=True)
class ParamHeader:
    """One declared MCP 2026-07-28 ``Mcp-Param-{name}`` header (``servers[].param_headers``)."""

    name: str  # the x-mcp-header token as configured: the key of mcp.params
    header: str  # "mcp-param-<name, lower-case>"
    path: tuple[str, ...]  # into the tools/call arguments
    at: str  # the path as configured ("target.tenant"), for messages


@dataclass(frozen=True, slots=True)
class Server:
    name: str
    resource: str
    path: str  # path of `resource`; the Envoy route prefix
    upstream: HostPort
    issuers: tuple[str, ...]
    scopes_supported: tuple[str, ...]
    resource_name: str | None
    mode: str
    identity_headers: IdentityHeaders
    identity: tuple[str, ...]  # jwt | proxy, in the operator's order
    proxy: ProxyTrust | None
    origins: frozenset[str] | None
    revisions: frozenset[str]
    header_only: bool
    policy: Policy | None
    metadata_url: str  # RFC 9728 path-suffixed metadata URL, sent in every challenge
    filter_lists: bool = False  # list results filtered by ext_proc: the Check emits dynamic metadata
    credentials: Credential | None = None
    exchange: Exchange | None = None
    sessions: Sessions = Sessions()
    rate_limits: tuple[RateLimit, ...] = ()
    hosts: frozenset[str] = frozenset({"*"})  # lower-case host names that select it without a context extension
    audiences: frozenset[str] = frozenset()  # extra accepted `aud` values (servers[].audiences)
    scope_prefix: str = ""  # from its first issuer's scope_prefix: how challenges and scopes_supported name scopes
    # tool name -> its declared Mcp-Param-* headers (MCP 2026-07-28 x-mcp-header)
    param_headers: Mapping[str, tuple[ParamHeader, ...]] = field(default_factory=dict)

    def asked_as(self, scopes: Iterable[str]) -> list[str]:
        """Scopes as a client must ask the server's IdP for them (``scope_prefix``, e.g. Entra's Application ID
        URI), while tokens and policy carry the short names. OpenID scopes are never prefixed."""
        prefix = self.scope_prefix
        return [prefix + s if prefix and s not in _OPENID_SCOPES else s for s in scopes]

    @property
    def injected_headers(self) -> tuple[str, ...]:
        """Headers the authorizer sets for the MCP server from secrets (client copies are replaced)."""
        return tuple(h.header for h in (self.credentials, self.exchange) if h is not None)


# ---------------------------------------------------------------- the process: listeners, Envoy, sinks, store


DEFAULT_MAX_INFLIGHT = 256  # listen.max_inflight


@dataclass(frozen=True, slots=True)
class Listen:
    """The authorizer's listen addresses; None: that listener is off."""

    grpc: HostPort
    http: HostPort | None
    discovery: HostPort | None
    http_shared_secret: Secret | None = None  # Envoy sends it in contract.SHARED_SECRET_HEADER
    http_mesh_mtls: bool = False
    max_inflight: int = DEFAULT_MAX_INFLIGHT  # Checks in progress at once on each front; beyond: a retryable 503
    grpc_server: Literal["grpcio", "h2corn"] = "grpcio"  # which server serves `grpc` ($MCP_AUTHZ_GRPC_SERVER wins)


@dataclass(frozen=True, slots=True)
class Envoy:
    """Settings of the Envoy chain ``render envoy`` writes."""

    listen: HostPort
    max_request_bytes: int
    timeout_ms: int
    authorizer: Literal["grpc", "http"]
    admin_port: int
    mcp_filter: bool = False  # Envoy's MCP filter before ext_authz; its parse is the Check's input (authz.mcp_metadata)


@dataclass(frozen=True, slots=True)
class ExtProc:
    """The list filter (Envoy ext_proc)."""

    failure: FailureMode
    message_timeout_ms: int
    max_body_bytes: int


@dataclass(frozen=True, slots=True)
class Telemetry:
    """OpenTelemetry traces and metrics."""

    service_name: str
    otlp_endpoint: str | None
    otlp_protocol: Literal["http/protobuf", "grpc"]
    traces: bool
    metrics: bool
    sample_ratio: float
    export_interval: float  # seconds


@dataclass(frozen=True, slots=True)
class AuditWebhook:
    """Signed batches of audit events POSTed to ``url``; ``secret`` decrypted."""

    url: str
    secret: Secret
    batch_size: int
    flush_interval: float  # seconds
    queue_size: int
    timeout: float  # seconds
    max_retries: int


@dataclass(frozen=True, slots=True)
class Audit:
    enabled: bool
    argument_keys: tuple[str, ...]
    webhook: AuditWebhook | None


@dataclass(frozen=True, slots=True)
class Admin:
    """The admin gRPC API; ``listen`` None: off."""

    listen: HostPort | None
    token: Secret | None
    tls_cert: str | None
    tls_key: str | None
    client_ca: str | None


@dataclass(frozen=True, slots=True)
class StoreFailure:
    """Per feature, what a Check does while the store is unusable."""

    revocation: FailureMode
    sessions: FailureMode
    rate_limits: FailureMode


@dataclass(frozen=True, slots=True)
class StoreTls:
    ca_file: str | None
    cert_file: str | None
    key_file: str | None
    check_hostname: bool


@dataclass(frozen=True, slots=True)
class Store:
    """Shared state: in memory, or Redis as one node (``url``), a Sentinel-watched master or a Cluster.

    Passwords (and a URL, which may hold one) never show in ``repr``."""

    topology: Literal["memory", "single", "sentinel", "cluster"]
    url: str | None = field(repr=False)  # single: the redis://, rediss:// or unix:// URL with its credentials
    key_prefix: str
    timeout: float  # seconds
    pool_size: int
    resync: float  # seconds
    failure: StoreFailure
    revocation_replicas: int  # WAIT for this many Redis replicas on each revocation (0: no wait)
    revocation_wait: float  # seconds
    max_sessions_per_subject: int
    allow_inconsistent_state: bool = False  # several replicas with the memory store are accepted
    nodes: tuple[HostPort, ...] = ()  # sentinel: the sentinels; cluster: seed nodes
    master: str = ""  # sentinel: the monitored master's name
    db: int = 0
    username: str | None = None  # data nodes (sentinel, cluster)
    password: str | None = field(default=None, repr=False)
    tls: StoreTls | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)
    sentinel_tls: StoreTls | None = None


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration as the running authorizer reads it."""

    issuers: Mapping[str, Issuer]
    servers: Mapping[str, Server]
    listen: Listen
    envoy: Envoy
    ext_proc: ExtProc
    telemetry: Telemetry
    audit: Audit
    admin: Admin
    store: Store
    failure_status: int  # status of a deny caused by an internal error
    token_cache_size: int
    log_level: Literal["debug", "info", "warning", "error"]
    settings: Mapping[str, Any] = field(repr=False, compare=False)  # the validated file as JSON data, defaults in
    source: str = ""
    approvals: Approvals | None = None
    secret_keys: tuple[bytes, ...] = field(default=(), repr=False)  # first one encrypts cached exchanged tokens

    def listeners(self) -> dict[str, HostPort | None]:
        """The authorizer's own listen addresses by the config key that sets them (None: off)."""
        return {
            "listen.grpc": self.listen.grpc,
            "listen.http": self.listen.http,
            "listen.discovery": self.listen.discovery,
            "admin.listen": self.admin.listen,
        }

    @property
    def key_issuers(self) -> Mapping[str, Issuer]:
        """Every key set to fetch: the issuers', then the Cloudflare Access teams' (never token issuers)."""
        teams = {
            s.proxy.cloudflare.keys.name: s.proxy.cloudflare.keys
            for s in self.servers.values()
            if s.proxy is not None and s.proxy.cloudflare is not None
        }
        return {**self.issuers, **teams}
