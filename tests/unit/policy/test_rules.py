"""Policy rules (authz/policy/rules.py) and CEL conditions (authz/policy/cel.py)."""

from __future__ import annotations

from typing import Any

import pytest
from support import enveloped, http_request, make_config, policy, rpc, server_spec, stateless_headers, tool_call

from authz import request
from authz.config.cel import CelError, Expression
from authz.config.errors import ConfigError
from authz.config.runtime import Policy, Server
from authz.errors import Forbidden, InsufficientScope, MissingToken, Refusal
from authz.model import ANONYMOUS, Caller, HttpRequest, McpRequest
from authz.policy.rules import authorize


def make_server(pol: dict[str, Any] | None) -> Server:
    return make_config(servers=[server_spec(policy=pol)]).servers["mcp"]


def compile_policy(*rules: dict[str, Any], default: str = "deny") -> Policy:
    compiled = make_server(policy(*rules, default=default)).policy
    assert compiled is not None
    return compiled


def caller(*scopes: str, **claims: Any) -> Caller:
    return Caller(subject="alice", claims={"sub": "alice", **claims}, scopes=frozenset(scopes), client_id="c1")


def decide(pol: Policy | None, who: Caller, req: HttpRequest) -> str | None:
    server = make_server(None)
    mcp = request.parse(req, server)
    assert isinstance(mcp, McpRequest), mcp
    return authorize(pol, who, mcp, req)


def refusal_of(pol: Policy, who: Caller, req: HttpRequest) -> Refusal:
    with pytest.raises(Refusal) as info:
        decide(pol, who, req)
    return info.value


def call(name: str) -> HttpRequest:
    return http_request(tool_call(name))


# ---------------------------------------------------------------- matching


def test_no_policy_allows_any_caller() -> None:
    assert decide(None, caller(), call("anything")) is None
    assert decide(None, ANONYMOUS, call("anything")) is None


def test_first_match_decides() -> None:
    deny_first = compile_policy(
        {"name": "no-delete", "tools": ["delete_*"], "effect": "deny"},
        {"name": "tools", "tools": ["*"]},
    )
    assert decide(deny_first, caller(), call("read_repo")) == "tools"
    refusal = refusal_of(deny_first, caller(), call("delete_repo"))
    assert isinstance(refusal, Forbidden)
    assert (refusal.status, refusal.reason, refusal.rule) == (403, "policy_denied", "no-delete")

    allow_first = compile_policy(
        {"name": "tools", "tools": ["*"]},
        {"name": "no-delete", "tools": ["delete_*"], "effect": "deny"},
    )
    assert decide(allow_first, caller(), call("delete_repo")) == "tools"


def test_globs() -> None:
    pol = compile_policy(
        {"name": "star", "tools": ["read_*"]},
        {"name": "one", "tools": ["get?"]},
        {"name": "class", "tools": ["x[ab]"]},
        {"name": "exact", "tools": ["exact.name"]},
    )
    assert decide(pol, caller(), call("read_repo")) == "star"
    assert decide(pol, caller(), call("read_")) == "star"
    assert decide(pol, caller(), call("get1")) == "one"
    assert decide(pol, caller(), call("xb")) == "class"
    assert decide(pol, caller(), call("exact.name")) == "exact"
    assert decide(pol, caller(), call("read_a\n")) == "star"  # * spans any character, newline included
    for name in ("xread_repo", "read", "get12", "get", "xc", "exactXname", "exact.name2", "READ_repo"):
        assert refusal_of(pol, caller(), call(name)).reason == "policy_no_match", name


def test_rule_with_tools_matches_only_tools_call() -> None:
    pol = compile_policy({"name": "tools", "tools": ["*"]})
    assert decide(pol, caller(), call("x")) == "tools"
    assert refusal_of(pol, caller(), http_request(rpc("tools/list"))).reason == "policy_no_match"
    assert refusal_of(pol, caller(), http_request(rpc("prompts/get", {"name": "x"}))).reason == "policy_no_match"


