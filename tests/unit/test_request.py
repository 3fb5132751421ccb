"""The MCP request parser (authz/request.py): JSON-RPC shapes, revisions, 2026-07-28 routing headers."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp.shared.inbound import decode_header_value as sdk_decode
from mcp.shared.inbound import encode_header_value as sdk_encode
from support import (
    STATELESS,
    enveloped,
    http_request,
    make_config,
    rpc,
    server_spec,
    stateless_headers,
    tool_call,
)

from authz import request
from authz.config.runtime import Server
from authz.errors import (
    HEADER_MISMATCH,
    INVALID_PARAMS,
    INVALID_REQUEST,
    PARSE_ERROR,
    UNSUPPORTED_PROTOCOL_VERSION,
    BadRequest,
)
from authz.model import DEFAULT_REVISION, HttpRequest, McpCall, McpRequest


def make_server(**fields: Any) -> Server:
    return make_config(servers=[server_spec(**fields)]).servers["mcp"]


SERVER = make_server()
HEADER_ONLY = make_server(header_only=True)


def parsed(req: HttpRequest, server: Server = SERVER) -> McpRequest:
    result = request.parse(req, server)
    assert isinstance(result, McpRequest), f"refused: {result!r}"
    return result


def refused(req: HttpRequest, server: Server = SERVER) -> BadRequest:
    result = request.parse(req, server)
    assert isinstance(result, BadRequest), f"accepted: {result!r}"
    return result


# ---------------------------------------------------------------- JSON-RPC shapes


def test_single_tools_call() -> None:
    mcp = parsed(http_request(tool_call("search", id=7, q="x")))
    assert mcp == McpRequest(
        "POST",
        DEFAULT_REVISION,
        (McpCall("tools/call", 7, tool="search", arguments={"q": "x"}),),
    )
    assert mcp.first_id == 7
    assert not mcp.batch and not mcp.from_headers and not mcp.stateless


def test_prompt_and_resource_names() -> None:
    assert parsed(http_request(rpc("prompts/get", {"name": "greet"}))).calls[0] == McpCall(
        "prompts/get", 1, prompt="greet"
    )
    for method in ("resources/read", "resources/subscribe", "resources/unsubscribe"):
        call = parsed(http_request(rpc(method, {"uri": "file:///a"}))).calls[0]
        assert call == McpCall(method, 1, uri="file:///a")
        assert call.name == "file:///a"


def test_notification_has_no_id() -> None:
    mcp = parsed(http_request(rpc("notifications/initialized", id=None)))
    assert mcp.calls == (McpCall("notifications/initialized", None),)
    assert mcp.first_id is None


def test_string_id_is_kept() -> None:
    assert parsed(http_request(rpc("tools/list", id="abc"))).first_id == "abc"


@pytest.mark.parametrize("body", [{"result": {}}, {"error": {"code": 1, "message": "x"}}])
def test_response_to_server_request_is_a_call_without_method(body: dict[str, Any]) -> None:
    mcp = parsed(http_request({"jsonrpc": "2.0", "id": 3, **body}))
    assert mcp.calls == (McpCall("", 3),)


def test_batch_parses_every_element() -> None:
    items = [tool_call("a", id=1), rpc("tools/list", id=2), rpc("notifications/x", id=None), tool_call("b", id=3)]
    mcp = parsed(http_request(items))
    assert mcp.batch
    assert [c.method for c in mcp.calls] == ["tools/call", "tools/list", "notifications/x", "tools/call"]
    assert [c.tool for c in mcp.calls] == ["a", None, None, "b"]
    assert mcp.first_id is None  # a batch has no single id


def test_batch_limits() -> None:
    assert refused(http_request([])).reason == "batch_invalid"
    assert len(parsed(http_request([rpc("ping", id=i) for i in range(256)])).calls) == 256
    too_many = refused(http_request([rpc("ping", id=i) for i in range(257)]))
    assert (too_many.status, too_many.reason, too_many.code) == (400, "batch_invalid", INVALID_REQUEST)


def test_batch_with_one_bad_element_is_refused() -> None:
    assert refused(http_request([tool_call("a"), {"jsonrpc": "2.0", "method": "tools/call", "id": 2}])).reason == (
        "params_invalid"
    )


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("tools/call", {}),
        ("tools/call", None),
        ("tools/call", {"name": ""}),
        ("tools/call", {"name": 5}),
        ("tools/call", ["x"]),
        ("prompts/get", {}),
        ("resources/read", {"name": "x"}),
        ("resources/subscribe", {}),
        ("resources/unsubscribe", {"uri": None}),
    ],
)
def test_named_method_without_its_name_is_invalid_params(method: str, params: Any) -> None:
    msg = {"jsonrpc": "2.0", "id": 1, "method": method}
    if params is not None:
        msg["params"] = params
    refusal = refused(http_request(msg))
    assert (refusal.status, refusal.reason, refusal.code) == (400, "params_invalid", INVALID_PARAMS)
    assert refusal.code == -32602


def test_tools_call_arguments_must_be_an_object() -> None:
    refusal = refused(http_request(rpc("tools/call", {"name": "a", "arguments": [1]})))
    assert (refusal.reason, refusal.code) == ("params_invalid", INVALID_PARAMS)


def test_tools_call_without_arguments_gets_empty_arguments() -> None:
    assert parsed(http_request(rpc("tools/call", {"name": "a"}))).calls[0].arguments == {}


@pytest.mark.parametrize(
    ("body", "reason", "code"),
    [
        (b"{not json", "body_invalid", PARSE_ERROR),
        (b"", None, None),  # no body: see header-only tests
        (b'{"jsonrpc": "2.0", "id": 1, "method": "ping"', "body_invalid", PARSE_ERROR),
        (b"\xff\xfe{}", "body_invalid", PARSE_ERROR),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "p\xc3"}', "body_invalid", PARSE_ERROR),
        (b'{"jsonrpc": "2.0", "id": 1, "id": 2, "method": "ping"}', "body_duplicate_key", PARSE_ERROR),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "x", "params": {"a": 1, "a": 1}}', "body_duplicate_key", PARSE_ERROR),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "x", "params": {"a": NaN}}', "body_invalid", PARSE_ERROR),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "x", "params": {"a": Infinity}}', "body_invalid", PARSE_ERROR),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "x", "params": {"a": -Infinity}}', "body_invalid", PARSE_ERROR),
        (b'{"jsonrpc": "1.0", "id": 1, "method": "ping"}', "jsonrpc_invalid", INVALID_REQUEST),
        (b'{"id": 1, "method": "ping"}', "jsonrpc_invalid", INVALID_REQUEST),
        (b'"just a string"', "jsonrpc_invalid", INVALID_REQUEST),
        (b"[1]", "jsonrpc_invalid", INVALID_REQUEST),
        (b'{"jsonrpc": "2.0", "id": 1}', "jsonrpc_invalid", INVALID_REQUEST),
        (b'{"jsonrpc": "2.0", "id": 1, "method": ""}', "jsonrpc_invalid", INVALID_REQUEST),
        (b'{"jsonrpc": "2.0", "id": 1, "method": 7}', "jsonrpc_invalid", INVALID_REQUEST),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "x", "params": 3}', "jsonrpc_invalid", INVALID_REQUEST),
        (b'{"jsonrpc": "2.0", "id": true, "method": "ping"}', "jsonrpc_invalid", INVALID_REQUEST),
        (b'{"jsonrpc": "2.0", "id": 1.5, "method": "ping"}', "jsonrpc_invalid", INVALID_REQUEST),
        (b'{"jsonrpc": "2.0", "id": null, "method": "ping"}', "jsonrpc_invalid", INVALID_REQUEST),
        (b'{"jsonrpc": "2.0", "id": {}, "method": "ping"}', "jsonrpc_invalid", INVALID_REQUEST),
    ],
)
def test_malformed_bodies_are_400(body: bytes, reason: str | None, code: int | None) -> None:
    refusal = refused(http_request(body))
    assert refusal.status == 400
    if reason is None:
        assert refusal.reason == "body_missing"
    else:
        assert (refusal.reason, refusal.code) == (reason, code)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "", "application/jsonx"])
def test_wrong_content_type_is_400(content_type: str) -> None:
    refusal = refused(http_request(rpc("ping"), content_type=content_type))
    assert (refusal.status, refusal.reason) == (400, "content_type_invalid")


def test_missing_content_type_is_400() -> None:
    assert refused(http_request(rpc("ping"), content_type=None)).reason == "content_type_invalid"


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "Application/JSON", " application/json "])
def test_json_content_type_variants_are_accepted(content_type: str) -> None:
    assert parsed(http_request(rpc("ping"), content_type=content_type)).calls[0].method == "ping"


def test_hostile_json_is_a_parse_error_not_an_exception() -> None:
    deep = b"[" * 100_000
    huge = b'{"jsonrpc": "2.0", "id": 1' + b"0" * 100_000 + b', "method": "ping"}'
    for body in (deep, huge):
        refusal = refused(http_request(body))
        assert (refusal.status, refusal.reason, refusal.code) == (400, "body_invalid", PARSE_ERROR)


def test_lone_surrogate_passes_through_as_data() -> None:
    call = parsed(http_request(b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "\\ud800"}}'))
    assert call.calls[0].tool == "\ud800"


def test_body_too_large_is_413(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(request, "MAX_BODY_BYTES", 64)
    refusal = refused(http_request(tool_call("x" * 100)))
    assert (refusal.status, refusal.reason) == (413, "body_too_large")


# ---------------------------------------------------------------- GET / DELETE


@pytest.mark.parametrize("method", ["GET", "DELETE", "get"])
def test_get_and_delete_carry_no_calls(method: str) -> None:
    mcp = parsed(http_request(method=method, headers={"mcp-session-id": "s1"}))
    assert mcp == McpRequest(method.upper(), DEFAULT_REVISION, (), session_id="s1")
    assert mcp.first_id is None


def test_get_with_a_body_is_refused_not_ignored() -> None:
    assert refused(http_request(b"garbage", method="GET")).reason == "body_not_allowed"


def test_get_with_unaccepted_revision_is_refused() -> None:
    server = make_server(revisions=["2025-11-25"])
    refusal = refused(http_request(method="GET", revision="2025-06-18"), server)
    assert refusal.code == UNSUPPORTED_PROTOCOL_VERSION


# ---------------------------------------------------------------- revisions


def test_revision_defaults_to_2025_03_26() -> None:
    assert DEFAULT_REVISION == "2025-03-26"
    assert parsed(http_request(rpc("ping"))).revision == "2025-03-26"


def test_revision_from_header() -> None:
    mcp = parsed(http_request(rpc("ping"), revision="2025-06-18", headers={"mcp-session-id": "abc"}))
    assert (mcp.revision, mcp.session_id) == ("2025-06-18", "abc")


def test_unaccepted_revision_is_32022_naming_accepted_ones() -> None:
    server = make_server(revisions=["2025-11-25", "2025-06-18"])
    refusal = refused(http_request(rpc("tools/list", id=4), revision="2024-11-05"), server)
    assert (refusal.status, refusal.reason, refusal.code) == (400, "revision_unsupported", -32022)
    assert "2025-06-18, 2025-11-25" in refusal.detail
    assert refusal.data == {"supported": ["2025-06-18", "2025-11-25"], "requested": "2024-11-05"}
    assert refusal.request_id == 4


def test_absent_header_on_a_server_without_the_default_revision() -> None:
    server = make_server(revisions=["2025-11-25"])
    refusal = refused(http_request(rpc("tools/list")), server)
    assert refusal.code == UNSUPPORTED_PROTOCOL_VERSION
    assert refusal.data == {"supported": ["2025-11-25"], "requested": DEFAULT_REVISION}
    # initialize without the header negotiates its version in the body
    assert parsed(http_request(rpc("initialize", {"protocolVersion": "2025-11-25"})), server).calls[0].method == (
        "initialize"
    )


# ---------------------------------------------------------------- 2026-07-28 routing headers


def stateless(body: Any, method: str | None = None, name: str | None = None, **kw: Any) -> HttpRequest:
    """A 2026-07-28 POST; a request body gets the required ``_meta`` envelope."""
    if isinstance(body, dict) and "id" in body and "method" in body:
        body = enveloped(body)
    headers = {"mcp-protocol-version": STATELESS}
    if method is not None:
        headers["mcp-method"] = method
    if name is not None:
        headers["mcp-name"] = name
    headers.update(kw.pop("headers", {}))
    return http_request(body, headers=headers, **kw)


def test_stateless_request_with_agreeing_headers() -> None:
    mcp = parsed(stateless(tool_call("search"), "tools/call", "search", headers={"mcp-session-id": "s"}))
    assert mcp.stateless and mcp.revision == STATELESS
    assert mcp.calls[0].tool == "search"
    assert mcp.session_id is None  # no protocol sessions in this revision


def test_stateless_headers_for_every_named_method() -> None:
    assert parsed(stateless(rpc("prompts/get", {"name": "p"}), "prompts/get", "p")).calls[0].prompt == "p"
    assert parsed(stateless(rpc("resources/read", {"uri": "u:1"}), "resources/read", "u:1")).calls[0].uri == "u:1"
    assert parsed(stateless(rpc("tools/list"), "tools/list")).calls[0].method == "tools/list"
    assert parsed(stateless(rpc("notifications/x", id=None), "notifications/x")).calls[0].id is None


def assert_mismatch(req: HttpRequest, reason: str, server: Server = SERVER) -> None:
    refusal = refused(req, server)
    assert (refusal.status, refusal.reason, refusal.code) == (400, reason, HEADER_MISMATCH)
    assert refusal.code == -32020


def test_stateless_requires_mcp_method() -> None:
    assert_mismatch(stateless(rpc("tools/list")), "header_missing")


@pytest.mark.parametrize("method", ["prompts/get", "resources/read", "tools/call"])
def test_stateless_requires_mcp_name_for_named_methods(method: str) -> None:
    params = {"uri": "u"} if method.startswith("resources") else {"name": "u"}
    assert_mismatch(stateless(rpc(method, params), method), "header_missing")


def test_stateless_method_and_name_must_match_the_body() -> None:
    assert_mismatch(stateless(tool_call("delete"), "tools/list"), "header_mismatch")
    assert_mismatch(stateless(tool_call("delete"), "tools/call", "search"), "header_mismatch")
    assert_mismatch(stateless(tool_call("delete"), "Tools/call", "delete"), "header_mismatch")
    assert_mismatch(stateless(tool_call("delete"), "tools/call", "Delete"), "header_mismatch")
    assert_mismatch(stateless(tool_call("delete"), "tools/call", ""), "header_mismatch")
    assert_mismatch(stateless(rpc("tools/list"), "tools/list", "x"), "header_mismatch")
    assert_mismatch(stateless(rpc("tools/list"), ""), "header_mismatch")


def test_stateless_batch_is_refused() -> None:
    refusal = refused(stateless([rpc("tools/list")], "tools/list"))
    assert refusal.reason == "batch_invalid"


def test_encoded_mcp_name_is_decoded() -> None:
    name = "résumé/工具"
    encoded = "=?base64?" + base64.b64encode(name.encode()).decode() + "?="
    assert parsed(stateless(tool_call(name), "tools/call", encoded)).calls[0].tool == name
    assert encoded == sdk_encode(name)


@pytest.mark.parametrize(
    ("header", "decoded"),
    [
        ("plain-ascii_name", "plain-ascii_name"),
        ("with space inside", "with space inside"),
        ("=?base64?aGVsbG8=?=", "hello"),
        ("=?base64?w6k=?=", "é"),
        ("=?base64??=", ""),
        ("=?BASE64?aGVsbG8=?=", "=?BASE64?aGVsbG8=?="),  # the sentinel is case-sensitive: plain text
        ("=?base64?aGVsbG9=?=", None),  # non-zero trailing bits: non-canonical
        ("=?base64?w6l=?=", None),  # non-canonical
        ("=?base64?aGVsbG8?=", None),  # missing padding
        ("=?base64?aGVs bG8=?=", None),  # not base64
        ("=?base64?aGVs*G8=?=", None),
        ("=?base64?aGVsbG8=\n?=", "=?base64?aGVsbG8=\n?="),  # not the sentinel form at all
        ("=?base64?/w==?=", None),  # 0xff: not UTF-8
        ("=?base64?7aCA?=", None),  # an encoded surrogate: not UTF-8
        ("=?base64?é?=", None),  # non-ASCII payload
    ],
)
def test_header_value_vectors(header: str, decoded: str | None) -> None:
    assert request.decode_header_value(header) == decoded
    try:
        expected = sdk_decode(header)
    except ValueError:  # the SDK lets a non-ASCII payload escape as ValueError: malformed all the same
        expected = None
    assert expected == decoded


@pytest.mark.parametrize("header", ["=?base64?aGVsbG9=?=", "=?base64?/w==?=", "=?base64?aGVs bG8=?="])
def test_malformed_encoded_name_is_32020(header: str) -> None:
    assert_mismatch(stateless(tool_call("hello"), "tools/call", header), "header_malformed")


@pytest.mark.parametrize("header", ["mcp-protocol-version", "mcp-method", "mcp-name"])
def test_duplicated_routing_header_is_32020(header: str) -> None:
    values = {"mcp-protocol-version": STATELESS, "mcp-method": "tools/call", "mcp-name": "a"}
    req = http_request(tool_call("a"), headers=values, header_values={header: (values[header], values[header])})
    assert req.headers[header] == f"{values[header]},{values[header]}"
    assert_mismatch(req, "header_duplicated")


def test_duplicated_session_header_is_refused() -> None:
    req = http_request(rpc("ping"), header_values={"mcp-session-id": ("a", "b")})
    assert refused(req).code == HEADER_MISMATCH


def test_meta_protocol_version_must_agree_with_the_header() -> None:
    key = "io.modelcontextprotocol/protocolVersion"
    ok = rpc("tools/list", {"_meta": {key: STATELESS}})
    assert parsed(stateless(ok, "tools/list")).revision == STATELESS
    bad = rpc("tools/list", {"_meta": {key: "2025-11-25"}})
    assert_mismatch(stateless(bad, "tools/list"), "header_mismatch")
    bad_call = rpc("tools/call", {"name": "a", "_meta": {key: None}})
    assert_mismatch(stateless(bad_call, "tools/call", "a"), "header_mismatch")


def test_older_revision_is_held_to_its_routing_headers() -> None:
    lying = http_request(tool_call("delete_repo"), revision="2025-06-18", headers={"mcp-name": "read_repo"})
    assert_mismatch(lying, "header_mismatch")
    no_version = http_request(tool_call("delete_repo"), headers={"mcp-name": "read_repo"})
    assert_mismatch(no_version, "header_mismatch")
    wrong_method = http_request(tool_call("a"), headers={"mcp-method": "tools/list"})
    assert_mismatch(wrong_method, "header_mismatch")
    truthful = http_request(tool_call("a"), revision="2025-06-18", headers={"mcp-name": "a"})
    assert parsed(truthful).calls[0].tool == "a"
    # Mcp-Method alone (no Mcp-Name) on an older revision is fine when it agrees
    assert parsed(http_request(tool_call("a"), headers={"mcp-method": "tools/call"})).calls[0].tool == "a"


def test_routing_headers_on_an_older_batch_are_refused() -> None:
    req = http_request([tool_call("a"), tool_call("b", id=2)], headers={"mcp-name": "a"})
    assert_mismatch(req, "header_mismatch")


def test_unaccepted_stateless_revision() -> None:
    server = make_server(revisions=["2025-11-25"])
    refusal = refused(stateless(rpc("tools/list"), "tools/list"), server)
    assert refusal.code == UNSUPPORTED_PROTOCOL_VERSION


# ---------------------------------------------------------------- header-only mode


def test_header_only_decides_on_headers() -> None:
    req = http_request(None, headers=stateless_headers("tools/call", "=?base64?w6k=?="))
    mcp = parsed(req, HEADER_ONLY)
    assert mcp.from_headers
    assert mcp.calls == (McpCall("tools/call", None, tool="é", arguments={}),)
    assert parsed(http_request(b"", headers=stateless_headers("tools/list")), HEADER_ONLY).calls == (
        McpCall("tools/list"),
    )
    assert parsed(http_request(None, headers=stateless_headers("resources/read", "u:1")), HEADER_ONLY).calls == (
        McpCall("resources/read", uri="u:1"),
    )


def test_header_only_still_uses_the_body_when_present() -> None:
    mcp = parsed(stateless(tool_call("a"), "tools/call", "a"), HEADER_ONLY)
    assert not mcp.from_headers
    assert_mismatch(stateless(tool_call("delete_repo"), "tools/call", "a"), "header_mismatch", HEADER_ONLY)


def test_body_missing_without_header_only() -> None:
    refusal = refused(http_request(None, headers=stateless_headers("tools/call", "a")))
    assert (refusal.status, refusal.reason) == (400, "body_missing")


def test_header_only_needs_the_stateless_revision() -> None:
    req = http_request(None, revision="2025-11-25", headers={"mcp-method": "tools/call", "mcp-name": "a"})
    assert refused(req, HEADER_ONLY).reason == "body_missing"
    assert refused(http_request(None), HEADER_ONLY).reason == "body_missing"


def test_header_only_needs_method_and_name() -> None:
    assert_mismatch(http_request(None, revision=STATELESS), "header_missing", HEADER_ONLY)
    assert_mismatch(http_request(None, headers=stateless_headers("tools/call")), "header_missing", HEADER_ONLY)
    assert_mismatch(http_request(None, headers=stateless_headers("prompts/get", "")), "header_missing", HEADER_ONLY)
    malformed = http_request(None, headers=stateless_headers("tools/call", "=?base64?w6l=?="))
    assert_mismatch(malformed, "header_malformed", HEADER_ONLY)
    duplicated = http_request(
        None, headers=stateless_headers("tools/call", "a"), header_values={"mcp-name": ("a", "delete_repo")}
    )
    assert_mismatch(duplicated, "header_duplicated", HEADER_ONLY)


def test_header_only_checks_the_revision() -> None:
    server = make_server(header_only=True, revisions=["2025-11-25", STATELESS])
    assert parsed(http_request(None, headers=stateless_headers("tools/list")), server).from_headers
    server = make_server(header_only=True, revisions=["2025-11-25"])
    assert refused(http_request(None, headers=stateless_headers("tools/list")), server).code == -32022


# ---------------------------------------------------------------- the request id travels with a 400


def test_bad_request_carries_the_request_id() -> None:
    assert refused(http_request(rpc("tools/call", {}, id="x-1"))).request_id == "x-1"
    assert refused(stateless(tool_call("a", id=9), "tools/call", "b")).request_id == 9
    assert refused(stateless(tool_call("a", id=9), "tools/call", "=?base64?w6l=?=")).request_id == 9
    assert refused(http_request(b"{oops")).request_id is None
    assert refused(http_request([rpc("tools/call", {}, id=1)])).request_id is None  # batch: no single id
    assert refused(http_request({"jsonrpc": "2.0", "id": True, "method": "x"})).request_id is None


# ---------------------------------------------------------------- decode_header_value against the SDK


def sdk(value: str) -> str | None:
    try:
        return sdk_decode(value)
    except ValueError:
        return None


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text())
def test_decode_matches_sdk_for_any_string(value: str) -> None:
    assert request.decode_header_value(value) == sdk(value)


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=st.sampled_from("ABCDEFGHabcdefgh0123456789+/=_- é\n"), max_size=24))
def test_decode_matches_sdk_for_sentinel_forms(payload: str) -> None:
    value = f"=?base64?{payload}?="
    assert request.decode_header_value(value) == sdk(value)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=24))
def test_decode_matches_sdk_for_encoded_bytes(raw: bytes) -> None:
    value = "=?base64?" + base64.b64encode(raw).decode() + "?="
    ours = request.decode_header_value(value)
    assert ours == sdk(value)
    try:
        assert ours == raw.decode("utf-8")
    except UnicodeDecodeError:
        assert ours is None


@settings(max_examples=400, deadline=None)
@given(st.text())
def test_sdk_encoding_round_trips(value: str) -> None:
    encoded = sdk_encode(value)
    assert request.decode_header_value(encoded) == value
    # and a request whose Mcp-Name is the SDK's encoding of the body's name is accepted
    if value:
        body = json.dumps(enveloped(tool_call(value))).encode()
        req = http_request(body, headers=stateless_headers("tools/call", encoded))
        assert parsed(req).calls[0].tool == value


def test_duplicated_routing_header_refusal_carries_the_request_id() -> None:
    from authz.config.load import parse_config
    from authz.errors import BadRequest
    from authz.model import HttpRequest
    from authz.request import parse

    config = parse_config(
        "issuers: [{name: a, issuer: 'https://i'}]\nservers: [{name: s, resource: 'https://m/mcp'}]\n"
    )
    body = b'{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"search"}}'
    req = HttpRequest(
        "POST",
        "/mcp",
        {"content-type": "application/json", "mcp-name": "search,search"},
        body,
        header_values={"mcp-name": ("search", "search")},
    )
    refused = parse(req, config.servers["s"])
    assert isinstance(refused, BadRequest)
    assert (refused.reason, refused.request_id) == ("header_duplicated", 42)


# ---------------------------------------------------------------- issue 21: a body the decision never read


@pytest.mark.parametrize("method", ["GET", "DELETE", "PUT"])
def test_a_non_post_request_with_a_body_is_refused(method: str) -> None:
    bad = refused(http_request(tool_call("delete_repo"), method=method))
    assert (bad.status, bad.reason, bad.code) == (400, "body_not_allowed", INVALID_REQUEST)


@pytest.mark.parametrize("headers", [{"content-length": "42"}, {"transfer-encoding": "chunked"}])
def test_a_non_post_request_announcing_an_unbuffered_body_is_refused(headers: dict[str, str]) -> None:
    assert refused(http_request(None, method="GET", headers=headers)).reason == "body_not_allowed"


def test_a_get_without_a_body_is_still_decided_on_method_and_identity() -> None:
    for headers in ({}, {"content-length": "0"}):
        assert parsed(http_request(None, method="GET", headers=headers)).http_method == "GET"
    assert parsed(http_request(b"", method="DELETE")).http_method == "DELETE"


# ---------------------------------------------------------------- 2026-07-28: the per-request _meta envelope


CAPABILITIES_KEY = "io.modelcontextprotocol/clientCapabilities"
VERSION_KEY = "io.modelcontextprotocol/protocolVersion"


def stateless_call(meta: Any) -> HttpRequest:
    body = tool_call("search", q="x")
    if meta is not None:
        body["params"]["_meta"] = meta
    return http_request(body, headers=stateless_headers("tools/call", "search"))


@pytest.mark.parametrize(
    "meta",
    [
        None,
        "not an object",
        {VERSION_KEY: STATELESS},  # bench.py's old body: no client capabilities
        {CAPABILITIES_KEY: {}},
    ],
    ids=["absent", "not-an-object", "no-capabilities", "no-version"],
)
def test_a_2026_request_without_its_required_meta_fields_is_invalid_params(meta: Any) -> None:
    bad = refused(stateless_call(meta))
    assert (bad.status, bad.reason, bad.code, bad.request_id) == (400, "params_meta_missing", INVALID_PARAMS, 1)


def test_a_2026_request_with_its_meta_envelope_passes() -> None:
    mcp = parsed(stateless_call({VERSION_KEY: STATELESS, CAPABILITIES_KEY: {}}))
    assert mcp.stateless and mcp.calls[0].tool == "search"


def test_older_revisions_and_2026_notifications_need_no_envelope() -> None:
    assert parsed(http_request(tool_call("search"), revision="2025-11-25")).calls[0].tool == "search"
    note = http_request(rpc("notifications/x", id=None), headers=stateless_headers("notifications/x"))
    assert parsed(note).calls[0].method == "notifications/x"


def test_the_sdk_refuses_what_the_parser_refuses() -> None:
    """The parser and mcp 2.x's server ladder agree on the envelope (both -32602)."""
    from mcp.shared.inbound import InboundLadderRejection, classify_inbound_request

    for meta in (None, {VERSION_KEY: STATELESS}, {VERSION_KEY: STATELESS, CAPABILITIES_KEY: {}}):
        req = stateless_call(meta)
        ours = request.parse(req, SERVER)
        theirs = classify_inbound_request(json.loads(req.body or b""), headers=dict(req.headers))
        assert isinstance(ours, BadRequest) == isinstance(theirs, InboundLadderRejection)
        if isinstance(ours, BadRequest) and isinstance(theirs, InboundLadderRejection):
            assert ours.code == theirs.code == INVALID_PARAMS


