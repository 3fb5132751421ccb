"""List filtering (authz/extproc/lists.py) and the handover from the Check (authz/extproc/metadata.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from google.protobuf import json_format
from support import make_config, policy, server_spec

from authz import contract, handover
from authz.extproc.lists import ListParseError, entry_call, filter_result, id_key, rewrite_json, rewrite_message
from authz.extproc.service import policy_check
from authz.front.grpc_service import to_check_response
from authz.model import Caller, Decision, McpCall, McpRequest
from authz.response import allow

RULES = policy(
    {"name": "lists", "methods": ["*/list"]},
    {"name": "read", "tools": ["search", "read_*"], "scopes": ["tools:read"]},
    {"name": "admin", "tools": ["admin_*"], "when": '"admins" in jwt.groups && jwt.level >= 2'},
    {"name": "prompts", "prompts": ["summarize"]},
    {"name": "docs", "resources": ["file:///docs/*"]},
)
TOOLS = [{"name": n, "inputSchema": {"type": "object"}} for n in ("search", "read_file", "delete_repo", "admin_reset")]


def server(**fields: Any) -> Any:
    return make_config(servers=[server_spec(policy=RULES, filter_lists=True, **fields)]).servers["mcp"]


def caller(*scopes: str, **claims: Any) -> Caller:
    return Caller(subject="alice", claims={"sub": "alice", **claims}, scopes=frozenset(scopes), client_id="c1")


def handover_of(who: Caller, *calls: McpCall, batch: bool = False) -> handover.Handover:
    """Encode as the Check does, through the CheckResponse Struct Envoy gets, and decode as the processor does."""
    mcp = McpRequest(http_method="POST", revision="2026-07-28", calls=calls, batch=batch)
    decision = allow(server(), who, mcp, "lists", source=("10.0.0.1", "spiffe://proxy"))
    struct = to_check_response(decision).dynamic_metadata
    return handover.decode({contract.HANDOVER_NAMESPACE: json_format.MessageToDict(struct)})


def allowed_for(who: Caller) -> Any:
    return policy_check(server(), handover_of(who, McpCall("tools/list", id=1)), {})


def response(result: Any, request_id: Any = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "result": result}


# ---------------------------------------------------------------- the policy decides each entry


def test_reader_keeps_search_and_read_file_and_every_other_field() -> None:
    result = {"tools": TOOLS, "nextCursor": "3", "_meta": {"x": 1}, "resultType": "complete"}
    kept, removed = filter_result("tools/list", result, allowed_for(caller("tools:read")))
    assert [t["name"] for t in kept["tools"]] == ["search", "read_file"]
    assert removed == 2
    assert {k: v for k, v in kept.items() if k != "tools"} == {k: v for k, v in result.items() if k != "tools"}
    assert kept["tools"][0] is TOOLS[0]  # entries themselves untouched


def test_a_cel_condition_on_claims_sees_the_claims_of_the_check() -> None:
    admin = allowed_for(caller(groups=["admins"], level=2))  # level: an int, a double in the Struct
    names = [t["name"] for t in filter_result("tools/list", {"tools": TOOLS}, admin)[0]["tools"]]
    assert names == ["admin_reset"]
    not_enough = allowed_for(caller(groups=["admins"], level=1))
    assert filter_result("tools/list", {"tools": TOOLS}, not_enough)[0]["tools"] == []


def test_nothing_removed_returns_the_same_object() -> None:
    result = {"tools": TOOLS[:2]}
    same, removed = filter_result("tools/list", result, allowed_for(caller("tools:read")))
    assert same is result and removed == 0


def test_prompts_resources_and_templates() -> None:
    who = allowed_for(caller())
    prompts = {"prompts": [{"name": "summarize"}, {"name": "admin_prompt"}]}
    assert filter_result("prompts/list", prompts, who)[0] == {"prompts": [{"name": "summarize"}]}
    resources = {"resources": [{"uri": "file:///docs/readme", "name": "r"}, {"uri": "file:///secret/keys"}]}
    assert filter_result("resources/list", resources, who)[0]["resources"] == [resources["resources"][0]]
    templates = {"resourceTemplates": [{"uriTemplate": "file:///docs/{name}.md"}, {"uriTemplate": "file:///x/{n}"}]}
    kept = filter_result("resources/templates/list", templates, who)[0]["resourceTemplates"]
    assert kept == [{"uriTemplate": "file:///docs/{name}.md"}]


@pytest.mark.parametrize("entry", [{"title": "no name"}, {"name": 7}, "search", None])
def test_an_entry_without_a_usable_name_is_removed(entry: Any) -> None:
    assert entry_call("tools/list", entry) is None
    kept = filter_result("tools/list", {"tools": [entry, TOOLS[0]]}, allowed_for(caller("tools:read")))[0]
    assert kept["tools"] == [TOOLS[0]]


@pytest.mark.parametrize("result", [{}, {"tools": {}}, [], "x"])
def test_a_result_without_its_list_cannot_be_vouched_for(result: Any) -> None:
    with pytest.raises(ListParseError):
        filter_result("tools/list", result, allowed_for(caller("tools:read")))


# ---------------------------------------------------------------- JSON-RPC messages


def test_json_body_rewritten_only_for_the_list_request_id() -> None:
    who = allowed_for(caller("tools:read"))
    targets = {id_key(5): "tools/list"}
    body = json.dumps(response({"tools": TOOLS, "nextCursor": "c"}, 5)).encode()
    new, answered = rewrite_json(body, targets, who)
    assert new is not None and answered == {id_key(5)}
    assert json.loads(new) == response({"tools": TOOLS[:2], "nextCursor": "c"}, 5)
    # Another id, an id of another type, an error answer: left as they are.
    assert rewrite_json(json.dumps(response({"tools": TOOLS}, 6)).encode(), targets, who) == (None, set())
    assert rewrite_json(json.dumps(response({"tools": TOOLS}, "5")).encode(), targets, who) == (None, set())
    error = {"jsonrpc": "2.0", "id": 5, "error": {"code": -1, "message": "no"}}
    assert rewrite_json(json.dumps(error).encode(), targets, who) == (None, {id_key(5)})


def test_batch_responses_are_filtered_each() -> None:
    who = allowed_for(caller("tools:read"))
    targets = {id_key(1): "tools/list", id_key("p"): "prompts/list"}
    batch = [
        response({"tools": TOOLS}, 1),
        response({"prompts": [{"name": "summarize"}, {"name": "other"}]}, "p"),
        response({"content": []}, 2),
    ]
    new, removed, answered = rewrite_message(batch, targets, who)
    assert removed == 3 and answered == {id_key(1), id_key("p")}
    assert new[0]["result"]["tools"] == TOOLS[:2]
    assert new[1]["result"]["prompts"] == [{"name": "summarize"}]
    assert new[2] is batch[2]


@pytest.mark.parametrize("body", [b"{", b"\xff", b""])
def test_unreadable_json_is_a_parse_error(body: bytes) -> None:
    with pytest.raises(ListParseError):
        rewrite_json(body, {id_key(1): "tools/list"}, allowed_for(caller()))


# ---------------------------------------------------------------- the handover


def test_handover_round_trip_through_the_check_response() -> None:
    who = Caller(
        subject="alice",
        claims={"sub": "alice", "groups": ["admins"], "level": 3},
        scopes=frozenset({"tools:read", "prompts:read"}),
        client_id="c1",
        issuer="https://issuer.test",
    )
    got = handover_of(who, McpCall("tools/list", id=7), McpCall("prompts/list", id="p-1"), McpCall("ping", id=9))
    assert got.server == "mcp"
    assert got.caller.subject == "alice" and got.caller.client_id == "c1" and got.caller.issuer == "https://issuer.test"
    assert got.caller.scopes == who.scopes
    assert got.caller.claims == who.claims and isinstance(got.caller.claims["level"], int)  # the policy uses CEL
    assert got.lists == (handover.ListRequest(7, "tools/list"), handover.ListRequest("p-1", "prompts/list"))
    assert (got.source_address, got.source_principal) == ("10.0.0.1", "spiffe://proxy")


def test_claims_stay_out_without_cel_and_no_metadata_without_filter_lists() -> None:
    plain = make_config(servers=[server_spec(policy=policy({"name": "all"}), filter_lists=True)]).servers["mcp"]
    mcp = McpRequest(http_method="POST", revision="2026-07-28", calls=(McpCall("tools/list", id=1),))
    value = allow(plain, caller("a"), mcp, "all").metadata
    assert (
        value is not None
        and "claims" not in value[contract.HANDOVER_KEY]
        and "source" not in value[contract.HANDOVER_KEY]
    )
    off = make_config(servers=[server_spec(policy=policy({"name": "all"}))]).servers["mcp"]
    decision: Decision = allow(off, caller("a"), mcp, "all")
    assert decision.metadata is None
    assert not to_check_response(decision).HasField("dynamic_metadata")


@pytest.mark.parametrize(
    "found",
    [
        {},
        {contract.HANDOVER_NAMESPACE: {}},
        {contract.HANDOVER_NAMESPACE: {"mcp_authz": {"lists": []}}},
        {contract.HANDOVER_NAMESPACE: {"mcp_authz": {"server": "mcp", "handover": '{"lists": [[1, "tools/call"]]}'}}},
        {contract.HANDOVER_NAMESPACE: {"mcp_authz": {"server": "mcp", "handover": '{"lists": []}'}}},
        {contract.HANDOVER_NAMESPACE: {"mcp_authz": {"server": "mcp", "handover": "{not json"}}},
        {
            contract.HANDOVER_NAMESPACE: {
                "mcp_authz": {"server": "mcp", "handover": '{"lists": [[true, "tools/list"]]}'}
            }
        },
    ],
)
def test_missing_or_bad_handover_is_refused(found: dict[str, Any]) -> None:
    with pytest.raises(handover.HandoverError):
        handover.decode(found)


def test_a_header_only_check_matches_the_one_answer_whatever_its_id() -> None:
    mcp = McpRequest(http_method="POST", revision="2026-07-28", calls=(McpCall("tools/list"),), from_headers=True)
    decision = allow(server(), caller("tools:read"), mcp, "lists")
    struct = to_check_response(decision).dynamic_metadata
    got = handover.decode({contract.HANDOVER_NAMESPACE: json_format.MessageToDict(struct)})
    assert got.any_id and got.lists == (handover.ListRequest(None, "tools/list"),)
    who = policy_check(server(), got, {})
    new, answered = rewrite_json(json.dumps(response({"tools": TOOLS}, 77)).encode(), {}, who, "tools/list")
    assert new is not None and [t["name"] for t in json.loads(new)["result"]["tools"]] == ["search", "read_file"]
    assert answered == {id_key(77)}
    # Without it, an unknown id is not the answer.
    assert rewrite_json(json.dumps(response({"tools": TOOLS}, 77)).encode(), {}, who) == (None, set())


def test_the_check_names_the_route_by_whether_the_request_lists() -> None:
    for calls, value in (((McpCall("tools/list", id=1),), "1"), ((McpCall("tools/call", id=1, tool="search"),), "0")):
        mcp = McpRequest(http_method="POST", revision="2025-11-25", calls=calls)
        assert ("x-mcp-authz-list", value) in allow(server(), caller("tools:read"), mcp, "r").set_headers
    off = make_config(servers=[server_spec(policy=RULES)]).servers["mcp"]
    mcp = McpRequest(http_method="POST", revision="2025-11-25", calls=(McpCall("tools/list", id=1),))
    assert all(k != "x-mcp-authz-list" for k, _ in allow(off, caller(), mcp, "r").set_headers)