def test_methods_prompts_resources() -> None:
    pol = compile_policy(
        {"name": "lists", "methods": ["*/list", "ping"]},
        {"name": "prompt", "prompts": ["greet*"]},
        {"name": "public", "resources": ["file:///pub/*"]},
    )
    assert decide(pol, caller(), http_request(rpc("tools/list"))) == "lists"
    assert decide(pol, caller(), http_request(rpc("resources/list"))) == "lists"
    assert decide(pol, caller(), http_request(rpc("ping"))) == "lists"
    assert decide(pol, caller(), http_request(rpc("prompts/get", {"name": "greeting"}))) == "prompt"
    for method in ("resources/read", "resources/subscribe", "resources/unsubscribe"):
        assert decide(pol, caller(), http_request(rpc(method, {"uri": "file:///pub/a"}))) == "public"
    assert refusal_of(pol, caller(), http_request(rpc("resources/read", {"uri": "file:///priv/a"}))).reason == (
        "policy_no_match"
    )
    assert refusal_of(pol, caller(), http_request(rpc("prompts/get", {"name": "other"}))).reason == "policy_no_match"
    assert refusal_of(pol, caller(), http_request(rpc("tools/list/x"))).reason == "policy_no_match"


def test_http_methods() -> None:
    pol = compile_policy({"name": "post-only", "http_methods": ["post"]})
    assert decide(pol, caller(), http_request(rpc("ping"))) == "post-only"
    assert refusal_of(pol, caller(), http_request(method="GET")).reason == "policy_no_match"


def test_get_and_delete_match_only_unconstrained_rules() -> None:
    pol = compile_policy(
        {"name": "tools", "tools": ["*"]},
        {"name": "methods", "methods": ["*"]},
        {"name": "resources", "resources": ["*"]},
        {"name": "prompts", "prompts": ["*"]},
        {"name": "stream", "http_methods": ["GET"]},
    )
    assert decide(pol, caller(), http_request(method="GET")) == "stream"
    assert refusal_of(pol, caller(), http_request(method="DELETE")).reason == "policy_no_match"
    scoped = compile_policy({"name": "any", "scopes": ["mcp"]})
    assert decide(scoped, caller("mcp"), http_request(method="DELETE")) == "any"
    assert isinstance(refusal_of(scoped, caller(), http_request(method="DELETE")), InsufficientScope)


# ---------------------------------------------------------------- scopes


def test_all_of_scopes_challenge_names_the_rule_scopes() -> None:
    pol = compile_policy({"name": "write", "tools": ["*"], "scopes": ["tools:write", "tools:read", "offline_access"]})
    assert decide(pol, caller("tools:read", "tools:write", "offline_access"), call("x")) == "write"
    refusal = refusal_of(pol, caller("tools:read"), call("x"))
    assert isinstance(refusal, InsufficientScope)
    assert (refusal.status, refusal.reason, refusal.rule) == (403, "insufficient_scope", "write")
    # the scopes this operation needs (already-held ones included), never offline_access
    assert refusal.scopes == ("tools:read", "tools:write")


def test_any_of_scopes() -> None:
    pol = compile_policy({"name": "either", "tools": ["*"], "any_scopes": ["repo:admin", "repo:owner"]})
    assert decide(pol, caller("repo:owner"), call("x")) == "either"
    assert decide(pol, caller("repo:admin"), call("x")) == "either"
    refusal = refusal_of(pol, caller("tools:read"), call("x"))
    assert isinstance(refusal, InsufficientScope)
    assert refusal.scopes == ("repo:admin",)


def test_all_of_plus_any_of() -> None:
    pol = compile_policy({"name": "both", "tools": ["*"], "scopes": ["a"], "any_scopes": ["b", "c"]})
    assert decide(pol, caller("a", "c"), call("x")) == "both"
    refusal = refusal_of(pol, caller("c"), call("x"))
    assert isinstance(refusal, InsufficientScope) and refusal.scopes == ("a",)
    refusal = refusal_of(pol, caller("a"), call("x"))
    assert isinstance(refusal, InsufficientScope) and refusal.scopes == ("a", "b")