@pytest.mark.parametrize("header", ["résumé", "a\x00b", "a\x7fb", "tool\x1b[31m"])
def test_a_mcp_name_with_invalid_characters_is_32020(header: str) -> None:
    """2026-07-28 Server Validation: a header value with invalid characters is a failure (clients encode)."""
    assert_mismatch(stateless(tool_call(header), "tools/call", header), "header_malformed")


# ---------------------------------------------------------------- 2026-07-28: Mcp-Param-{Name} (x-mcp-header)


PARAMS = make_server(
    param_headers={"execute_sql": {"Region": "region", "Tenant": "target.tenant", "Dry": "dry_run", "Limit": "limit"}},
    header_only=True,
)
SQL_ARGS: dict[str, Any] = {"region": "us-west1", "target": {"tenant": "acme"}, "dry_run": True, "limit": 42, "q": "x"}
SQL_HEADERS = {"Region": "us-west1", "Tenant": "acme", "Dry": "true", "Limit": "42"}


def sql(
    arguments: dict[str, Any] | None = None,
    params: dict[str, str] | None = None,
    revision: str | None = STATELESS,
    **kw: Any,
) -> HttpRequest:
    body = tool_call("execute_sql", **(SQL_ARGS if arguments is None else arguments))
    headers = {f"mcp-param-{k.lower()}": v for k, v in (SQL_HEADERS if params is None else params).items()}
    if revision == STATELESS:
        return stateless(body, "tools/call", "execute_sql", headers=headers, **kw)
    return http_request(body, headers={**headers, **({"mcp-protocol-version": revision} if revision else {})}, **kw)


