"""Trusted proxy identity (authz/identity/proxy.py, bearer.identify's ordering, config): a Checker end
to end with HttpRequests built by hand, carrying the mTLS principal and source address Envoy sends."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from support import DevStack, dev_stack, http_request, issuer_spec, policy, server_spec, tool_call

from authz.cli import main
from authz.config.errors import ConfigError
from authz.model import Decision, HttpRequest

PROXY = "spiffe://example.org/ns/auth/sa/oauth2-proxy"
OAUTH2 = {"x-auth-request-user": "bob", "x-auth-request-email": "bob@example.org"}


def proxy_server(identity: list[str] | None = None, **proxy: Any) -> dict[str, Any]:
    settings = {"preset": "oauth2-proxy", "trusted_principals": [PROXY], **proxy}
    return server_spec(identity=identity or ["proxy"], proxy=settings)


def request(
    headers: dict[str, str] | None = None,
    *,
    principal: str = PROXY,
    address: str = "10.1.2.3",
    token: str | None = None,
    tool: str = "search",
) -> HttpRequest:
    req = http_request(tool_call(tool), headers=headers, token=token)
    return dataclasses.replace(req, source_principal=principal, source_address=address)


def set_headers(decision: Decision) -> dict[str, str]:
    return dict(decision.set_headers)


async def check(stack: DevStack, req: HttpRequest) -> Decision:
    return await stack.checker.check(req)


# ---------------------------------------------------------------- trusted proxy


async def test_trusted_principal_is_allowed_with_identity_headers(tmp_path: Path) -> None:
    stack = dev_stack(tmp_path, [proxy_server()])
    decision = await check(stack, request({**OAUTH2, "x-auth-request-groups": "admins, dev,,"}))
    assert (decision.allowed, decision.status) == (True, 200)
    assert decision.caller is not None
    assert decision.caller.mode == "proxy"
    assert decision.caller.subject == "bob"
    assert decision.caller.scopes == frozenset()
    assert dict(decision.caller.claims) == {"sub": "bob", "email": "bob@example.org", "groups": ["admins", "dev"]}
    assert set_headers(decision) == {"x-mcp-subject": "bob"}
    for name in ("authorization", "x-auth-request-user", "x-auth-request-email", "x-auth-request-groups"):
        assert name in decision.remove_headers


async def test_principal_glob_and_cidr_both_must_pass(tmp_path: Path) -> None:
    server = proxy_server(trusted_principals=["spiffe://example.org/ns/auth/*"], trusted_cidrs=["10.0.0.0/8"])
    stack = dev_stack(tmp_path, [server])
    assert (await check(stack, request(OAUTH2))).allowed
    outside = await check(stack, request(OAUTH2, address="192.168.1.5"))
    assert (outside.allowed, outside.status, outside.reason) == (False, 401, "proxy_untrusted")
    wrong = await check(stack, request(OAUTH2, principal="spiffe://example.org/ns/other/sa/x"))
    assert (wrong.allowed, wrong.status, wrong.reason) == (False, 401, "proxy_untrusted")


async def test_cidr_only_trust_checks_the_address(tmp_path: Path) -> None:
    stack = dev_stack(tmp_path, [proxy_server(trusted_principals=[], trusted_cidrs=["10.0.0.0/8", "fd00::/8"])])
    assert (await check(stack, request(OAUTH2, principal=""))).allowed
    assert (await check(stack, request(OAUTH2, principal="", address="fd00::1"))).allowed
    for address in ("11.0.0.1", "", "not-an-ip", "::1"):
        decision = await check(stack, request(OAUTH2, principal="", address=address))
        assert (decision.allowed, decision.status, decision.reason) == (False, 401, "proxy_untrusted"), address


async def test_wrong_principal_is_401_invalid_token_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stack = dev_stack(tmp_path, [proxy_server()])
    with caplog.at_level(logging.WARNING, logger="mcp_authz.identity.proxy"):
        decision = await check(stack, request(OAUTH2, principal="spiffe://example.org/ns/evil/sa/x"))
    assert (decision.allowed, decision.status, decision.reason) == (False, 401, "proxy_untrusted")
    assert decision.caller is None and decision.set_headers == ()
    www = dict(decision.deny_headers)["www-authenticate"]
    assert www.startswith('Bearer error="invalid_token"')
    assert json.loads(decision.body)["error"] == "invalid_token"
    assert any(getattr(r, "reason", None) == "proxy_untrusted" for r in caplog.records)


async def test_no_principal_at_all_is_untrusted(tmp_path: Path) -> None:
    stack = dev_stack(tmp_path, [proxy_server()])
    decision = await check(stack, request({"x-auth-request-user": "bob"}, principal=""))
    assert (decision.allowed, decision.reason) == (False, "proxy_untrusted")


async def test_untrusted_without_identity_headers_is_just_unidentified(tmp_path: Path) -> None:
    stack = dev_stack(tmp_path, [proxy_server()])
    decision = await check(stack, request(principal="spiffe://other"))
    assert (decision.allowed, decision.status, decision.reason) == (False, 401, "token_missing")


async def test_trusted_without_user_header_is_token_missing(tmp_path: Path) -> None:
    stack = dev_stack(tmp_path, [proxy_server()])
    decision = await check(stack, request({"x-auth-request-email": "bob@example.org"}))
    assert (decision.allowed, decision.status, decision.reason) == (False, 401, "token_missing")


async def test_repeated_user_header_is_refused(tmp_path: Path) -> None:
    stack = dev_stack(tmp_path, [proxy_server()])
    req = http_request(tool_call("search"), header_values={"x-auth-request-user": ("bob", "admin")})
    decision = await check(stack, dataclasses.replace(req, source_principal=PROXY))
    assert (decision.allowed, decision.status, decision.reason) == (False, 401, "proxy_header_repeated")


async def test_authelia_preset_and_custom_headers(tmp_path: Path) -> None:
    stack = dev_stack(tmp_path, [proxy_server(preset="authelia")])
    decision = await check(stack, request({"remote-user": "carol", "remote-groups": "ops"}))
    assert decision.allowed and decision.caller is not None
    assert dict(decision.caller.claims) == {"sub": "carol", "groups": ["ops"]}
    assert "x-auth-request-user" not in decision.remove_headers
    assert {"remote-user", "remote-email", "remote-groups"} <= set(decision.remove_headers)

    custom = proxy_server(preset="none", email_header="X-Mail")
    stack = dev_stack(tmp_path, [custom])
    decision = await check(stack, request({"x-authenticated-user": "dave", "x-mail": "d@example.org"}))
    assert decision.allowed and decision.caller is not None
    assert dict(decision.caller.claims) == {"sub": "dave", "email": "d@example.org", "groups": []}
    assert {"x-authenticated-user", "x-mail"} <= set(decision.remove_headers)


# ---------------------------------------------------------------- strip mode


async def test_strip_ignores_untrusted_headers_and_goes_on(tmp_path: Path) -> None:
    stack = dev_stack(tmp_path, [proxy_server(["proxy", "jwt"], on_untrusted="strip")])
    untrusted = request(OAUTH2, principal="spiffe://evil")
    decision = await check(stack, untrusted)
    assert (decision.allowed, decision.status, decision.reason) == (False, 401, "token_missing")

    with_token = dataclasses.replace(
        untrusted, headers={**untrusted.headers, "authorization": f"Bearer {stack.token()}"}
    )
    decision = await check(stack, with_token)
    assert decision.allowed and decision.caller is not None
    assert (decision.caller.mode, decision.caller.subject) == ("jwt", "alice")
    assert {"x-auth-request-user", "x-auth-request-email", "authorization"} <= set(decision.remove_headers)


async def test_strip_in_optional_mode_leaves_an_anonymous_caller(tmp_path: Path) -> None:
    server = {**proxy_server(on_untrusted="strip"), "mode": "optional"}
    stack = dev_stack(tmp_path, [server])
    decision = await check(stack, request(OAUTH2, principal="spiffe://evil"))
    assert decision.allowed and decision.caller is not None
    assert decision.caller.anonymous
    assert "x-mcp-subject" not in set_headers(decision)
    assert {"x-auth-request-user", "x-auth-request-email", "x-mcp-subject"} <= set(decision.remove_headers)


# ---------------------------------------------------------------- both modes, in order


async def test_proxy_then_jwt_prefers_the_proxy_user(tmp_path: Path) -> None:
    stack = dev_stack(tmp_path, [proxy_server(["proxy", "jwt"])])
    decision = await check(stack, request(OAUTH2, token=stack.token()))
    assert decision.allowed and decision.caller is not None
    assert (decision.caller.mode, decision.caller.subject) == ("proxy", "bob")
    jwt_only = await check(stack, request(token=stack.token()))
    assert jwt_only.caller is not None and (jwt_only.caller.mode, jwt_only.caller.subject) == ("jwt", "alice")


async def test_jwt_then_proxy_prefers_the_token(tmp_path: Path) -> None:
    stack = dev_stack(tmp_path, [proxy_server(["jwt", "proxy"])])
    decision = await check(stack, request(OAUTH2, token=stack.token()))
    assert decision.allowed and decision.caller is not None
    assert (decision.caller.mode, decision.caller.subject) == ("jwt", "alice")
    assert "x-auth-request-user" in decision.remove_headers
    proxy_only = await check(stack, request(OAUTH2))
    assert proxy_only.caller is not None and proxy_only.caller.mode == "proxy"
    bad_token = await check(stack, request(OAUTH2, token="not.a.jwt"))
    assert (bad_token.allowed, bad_token.status) == (False, 401)


async def test_permissive_bad_token_falls_through_to_the_proxy(tmp_path: Path) -> None:
    stack = dev_stack(tmp_path, [{**proxy_server(["jwt", "proxy"]), "mode": "permissive"}])
    decision = await check(stack, request(OAUTH2, token="not.a.jwt"))
    assert decision.allowed and decision.caller is not None
    assert (decision.caller.mode, decision.caller.subject) == ("proxy", "bob")
    anonymous = await check(stack, request(token="not.a.jwt"))
    assert anonymous.allowed and anonymous.caller is not None and anonymous.caller.anonymous


async def test_jwt_only_server_does_not_believe_proxy_headers(tmp_path: Path) -> None:
    stack = dev_stack(tmp_path, [server_spec()])
    decision = await check(stack, request(OAUTH2))
    assert (decision.allowed, decision.reason) == (False, "token_missing")


# ---------------------------------------------------------------- policy on proxy identity


async def test_group_rule_allows_an_admin_proxy_user_and_refuses_another(tmp_path: Path) -> None:
    rules = policy(
        {"name": "admins", "tools": ["delete_*"], "when": '"admins" in jwt.groups'},
        {"name": "read", "tools": ["search"]},
    )
    stack = dev_stack(tmp_path, [{**proxy_server(), "policy": rules}])
    admin = await check(stack, request({**OAUTH2, "x-auth-request-groups": "dev,admins"}, tool="delete_all"))
    assert (admin.allowed, admin.rule) == (True, "admins")
    other = await check(stack, request({**OAUTH2, "x-auth-request-groups": "dev"}, tool="delete_all"))
    assert (other.allowed, other.status) == (False, 403)
    no_groups = await check(stack, request(OAUTH2, tool="delete_all"))
    assert (no_groups.allowed, no_groups.status) == (False, 403)
    reader = await check(stack, request(OAUTH2, tool="search"))
    assert (reader.allowed, reader.rule) == (True, "read")


# ---------------------------------------------------------------- config


def _check_file(tmp_path: Path, server: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    doc = {"issuers": [issuer_spec(jwks_uri="http://127.0.0.1:9/jwks")], "servers": [server]}
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(doc), encoding="utf-8")
    try:
        code = main(["config", "check", str(path)])
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.err + captured.out


def test_config_check_refuses_proxy_without_trust_rule(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _check_file(tmp_path, server_spec(identity=["proxy"], proxy={"preset": "authelia"}), capsys)
    assert code != 0
    assert "servers.0" in out and "trusted_principals" in out and "trusted_cidrs" in out
    code, out = _check_file(tmp_path, server_spec(identity=["jwt", "proxy"]), capsys)
    assert code != 0 and "no trust rule" in out


def test_config_check_refuses_cloudflare_without_its_assertion_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = _check_file(tmp_path, proxy_server(preset="cloudflare"), capsys)
    assert code != 0 and "proxy.preset cloudflare needs proxy.cloudflare" in out
    cloudflare = {"team_domain": "https://team.cloudflareaccess.com", "audience": "aud-tag"}
    code, out = _check_file(tmp_path, proxy_server(cloudflare=cloudflare), capsys)
    assert code != 0 and "only used with proxy.preset cloudflare" in out


def test_config_check_accepts_a_trusted_proxy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = _check_file(tmp_path, proxy_server(["jwt", "proxy"], trusted_cidrs=["10.0.0.0/8"]), capsys)
    assert code == 0


@pytest.mark.parametrize(
    ("server", "needle"),
    [
        (proxy_server(trusted_cidrs=["10.0.0.0/33"]), "not a CIDR"),
        (proxy_server(["proxy", "proxy"]), "each once"),
        (server_spec(identity=["ldap"]), "identity"),
        (server_spec(identity=[]), "each once"),
        (proxy_server(on_untrusted="allow"), "on_untrusted"),
    ],
)
def test_bad_proxy_settings_are_config_errors(tmp_path: Path, server: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError) as bad:
        dev_stack(tmp_path, [server])
    assert any(needle in e for e in bad.value.errors), bad.value.errors


# ---------------------------------------------------------------- passthrough headers


async def test_passthrough_headers_only_with_the_proxy_identity(tmp_path: Path) -> None:
    server = proxy_server(["proxy", "jwt"], passthrough_headers=["X-Tenant-Id"], on_untrusted="strip")
    stack = dev_stack(tmp_path, [server])
    tenant = {"x-tenant-id": "acme"}
    from_proxy = await check(stack, request({**OAUTH2, **tenant}))
    assert from_proxy.allowed and "x-tenant-id" not in from_proxy.remove_headers
    with_token = await check(stack, request(tenant, token=stack.token()))
    assert with_token.allowed and "x-tenant-id" in with_token.remove_headers
    stripped = await check(stack, request({**OAUTH2, **tenant}, principal="spiffe://evil", token=stack.token()))
    assert stripped.allowed and stripped.caller is not None and stripped.caller.mode == "jwt"
    assert {"x-tenant-id", "x-auth-request-user"} <= set(stripped.remove_headers)