def test_offline_access_never_challenged() -> None:
    pol = compile_policy({"name": "only", "tools": ["*"], "scopes": ["offline_access"]})
    refusal = refusal_of(pol, caller(), call("x"))
    assert isinstance(refusal, InsufficientScope)
    assert "offline_access" not in refusal.scopes


def test_anonymous_caller_gets_missing_token() -> None:
    pol = compile_policy(
        {"name": "scoped", "tools": ["*"], "scopes": ["tools:read"]}, {"name": "lists", "methods": ["*/list"]}
    )
    refusal = refusal_of(pol, ANONYMOUS, call("x"))
    assert isinstance(refusal, MissingToken)
    assert (refusal.status, refusal.rule) == (401, "scoped")
    # an allow rule without scopes admits an anonymous caller
    assert decide(pol, ANONYMOUS, http_request(rpc("tools/list"))) == "lists"
    # no rule matches an anonymous caller: log in, rather than 403
    assert isinstance(refusal_of(pol, ANONYMOUS, http_request(rpc("ping"))), MissingToken)


# ---------------------------------------------------------------- CEL


def test_cel_group_membership() -> None:
    pol = compile_policy(
        {"name": "admins", "tools": ["*"], "scopes": ["tools:write"], "when": '"admins" in jwt.groups'}
    )
    admin = caller("tools:write", groups=["staff", "admins"])
    staff = caller("tools:write", groups=["staff"])
    assert decide(pol, admin, call("x")) == "admins"
    refusal = refusal_of(pol, staff, call("x"))
    assert isinstance(refusal, Forbidden)
    assert (refusal.reason, refusal.rule) == ("policy_condition_failed", "admins")


@pytest.mark.parametrize(
    "claims",
    [{}, {"groups": None}, {"groups": "admins"}, {"groups": 5}],
)
def test_cel_error_or_non_boolean_refuses(claims: dict[str, Any]) -> None:
    pol = compile_policy({"name": "admins", "tools": ["*"], "when": '"admins" in jwt.groups'})
    refusal = refusal_of(pol, caller(**claims), call("x"))
    assert isinstance(refusal, Forbidden)
    assert (refusal.reason, refusal.rule) == ("policy_condition_failed", "admins")


def test_cel_sees_mcp_and_request() -> None:
    pol = compile_policy(
        {
            "name": "not-prod",
            "tools": ["deploy"],
            "when": 'mcp.arguments.env != "prod" && mcp.tool == "deploy" && mcp.method == "tools/call"',
        },
        {
            "name": "header",
            "methods": ["ping"],
            "when": 'request.headers["x-team"] == "blue" && request.method == "POST"',
        },
    )
    assert decide(pol, caller(), http_request(tool_call("deploy", env="dev"))) == "not-prod"
    assert refusal_of(pol, caller(), http_request(tool_call("deploy", env="prod"))).reason == "policy_condition_failed"
    assert refusal_of(pol, caller(), http_request(tool_call("deploy"))).reason == "policy_condition_failed"
    assert decide(pol, caller(), http_request(rpc("ping"), headers={"x-team": "blue"})) == "header"
    assert refusal_of(pol, caller(), http_request(rpc("ping"), headers={"x-team": "red"})).rule == "header"