def test_declared_param_headers_are_checked_and_handed_to_policy() -> None:
    call = parsed(sql(), PARAMS).calls[0]
    assert call.params == SQL_HEADERS


def test_an_encoded_param_value_is_decoded_before_the_comparison() -> None:
    region = "Zürich 東"
    call = parsed(sql({**SQL_ARGS, "region": region}, {**SQL_HEADERS, "Region": sdk_encode(region)}), PARAMS).calls[0]
    assert call.params is not None and call.params["Region"] == region


@pytest.mark.parametrize(
    ("arguments", "params", "reason"),
    [
        (SQL_ARGS, {**SQL_HEADERS, "Region": "eu-west1"}, "header_mismatch"),
        ({**SQL_ARGS, "limit": 7}, SQL_HEADERS, "header_mismatch"),
        (SQL_ARGS, {**SQL_HEADERS, "Limit": "42.5"}, "header_mismatch"),
        (SQL_ARGS, {**SQL_HEADERS, "Dry": "True"}, "header_mismatch"),  # values are case-sensitive
        ({k: v for k, v in SQL_ARGS.items() if k != "region"}, SQL_HEADERS, "header_mismatch"),  # no argument
        ({**SQL_ARGS, "region": None}, SQL_HEADERS, "header_mismatch"),  # null: no header expected
        ({**SQL_ARGS, "region": ["a"]}, {**SQL_HEADERS, "Region": "a"}, "header_mismatch"),  # not a primitive
        (SQL_ARGS, {k: v for k, v in SQL_HEADERS.items() if k != "Tenant"}, "header_missing"),
        (SQL_ARGS, {**SQL_HEADERS, "Region": "us\x01west1"}, "header_malformed"),
        (SQL_ARGS, {**SQL_HEADERS, "Region": "=?base64?aGVsbG9=?="}, "header_malformed"),
    ],
    ids=[
        "other-value",
        "other-integer",
        "fractional-integer",
        "boolean-case",
        "argument-absent",
        "argument-null",
        "argument-not-primitive",
        "header-missing",
        "control-character",
        "bad-encoding",
    ],
)
def test_a_param_header_that_disagrees_with_the_body_is_32020(
    arguments: dict[str, Any], params: dict[str, str], reason: str
) -> None:
    bad = refused(sql(arguments, params), PARAMS)
    assert (bad.status, bad.reason, bad.code, bad.request_id) == (400, reason, HEADER_MISMATCH, 1)


