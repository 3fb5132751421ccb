"""Every validation error the config file can raise: one case each, asserting the key path and the message."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from support import REMOVE, issuer_spec, server_spec

from authz.config.errors import ConfigError
from authz.config.load import load_config, parse_config
from authz.identity.devkey import ensure_key


def an_issuer(**fields: Any) -> list[dict[str, Any]]:
    return [issuer_spec(jwks_uri="https://issuer.test/jwks", **fields)]


def a_server(**fields: Any) -> list[dict[str, Any]]:
    return [server_spec(**fields)]


def errors(
    issuers: list[dict[str, Any]] | None = None, servers: list[dict[str, Any]] | None = None, **top: Any
) -> list[str]:
    """The ConfigError lines of a document (issuers and servers default to one valid each)."""
    doc = {
        "issuers": issuers if issuers is not None else [issuer_spec(jwks_uri="http://127.0.0.1:9/jwks")],
        "servers": servers if servers is not None else [server_spec()],
        **top,
    }
    return refusal(doc)


def refusal(doc: dict[str, Any]) -> list[str]:
    """The ConfigError lines of a document."""
    with pytest.raises(ConfigError) as refused:
        parse_config(json.dumps(doc), "<test>")
    return refused.value.errors


def test_a_yaml_syntax_error_names_the_file_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("issuers:\n  - name: a\n   issuer: x\n", encoding="utf-8")
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert refused.value.errors == [
        f"{path}:3:4: not valid YAML: expected <block end>, but found '<block mapping start>' "
        "(while parsing a block collection at line 2, column 3)"
    ]
    assert "<unicode string>" not in str(refused.value)


def test_relative_paths_are_taken_from_the_config_files_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "conf" / "keys").mkdir(parents=True)
    ensure_key(tmp_path / "conf" / "keys" / "dev.pem")
    (tmp_path / "conf" / "secret.key").write_text("k" * 32, encoding="utf-8")
    doc = {
        "issuers": [issuer_spec(local_key_file="keys/dev.pem")],
        "servers": [server_spec()],
        "secrets": {"key_files": ["secret.key"]},
        "admin": {"listen": "127.0.0.1:0", "token": "t" * 16, "tls_cert": "tls/cert.pem", "tls_key": "/abs/key.pem"},
    }
    (tmp_path / "conf" / "config.yaml").write_text(json.dumps(doc), encoding="utf-8")
    monkeypatch.chdir(tmp_path)  # anywhere but the config's directory
    config = load_config("conf/config.yaml")
    assert config.issuers["main"].local_key_file == str(Path("conf/keys/dev.pem"))
    assert config.secret_keys == (b"k" * 32,)
    assert (config.admin.tls_cert, config.admin.tls_key) == (str(Path("conf/tls/cert.pem")), "/abs/key.pem")


def test_a_typo_is_refused_with_the_nearest_key() -> None:
    found = errors(servers=[server_spec(scope_supported=["a"], proxy={"user_hedaer": "x"})], telemtry={})
    assert sorted(found) == [
        "servers.0.proxy.user_hedaer: unknown key; did you mean 'user_header'?",
        "servers.0.scope_supported: unknown key; did you mean 'scopes_supported'?",
        "telemtry: unknown key; did you mean 'telemetry'?",
    ]


def test_an_unknown_key_without_a_near_one_lists_the_keys_of_its_section() -> None:
    assert errors(servers=[server_spec(sessions={"zzz": 1})]) == [
        "servers.0.sessions.zzz: unknown key; the keys here are 'bind', 'ttl', 'hijack_status'"
    ]


def test_a_condition_reading_an_undeclared_variable_is_refused_naming_the_rule() -> None:
    rules = [
        {
            "name": "fine",
            "tools": ["*"],
            "when": 'jwt.sub != "" && [1, 2].exists(x, x > 0) && request.method == "POST"',
        },
        {"name": "typo", "tools": ["*"], "when": '"admins" in jtw.groups'},
    ]
    assert errors(servers=[server_spec(policy={"rules": rules})]) == [
        "servers.0.policy.rules.1.when: rule 'typo': undeclared variable 'jtw' in '\"admins\" in jtw.groups'; "
        "a condition reads jwt, mcp, request"
    ]


@pytest.mark.parametrize("key", ["webhook_secret", "callback_secret"])
def test_an_approval_secret_needs_16_bytes_even_from_an_empty_variable(
    monkeypatch: pytest.MonkeyPatch, key: str
) -> None:
    monkeypatch.setenv("EMPTY_SECRET", "")
    section = {"webhook_url": "https://approve.test/hook", "webhook_secret": "w" * 16, "callback_secret": "c" * 16}
    assert errors(approvals={**section, key: "${EMPTY_SECRET}"}) == [
        f"approvals.{key}: at least 16 bytes are needed to sign with it, this one has 0"
    ]
    assert errors(approvals={**section, key: "x" * 15}) == [
        f"approvals.{key}: at least 16 bytes are needed to sign with it, this one has 15"
    ]


def test_plain_http_off_loopback_is_refused_unless_allowed(caplog: pytest.LogCaptureFixture) -> None:
    issuers = [
        issuer_spec("idp", "http://idp.example", jwks_uri="http://idp.example/jwks"),
        issuer_spec("local", "http://127.0.0.1:8080/dev", jwks_uri="http://localhost:8080/jwks"),
    ]
    exchange = {"token_endpoint": "http://sts.example/token", "client_id": "c", "client_secret": "s", "audience": "a"}
    servers = [server_spec(token_exchange=exchange)]
    hooks = {
        "audit": {"webhook": {"url": "http://hooks.example/audit", "secret": "s" * 16}},
        "approvals": {
            "webhook_url": "http://approve.example/",
            "webhook_secret": "w" * 16,
            "callback_secret": "c" * 16,
        },
    }
    fix = (
        "(not loopback) sends keys, tokens or signed events unencrypted; use https://, or set allow_insecure_http: true"
    )
    assert errors(issuers, servers, **hooks) == [
        f"issuers.0.issuer: plain http to http://idp.example {fix}",
        f"issuers.0.jwks_uri: plain http to http://idp.example {fix}",
        f"servers.0.token_exchange.token_endpoint: plain http to http://sts.example {fix}",
        f"audit.webhook.url: plain http to http://hooks.example {fix}",
        f"approvals.webhook_url: plain http to http://approve.example {fix}",
    ]
    doc = {"issuers": issuers, "servers": servers, **hooks, "allow_insecure_http": True}
    with caplog.at_level("WARNING", "mcp_authz.config"):
        parse_config(json.dumps(doc), "<test>")
    assert [(r.key, r.url) for r in caplog.records] == [  # type: ignore[attr-defined]
        ("issuers.0.issuer", "http://idp.example"),
        ("issuers.0.jwks_uri", "http://idp.example"),
        ("servers.0.token_exchange.token_endpoint", "http://sts.example"),
        ("audit.webhook.url", "http://hooks.example"),
        ("approvals.webhook_url", "http://approve.example"),
    ]


def test_an_unknown_issuer_is_reported_at_the_server_with_the_valid_names() -> None:
    found = errors(
        [
            issuer_spec("dev", jwks_uri="http://127.0.0.1:9/a"),
            issuer_spec("prod", "https://b.test", jwks_uri="http://127.0.0.1:9/b"),
        ],
        [server_spec("one"), server_spec("two", "https://two.test/mcp", issuers=["dev", "staging"])],
    )
    assert found == ["servers.1.issuers: unknown issuer 'staging'; the issuers are 'dev', 'prod'"]


# ---------------------------------------------------------------- every error, one case each

PROXY = {"trusted_cidrs": ["10.0.0.0/8"]}
APPROVALS = {"webhook_url": "https://approve.test/hook", "webhook_secret": "w" * 16, "callback_secret": "c" * 16}
EXCHANGE = {"token_endpoint": "https://sts.test/token", "client_id": "c", "client_secret": "s", "audience": "api"}
EVERY_ERROR = [
    # the file
    pytest.param({"issuers": REMOVE}, "issuers: Field required", id="issuers missing"),
    pytest.param({"servers": []}, "servers: at least one MCP server is required", id="servers empty"),
    # listen
    pytest.param(
        {"listen": {"grpc": "9191"}}, "listen.grpc: expected host:port, got '9191'", id="listen.grpc not host:port"
    ),
    pytest.param(
        {"listen": {"http": "127.0.0.1:70000"}},
        "listen.http: expected host:port, got '127.0.0.1:70000'",
        id="listen.http port too large",
    ),
    pytest.param(
        {"listen": {"discovery": "localhost"}},
        "listen.discovery: expected host:port, got 'localhost'",
        id="listen.discovery no port",
    ),
    pytest.param(
        {"listen": {"http": "127.0.0.1:9193", "http_shared_secret": "short"}},
        "listen.http_shared_secret: at least 16 characters",
        id="listen.http_shared_secret short",
    ),
    pytest.param(
        {"listen": {"http": "0.0.0.0:9193"}},
        "listen.http: 0.0.0.0:9193 is reachable beyond loopback, where anyone could forge the headers Envoy sets "
        "and get decisions: set http_shared_secret (Envoy sends it) or, behind a mesh sidecar that enforces mTLS "
        "and admits only Envoys, http_mesh_mtls: true; or listen on 127.0.0.1",
        id="listen.http beyond loopback",
    ),
    # issuers
    pytest.param(
        {"issuers": an_issuer(local_key_file="k.pem")},
        "issuers.0: set jwks_uri or local_key_file, not both",
        id="issuer both key sources",
    ),
    pytest.param(
        {"issuers": an_issuer(algorithms=[])},
        "issuers.0.algorithms: at least one algorithm is required",
        id="issuer no algorithms",
    ),
    pytest.param(
        {"issuers": an_issuer(tenants=["t1"])},
        "issuers.0.tenants: only for an issuer holding {tenantid} (e.g. .../{tenantid}/v2.0)",
        id="issuer tenants without a template",
    ),
    pytest.param(
        {"issuers": an_issuer(issuer="https://login.example/{tenantid}/v2.0", profile="entra")},
        "issuers.0.tenants: an issuer with {tenantid} needs the tenant ids it accepts",
        id="issuer template without tenants",
    ),
    pytest.param(
        {"issuers": [issuer_spec(issuer="https://l.example/{tenantid}/v2.0", profile="entra", tenants=["t"])]},
        "issuers.0.jwks_uri: an issuer with {tenantid} has no single metadata document; name the keys",
        id="issuer template without jwks_uri",
    ),
    pytest.param(
        {"issuers": an_issuer(issuer="https://login.example/{tenantid}/v2.0", tenants=["t1"])},
        "issuers.0.profile: 'generic' has no tenant claim; a {tenantid} issuer needs profile entra",
        id="issuer template without a tenant claim",
    ),
    pytest.param(
        {"issuers": an_issuer(issuer="https://login.example/{tenantid}/v2.0", profile="entra", tenants=["a/b"])},
        "issuers.0.tenants: 'a/b' is not a tenant id (letters, digits, '.', '_', '-')",
        id="issuer tenant id",
    ),
    pytest.param(
        {"issuers": an_issuer(profile="azure")},
        "issuers.0.profile: Input should be 'generic', 'entra', 'okta', 'auth0', 'keycloak' or 'google'",
        id="issuer profile unknown",
    ),
    pytest.param(
        {"issuers": an_issuer(algorithms=["HS256"])},
        "issuers.0.algorithms.0: Input should be 'RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', "
        "'ES384' or 'EdDSA'",
        id="issuer algorithm HS256",
    ),
    pytest.param(
        {"issuers": [issuer_spec(issuer="ftp://issuer.test", jwks_uri="https://issuer.test/jwks")]},
        "issuers.0.issuer: expected an http(s) URL, got 'ftp://issuer.test'",
        id="issuer url scheme",
    ),
    pytest.param(
        {"issuers": [issuer_spec(jwks_uri="file:///jwks")]},
        "issuers.0.jwks_uri: expected an http(s) URL, got 'file:///jwks'",
        id="issuer jwks_uri scheme",
    ),
    pytest.param(
        {"issuers": an_issuer(clock_skew=301)},
        "issuers.0.clock_skew: Input should be less than or equal to 300",
        id="issuer clock_skew bound",
    ),
    pytest.param(
        {"issuers": [issuer_spec(local_key_file="/nonexistent/key.pem")]},
        "issuers.0.local_key_file: no such file '/nonexistent/key.pem'",
        id="issuer local_key_file missing",
    ),
    pytest.param(
        {"issuers": [*an_issuer(), *an_issuer()]},
        "issuers.1.name: duplicate name 'main' (also issuers.0)",
        id="issuer name duplicate",
    ),
    # servers
    pytest.param(
        {"servers": a_server(resource="/mcp")},
        "servers.0.resource: expected an absolute http(s) URL without fragment, got '/mcp'",
        id="server resource not absolute",
    ),
    pytest.param(
        {"servers": a_server(resource="https://mcp.test/mcp#x")},
        "servers.0.resource: expected an absolute http(s) URL without fragment, got 'https://mcp.test/mcp#x'",
        id="server resource fragment",
    ),
    pytest.param(
        {"servers": a_server(upstream="mcp-server")},
        "servers.0.upstream: expected host:port, got 'mcp-server'",
        id="server upstream",
    ),
    pytest.param(
        {"servers": a_server(mode="lenient")},
        "servers.0.mode: Input should be 'strict', 'optional' or 'permissive'",
        id="server mode",
    ),
    pytest.param(
        {"servers": a_server(revisions=["2024-01-01"])},
        "servers.0.revisions: unknown revisions ['2024-01-01']; known: ['2024-11-05', '2025-03-26', '2025-06-18', "
        "'2025-11-25', '2026-07-28']",
        id="server revisions unknown",
    ),
    pytest.param(
        {"token_cache_size": 2_000_000},
        "token_cache_size: 2000000 is above the maximum 1000000 (~400 MB of cached tokens, ~3 GB with CEL "
        "policies); set at most 1000000: tokens beyond it are verified again, not refused",
        id="token cache above its maximum",
    ),
    pytest.param(
        {"servers": a_server(param_headers={"sql": {"Re gion": "region"}})},
        "servers.0.param_headers: sql: 'Re gion' is not an RFC 9110 token (the x-mcp-header value, e.g. Region)",
        id="param header not a token",
    ),
    pytest.param(
        {"servers": a_server(param_headers={"sql": {"Region": "region", "REGION": "zone"}})},
        "servers.0.param_headers: sql: 'Region' and 'REGION' are one header (names ignore case)",
        id="param header twice",
    ),
    pytest.param(
        {"servers": a_server(param_headers={"sql": {"Tenant": "target..tenant"}})},
        "servers.0.param_headers: sql.Tenant: 'target..tenant' is not a dotted path into the arguments "
        "(e.g. target.tenant)",
        id="param header path",
    ),
    pytest.param(
        {"servers": a_server(param_headers={"sql": {}})},
        "servers.0.param_headers: tool 'sql': name the tool and at least one Name: argument.path",
        id="param headers empty",
    ),
    pytest.param(
        {"servers": a_server(identity=["jwt", "jwt"])},
        "servers.0.identity: list jwt and/or proxy, each once",
        id="server identity twice",
    ),
    pytest.param(
        {"servers": a_server(identity=["proxy"], proxy={})},
        "servers.0: identity has proxy but proxy sets no trust rule: set proxy.trusted_principals and/or "
        "proxy.trusted_cidrs (or preset cloudflare with proxy.cloudflare), or anyone could send the identity "
        "headers",
        id="server proxy without trust",
    ),
    pytest.param(
        {"servers": a_server(proxy={"trusted_cidrs": ["10.0.0.300/8"]})},
        "servers.0.proxy.trusted_cidrs: not a CIDR: '10.0.0.300/8'",
        id="server proxy cidr",
    ),
    pytest.param(
        {"servers": a_server(proxy={"preset": "cloudflare", **PROXY})},
        "servers.0: proxy.preset cloudflare needs proxy.cloudflare (team_domain, audience): the "
        "Cf-Access-Jwt-Assertion must be verified, its headers alone prove nothing",
        id="server cloudflare preset without section",
    ),
    pytest.param(
        {
            "servers": a_server(
                proxy={"cloudflare": {"team_domain": "https://t.cloudflareaccess.com", "audience": "a"}, **PROXY}
            )
        },
        "servers.0: proxy.cloudflare is only used with proxy.preset cloudflare",
        id="server cloudflare section without preset",
    ),
    pytest.param(
        {
            "servers": a_server(
                proxy={
                    "preset": "cloudflare",
                    "cloudflare": {"team_domain": "http://t.cloudflareaccess.com", "audience": "a"},
                }
            )
        },
        "servers.0.proxy.cloudflare.team_domain: expected https://<team>.cloudflareaccess.com, got "
        "'http://t.cloudflareaccess.com'",
        id="server cloudflare team_domain",
    ),
    pytest.param(
        {
            "servers": a_server(
                proxy={
                    "preset": "cloudflare",
                    "cloudflare": {"team_domain": "https://t.cloudflareaccess.com", "audience": []},
                }
            )
        },
        "servers.0.proxy.cloudflare.audience: at least one non-empty AUD tag is required",
        id="server cloudflare audience empty",
    ),
    pytest.param(
        {
            "servers": a_server(
                proxy={
                    "preset": "cloudflare",
                    "cloudflare": {
                        "team_domain": "https://t.cloudflareaccess.com",
                        "audience": "a",
                        "jwks_uri": "ftp://x",
                    },
                }
            )
        },
        "servers.0.proxy.cloudflare.jwks_uri: expected an http(s) URL, got 'ftp://x'",
        id="server cloudflare jwks_uri",
    ),
    pytest.param(
        {"servers": a_server(proxy={"user_header": "X-Mcp-Authz-User", **PROXY})},
        "servers.0: proxy headers ['X-Mcp-Authz-User']: x-mcp-authz-* headers are set by Envoy only",
        id="server proxy reserved header",
    ),
    pytest.param(
        {"servers": a_server(credentials={"header": "Content-Length", "value_secret": "s"})},
        "servers.0.credentials.header: 'Content-Length' is not a header name a credential can be injected in",
        id="server credentials header",
    ),
    pytest.param(
        {"servers": a_server(credentials={"header": "X-Api-Key", "value_secret": "s", "prefix": "a\nb"})},
        "servers.0.credentials.prefix: control characters cannot be sent in a header",
        id="server credentials prefix",
    ),
    pytest.param(
        {"servers": a_server(credentials={"header": "X-Api-Key", "value_secret": "v2:00:00:00"})},
        "servers.0.credentials.value_secret: damaged value: the IV must be 12 bytes and the tag 16",
        id="server credentials v2 damaged",
    ),
    pytest.param(
        {
            "servers": a_server(
                credentials={"header": "X-Api-Key", "value_secret": "v2:" + "00" * 12 + ":" + "00" * 16 + ":00"}
            )
        },
        "servers.0.credentials.value_secret: the value is encrypted (v2:) but no key is configured (secrets.keys / "
        "key_files)",
        id="server credentials v2 without key",
    ),
    pytest.param(
        {"servers": a_server(credentials={"header": "Authorization", "value_secret": "s"}, token_exchange=EXCHANGE)},
        "servers.0: credentials.header and token_exchange.header must differ",
        id="server same injected header",
    ),
    pytest.param(
        {"servers": a_server(credentials={"header": "X-Mcp-Subject", "value_secret": "s"})},
        "servers.0: injected header ['x-mcp-subject'] is also an identity header",
        id="server injected is identity header",
    ),
    pytest.param(
        {"servers": a_server(token_exchange={**EXCHANGE, "audience": None})},
        "servers.0.token_exchange: set audience and/or resource of the downstream API",
        id="exchange no target",
    ),
    pytest.param(
        {"servers": a_server(token_exchange={**EXCHANGE, "issuer": "main"})},
        "servers.0.token_exchange: set token_endpoint or issuer (one of them)",
        id="exchange endpoint and issuer",
    ),
    pytest.param(
        {"servers": a_server(token_exchange={**EXCHANGE, "token_endpoint": "ftp://sts.test"})},
        "servers.0.token_exchange.token_endpoint: expected an http(s) URL, got 'ftp://sts.test'",
        id="exchange endpoint scheme",
    ),
    pytest.param(
        {"servers": a_server(token_exchange={**EXCHANGE, "token_endpoint": None, "issuer": "nope"})},
        "servers.0.token_exchange.issuer: 'nope' is not in issuers; the issuers are 'main'",
        id="exchange unknown issuer",
    ),
    pytest.param(
        {"servers": a_server(sessions={"hijack_status": 401})},
        "servers.0.sessions.hijack_status: Input should be 404 or 403",
        id="sessions hijack_status",
    ),
    pytest.param(
        {"servers": a_server(rate_limits=[{"name": "r", "limit": 1, "window": 1}] * 2)},
        "servers.0.rate_limits.1.name: duplicate name 'r' (also servers.0.rate_limits.0)",
        id="rate limit duplicate",
    ),
    pytest.param(
        {"servers": a_server(rate_limits=[{"name": "r", "limit": 0, "window": 1}])},
        "servers.0.rate_limits.0.limit: Input should be greater than or equal to 1",
        id="rate limit bound",
    ),
    pytest.param(
        {"servers": [*a_server(), server_spec(resource="https://other.test/mcp")]},
        "servers.1.name: duplicate name 'mcp' (also servers.0)",
        id="server name duplicate",
    ),
    pytest.param(
        {"servers": [*a_server(), server_spec("two")]},
        "servers.1.resource: duplicate resource 'https://mcp.test/mcp' (also servers.0)",
        id="server resource duplicate",
    ),
    pytest.param(
        {"servers": a_server(policy={"rules": [{"name": "r", "when": "1 +"}]})},
        "servers.0.policy.rules.0.when: rule 'r': invalid CEL expression '1 +': ",
        id="rule bad CEL",
    ),
    pytest.param(
        {"servers": a_server(policy={"rules": [{"name": "r", "effect": "maybe"}]})},
        "servers.0.policy.rules.0.effect: Input should be 'allow' or 'deny'",
        id="rule effect",
    ),
    pytest.param(
        {"servers": a_server(policy={"rules": [{"name": "r", "tools": ["x"], "approval": True}]})},
        "servers.0.policy.rules.0.approval: rules with approval: true need an approvals section",
        id="approval without section",
    ),
    pytest.param(
        {
            "servers": a_server(header_only=True, policy={"rules": [{"name": "r", "tools": ["x"], "approval": True}]}),
            "approvals": APPROVALS,
        },
        "servers.0.header_only: approval rules need the arguments, so header_only must be false",
        id="approval header_only",
    ),
    pytest.param(
        {"servers": a_server(filter_lists=True), "listen": {"http": "127.0.0.1:9193"}, "envoy": {"authorizer": "http"}},
        "servers.0.filter_lists needs envoy.authorizer: grpc (the HTTP ext_authz front cannot hand the caller to "
        "ext_proc as dynamic metadata)",
        id="filter_lists with http authorizer",
    ),
    # envoy, ext_proc
    pytest.param(
        {"envoy": {"authorizer": "http"}},
        "envoy.authorizer: http needs listen.http",
        id="envoy authorizer http without listen.http",
    ),
    pytest.param({"envoy": {"listen": "8080"}}, "envoy.listen: expected host:port, got '8080'", id="envoy listen"),
    pytest.param(
        {"envoy": {"max_request_bytes": 100}},
        "envoy.max_request_bytes: Input should be greater than or equal to 1024",
        id="envoy max_request_bytes",
    ),
    pytest.param(
        {"ext_proc": {"failure": "ignore"}},
        "ext_proc.failure: Input should be 'closed' or 'open'",
        id="ext_proc failure",
    ),
    # audit, telemetry, admin, secrets, approvals
    pytest.param(
        {"audit": {"webhook": {"url": "hooks.test", "secret": "s" * 16}}},
        "audit.webhook.url: expected an http(s) URL, got 'hooks.test'",
        id="audit webhook url",
    ),
    pytest.param(
        {"audit": {"webhook": {"url": "https://hooks.test", "secret": "short"}}},
        "audit.webhook.secret: the webhook secret must have at least 16 bytes",
        id="audit webhook secret",
    ),
    pytest.param(
        {"audit": {"webhook": {"url": "https://hooks.test", "secret": "v2:00:00:00000000000000"}}},
        "audit.webhook.secret: damaged value: the IV must be 12 bytes and the tag 16",
        id="audit webhook v2 secret without key",
    ),
    pytest.param(
        {"telemetry": {"otlp_endpoint": "collector:4318"}},
        "telemetry.otlp_endpoint: expected an http(s) URL, got 'collector:4318'",
        id="telemetry endpoint",
    ),
    pytest.param(
        {"telemetry": {"sample_ratio": 2}},
        "telemetry.sample_ratio: Input should be less than or equal to 1",
        id="telemetry sample_ratio",
    ),
    pytest.param({"admin": {"listen": "admin"}}, "admin.listen: expected host:port, got 'admin'", id="admin listen"),
    pytest.param({"admin": {"tls_cert": "c.pem"}}, "admin: set tls_cert and tls_key together", id="admin tls half"),
    pytest.param(
        {"admin": {"client_ca": "ca.pem"}},
        "admin: client_ca (mTLS) needs tls_cert and tls_key",
        id="admin client_ca without tls",
    ),
    pytest.param({"admin": {"token": "short"}}, "admin.token: at least 16 characters", id="admin token short"),
    pytest.param(
        {"admin": {"listen": "127.0.0.1:9300"}},
        "admin: listen is set but neither token nor client_ca (mTLS) is: the admin API would be open to anyone",
        id="admin open",
    ),
    pytest.param(
        {"secrets": {"keys": ["short"]}},
        "secrets.keys.0: a key must be exactly 32 bytes, this one has 5",
        id="secrets key length",
    ),
    pytest.param(
        {"secrets": {"key_files": ["/nonexistent/key"]}},
        "secrets.key_files.0: cannot read '/nonexistent/key': No such file or directory",
        id="secrets key file missing",
    ),
    pytest.param(
        {"approvals": {**APPROVALS, "webhook_url": "approve.test"}},
        "approvals.webhook_url: expected an http(s) URL, got 'approve.test'",
        id="approvals url",
    ),
    pytest.param(
        {"approvals": {**APPROVALS, "wait_ms": 1000}},
        "approvals.wait_ms (1000) must be below envoy.timeout_ms (1000), or Envoy gives up before the answer",
        id="approvals wait_ms",
    ),
    pytest.param(
        {"approvals": {**APPROVALS, "callback_secret": "short"}},
        "approvals.callback_secret: at least 16 bytes are needed to sign with it, this one has 5",
        id="approvals callback_secret short",
    ),
    # store
    pytest.param(
        {"store": {"url": "http://redis:6379"}},
        "store.url: expected a redis://, rediss://, unix://, redis+sentinel:// or rediss+sentinel:// URL",
        id="store url scheme",
    ),
    pytest.param(
        {"store": {"url": "redis+sentinel://h:26379"}},
        "store.url: a sentinel URL is redis+sentinel://host:port[,host:port...]/MASTER[/DB]",
        id="store sentinel url shape",
    ),
    pytest.param(
        {"store": {"url": "redis+sentinel://h:26379/m/x"}},
        "store.url: the database of a sentinel URL (after the master's name) is a number",
        id="store sentinel url db",
    ),
    pytest.param(
        {"store": {"url": "redis+sentinel://h/m"}},
        "store.url: sentinel 0 of the URL is not host:port",
        id="store sentinel url node",
    ),
    pytest.param(
        {"store": {"sentinel": {"nodes": ["h"], "master": "m"}}},
        "store.sentinel.nodes: entry 0: expected host:port, got 'h'",
        id="store sentinel nodes",
    ),
    pytest.param(
        {"store": {"cluster": {"nodes": []}}},
        "store.cluster.nodes: List should have at least 1 item after validation, not 0",
        id="store cluster nodes",
    ),
    pytest.param(
        {"store": {"key_prefix": "{x}"}},
        "store.key_prefix: must not contain { or }: the store puts the revocation keys in one hash slot with them",
        id="store key_prefix",
    ),
    pytest.param(
        {"store": {"url": "redis://h:6379", "cluster": {"nodes": ["h:7000"]}}},
        "store: set one of url, sentinel, cluster (found url and cluster)",
        id="store two topologies",
    ),
    pytest.param(
        {"store": {"url": "redis://h:6379", "password": "p"}},
        "store.password: only with sentinel or cluster; a url carries its own",
        id="store url with password key",
    ),
    pytest.param(
        {"store": {"revocation_replicas": 1}},
        "store: revocation_replicas needs Redis (url, sentinel or cluster)",
        id="store revocation_replicas in memory",
    ),
    pytest.param(
        {"store": {"failure": {"sessions": "ignore"}}},
        "store.failure.sessions: Input should be 'closed' or 'open'",
        id="store failure",
    ),
    # the loader
    pytest.param(
        {"store": {"url": "${MCP_AUTHZ_TEST_UNSET}"}},
        "store.url: environment variable MCP_AUTHZ_TEST_UNSET is not set",
        id="env var unset",
    ),
]


@pytest.mark.parametrize(("overrides", "expected"), EVERY_ERROR)
def test_every_validation_error_names_its_key(overrides: dict[str, Any], expected: str) -> None:
    """``overrides`` replace top-level keys of a valid document (REMOVE drops one); exactly one error results."""
    doc: dict[str, Any] = {"issuers": an_issuer(), "servers": a_server()}
    doc.update(overrides)
    found = refusal({k: v for k, v in doc.items() if v is not REMOVE})
    if expected.endswith(": "):  # a message that goes on with the library's own text
        assert len(found) == 1 and found[0].startswith(expected), found
    else:
        assert found == [expected]


def test_a_file_that_is_no_mapping_or_cannot_be_read(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_config("[1, 2]", "<test>")
    assert refused.value.errors == ["<test>: expected a mapping at the top level"]
    with pytest.raises(ConfigError) as refused:
        load_config(tmp_path / "missing.yaml")
    assert refused.value.errors == [f"{tmp_path / 'missing.yaml'}: cannot read: No such file or directory"]