def test_cel_sees_the_declared_param_headers_as_mcp_params() -> None:
    """MCP 2026-07-28 ``Mcp-Param-{Name}``: the checked values, from the body; {} where none is declared."""
    spec = server_spec(
        param_headers={"query": {"Region": "target.region"}},
        policy=policy(
            {"name": "eu-only", "tools": ["*"], "when": 'mcp.params.Region == "eu" && mcp.params.size() == 1'}
        ),
    )
    server = make_config(servers=[spec]).servers["mcp"]
    assert server.policy is not None

    def decided(name: str, region: str) -> str | None:
        body = enveloped(tool_call(name, target={"region": region}))
        req = http_request(body, headers={**stateless_headers("tools/call", name), "mcp-param-region": region})
        mcp = request.parse(req, server)
        assert isinstance(mcp, McpRequest), mcp
        assert server.policy is not None
        return authorize(server.policy, caller(), mcp, req)

    assert decided("query", "eu") == "eu-only"
    with pytest.raises(Forbidden, match="not true"):
        decided("query", "us")
    with pytest.raises(Forbidden, match="not true"):
        decided("other", "eu")  # no declaration for this tool: its header is not read


def test_cel_non_boolean_result_is_false() -> None:
    assert Expression("1 + 1").evaluate({}) is False
    assert Expression('"true"').evaluate({}) is False
    assert Expression("true").evaluate({}) is True
    assert Expression("x > 1").evaluate({}) is False  # unknown variable: error → false


def test_invalid_cel_is_a_config_error() -> None:
    with pytest.raises(CelError):
        Expression("this is (not cel")
    with pytest.raises(ConfigError) as info:
        make_server(policy({"name": "bad", "when": "1 +"}))
    assert "servers.0.policy.rules.0.when" in str(info.value)


# ---------------------------------------------------------------- effects, defaults, batches


def test_default_allow_and_deny() -> None:
    allow = compile_policy({"name": "no-delete", "tools": ["delete_*"], "effect": "deny"}, default="allow")
    assert decide(allow, caller(), call("read")) is None
    assert decide(allow, caller(), http_request(method="GET")) is None
    assert refusal_of(allow, caller(), call("delete_x")).reason == "policy_denied"
    deny = compile_policy({"name": "read", "tools": ["read"]})
    refusal = refusal_of(deny, caller(), call("write"))
    assert isinstance(refusal, Forbidden)
    assert (refusal.status, refusal.reason, refusal.rule) == (403, "policy_no_match", None)


def test_deny_effect_applies_even_with_scopes() -> None:
    pol = compile_policy({"name": "never", "tools": ["x"], "effect": "deny"})
    refusal = refusal_of(pol, caller("tools:read", "admin"), call("x"))
    assert isinstance(refusal, Forbidden) and refusal.reason == "policy_denied"


def test_batch_with_one_forbidden_element_is_refused() -> None:
    pol = compile_policy(
        {"name": "no-delete", "tools": ["delete_repo"], "effect": "deny"},
        {"name": "rest", "methods": ["*"]},
    )
    assert decide(pol, caller(), http_request([tool_call("a"), rpc("tools/list", id=2)])) == "rest"
    batch = [tool_call("a", id=1), rpc("tools/list", id=2), tool_call("delete_repo", id=3)]
    refusal = refusal_of(pol, caller(), http_request(batch))
    assert (refusal.reason, refusal.rule) == ("policy_denied", "no-delete")


def test_batch_element_needing_more_scope_challenges_for_it() -> None:
    pol = compile_policy(
        {"name": "write", "tools": ["write_*"], "scopes": ["tools:write"]},
        {"name": "read", "tools": ["*"], "scopes": ["tools:read"]},
    )
    refusal = refusal_of(pol, caller("tools:read"), http_request([tool_call("read_a"), tool_call("write_b", id=2)]))
    assert isinstance(refusal, InsufficientScope) and refusal.scopes == ("tools:write",)


def test_bare_responses_carry_no_operation() -> None:
    # A client's reply to a server-initiated request (sampling, elicitation) is not an operation:
    # it is not matched against rules, so even default deny lets it through to the server.
    pol = compile_policy({"name": "nothing", "tools": ["none"]})
    assert decide(pol, caller(), http_request({"jsonrpc": "2.0", "id": 1, "result": {}})) is None
    mixed = [{"jsonrpc": "2.0", "id": 1, "result": {}}, tool_call("other", id=2)]
    assert refusal_of(pol, caller(), http_request(mixed)).reason == "policy_no_match"