def test_an_integer_argument_compares_by_value() -> None:
    assert parsed(sql(params={**SQL_HEADERS, "Limit": "42.0"}), PARAMS).calls[0].params == SQL_HEADERS
    assert parsed(sql({**SQL_ARGS, "limit": 42.0}), PARAMS).calls[0].params == SQL_HEADERS


def test_a_declared_param_header_sent_twice_is_32020() -> None:
    req = sql(header_values={"mcp-param-region": ("us-west1", "us-west1")})
    assert refused(req, PARAMS).reason == "header_duplicated"


def test_undeclared_param_headers_are_ignored() -> None:
    """Forwarded unchanged by Envoy, never read: any value, even one a declared header could not carry."""
    extra = {"Other": "x\x01y", "Regionx": "anything"}
    call = parsed(sql(params={**SQL_HEADERS, **extra}), PARAMS).calls[0]
    assert call.params == SQL_HEADERS
    other_tool = stateless(tool_call("search", q="x"), "tools/call", "search", headers={"mcp-param-region": "\x01"})
    assert parsed(other_tool, PARAMS).calls[0].params is None


def test_an_older_revision_is_decided_on_the_body() -> None:
    """Its clients mirror nothing, and its servers need not check a mirror: the body's values count."""
    for revision in ("2025-11-25", None):  # absent: taken as 2025-03-26
        server = make_server(
            param_headers={"execute_sql": {"Region": "region"}}, revisions=["2025-03-26", "2025-11-25"]
        )
        call = parsed(sql(params={}, revision=revision), server).calls[0]
        assert call.params == {"Region": "us-west1"}
        # a header it does carry is still held to the body
        assert refused(sql(params={"Region": "eu-west1"}, revision=revision), server).code == HEADER_MISMATCH


def test_header_only_decides_on_param_headers_in_2026_only() -> None:
    headers = {**stateless_headers("tools/call", "execute_sql"), "mcp-param-region": "us-west1"}
    call = parsed(http_request(None, headers=headers), PARAMS).calls[0]
    assert call.params == {"Region": "us-west1"}  # only what the headers say: no body to check them against
    older = {**headers, "mcp-protocol-version": "2025-11-25"}
    server = make_server(param_headers={"execute_sql": {"Region": "region"}}, header_only=True)
    assert refused(http_request(None, headers=older), server).reason == "body_missing"
    bad = {**headers, "mcp-param-region": "=?base64?/w==?="}
    assert refused(http_request(None, headers=bad), PARAMS).reason == "header_malformed"


def test_the_sdk_and_the_parser_agree_on_param_headers() -> None:
    """mcp 2.x's client mirrors, its server validates: the parser accepts and refuses the same requests."""
    from mcp.shared.inbound import mcp_param_headers, validate_mcp_param_headers, x_mcp_header_map

    schema = {
        "type": "object",
        "properties": {
            "region": {"type": "string", "x-mcp-header": "Region"},
            "limit": {"type": "integer", "x-mcp-header": "Limit"},
            "target": {"type": "object", "properties": {"tenant": {"type": "string", "x-mcp-header": "Tenant"}}},
        },
    }
    server = make_server(
        param_headers={"execute_sql": {"Region": "region", "Limit": "limit", "Tenant": "target.tenant"}}
    )
    cases: list[dict[str, Any]] = [
        {"region": "us-west1", "limit": 3, "target": {"tenant": "acme"}},
        {"region": "Hello, 世界", "limit": -7},
        {"region": " padded ", "target": {}},
        {"region": "=?base64?literal?="},
        {},
    ]
    for arguments in cases:
        mirrored = mcp_param_headers(x_mcp_header_map(schema), arguments)
        assert validate_mcp_param_headers(schema, arguments, mirrored) is None
        params = {k.removeprefix("Mcp-Param-"): v for k, v in mirrored.items()}
        parsed(sql(arguments, params), server)
        tampered = {**mirrored, "Mcp-Param-Region": "elsewhere"}
        assert validate_mcp_param_headers(schema, arguments, tampered) is not None
        tampered_params = {k.removeprefix("Mcp-Param-"): v for k, v in tampered.items()}
        assert refused(sql(arguments, tampered_params), server).code == HEADER_MISMATCH
