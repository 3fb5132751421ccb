"""Fuzzing Checker.check (hypothesis): arbitrary bytes, JSON and headers never make it raise, never
reach the fail-closed internal_error path, and never allow a request whose body calls a tool the
policy forbids, whatever the routing headers claim (lies, duplicates, encodings, revisions).

The Checker is the real one (parse_config, development key): with a local key a Check does no I/O,
so each one is driven to completion synchronously (``run``), which also proves it never suspends.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings
from hypothesis import strategies as st
from mcp.shared.inbound import decode_header_value as sdk_decode

from authz.check import Checker
from authz.front.grpc_service import to_check_response
from authz.model import Decision, HttpRequest
from tests.unit.support import OTHER_RESOURCE, RESOURCE, dev_stack, policy, server_spec

FORBIDDEN = "delete_repo"
POLICY = policy(
    {"name": "no-delete", "tools": [FORBIDDEN], "effect": "deny"},
    {"name": "all", "methods": ["*"]},
    {"name": "stream", "http_methods": ["GET", "DELETE"]},
)
FUZZ = settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Checker, str]]:
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    s = dev_stack(
        tmp,
        [
            server_spec("plain", RESOURCE, policy=POLICY),
            server_spec("header_only", OTHER_RESOURCE, policy=POLICY, header_only=True),
        ],
    )
    token = s.token(audience=RESOURCE, extra={"aud": [RESOURCE, OTHER_RESOURCE]})
    yield s.checker, token


def run(coro: Coroutine[Any, Any, Decision]) -> Decision:
    """Drive a Check that must not suspend (no I/O with a local key) to its Decision."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coro.close()
    raise AssertionError("Check suspended: it awaited real I/O")


def check(checker: Checker, req: HttpRequest) -> Decision:
    decision = run(checker.check(req))
    assert isinstance(decision, Decision)
    if currently_in_test_context():
        event(decision.reason)  # shown by --hypothesis-show-statistics
    assert decision.reason != "internal_error", decision.detail  # no exception reached the fail-closed path
    response = to_check_response(decision)  # and the codec takes whatever the Check produced
    if decision.allowed:
        assert decision.status == 200 and response.WhichOneof("http_response") == "ok_response"
        assert "authorization" in decision.remove_headers
    else:
        assert decision.status in (400, 401, 403, 413)
        assert response.denied_response.status.code == decision.status
        json.loads(decision.body)
    return decision


# ---------------------------------------------------------------- the oracle: does the body call the forbidden tool?


def _multi(pairs: list[tuple[str, Any]]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for k, v in pairs:
        out.setdefault(k, []).append(v)
    return out


def calls_forbidden(body: bytes | None) -> bool:
    """Leniently (duplicate keys: every value counts; any UTF-8 JSON): is `delete_repo` called in the body?"""
    if not body:
        return False
    try:
        doc = json.loads(body.decode("utf-8", "surrogatepass"), object_pairs_hook=_multi)
    except (ValueError, RecursionError, UnicodeDecodeError):
        return False
    for item in doc if isinstance(doc, list) else [doc]:
        if not isinstance(item, dict):
            continue
        if "tools/call" not in item.get("method", []):
            continue
        for params in item.get("params", []):
            if isinstance(params, dict) and FORBIDDEN in params.get("name", []):
                return True
    return False


# ---------------------------------------------------------------- strategies

VERSIONS = st.sampled_from(["2026-07-28", "2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05", "garbage", ""])
METHODS = st.sampled_from(
    ["tools/call", "tools/list", "prompts/get", "resources/read", "Tools/call", " tools/call", ""]
)
B64 = base64.b64encode(FORBIDDEN.encode()).decode()
NAMES = st.sampled_from(
    [
        FORBIDDEN,
        "read_repo",
        "",
        "Delete_repo",
        f"{FORBIDDEN} ",
        f"=?base64?{B64}?=",  # canonical encoding of delete_repo
        "=?base64?cmVhZF9yZXBv?=",  # read_repo
        f"=?base64?{B64[:-2]}9=?=",  # non-canonical
        f"=?BASE64?{B64}?=",
        f"read_repo,{FORBIDDEN}",
    ]
)
JSON_SCALARS = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8)
)
JSON = st.recursive(
    JSON_SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)


@st.composite
def headers(draw: st.DrawFn, token: str) -> tuple[dict[str, str], dict[str, tuple[str, ...]]]:
    """Routing headers absent, once or twice each; sometimes only in joined form (as HTTP ext_authz sends)."""
    plain: dict[str, str] = {}
    repeated: dict[str, tuple[str, ...]] = {}
    for name, values in (
        ("mcp-protocol-version", VERSIONS),
        ("mcp-method", METHODS | st.text(max_size=10)),
        ("mcp-name", NAMES | st.text(max_size=10)),
        ("mcp-session-id", st.text(max_size=6)),
    ):
        count = draw(st.sampled_from([0, 1, 1, 1, 2]))
        if count == 0:
            continue
        got = tuple(draw(values) for _ in range(count))
        if count == 2 and draw(st.booleans()):
            plain[name] = ",".join(got)  # duplicates hidden by joining
        elif count == 2:
            repeated[name] = got
        else:
            plain[name] = got[0]
    content_type = draw(
        st.sampled_from(["application/json", "application/json; charset=utf-8", "APPLICATION/JSON", "text/plain", None])
    )
    if content_type is not None:
        plain["content-type"] = content_type
    if draw(st.sampled_from([True] * 9 + [False])):  # usually a valid token
        plain["authorization"] = f"Bearer {token}"
    return plain, repeated


@st.composite
def forbidden_bodies(draw: st.DrawFn) -> bytes:
    """A JSON-RPC body calling delete_repo, alone or anywhere in a batch, serialized in many ways."""
    call: dict[str, Any] = {
        "jsonrpc": "2.0",
        "method": "tools/call",
        "params": {
            "name": FORBIDDEN,
            "arguments": draw(st.dictionaries(st.text(max_size=4), JSON_SCALARS, max_size=3)),
        },
    }
    request_id = draw(st.none() | st.integers(-(2**63), 2**63) | st.text(max_size=5))
    if request_id is not None:
        call["id"] = request_id
    if draw(st.booleans()):
        call["params"]["_meta"] = {"io.modelcontextprotocol/protocolVersion": draw(VERSIONS)}
    keys = draw(st.permutations(list(call)))
    call = {k: call[k] for k in keys}
    message: Any = call
    if draw(st.booleans()):
        others = [
            {
                "jsonrpc": "2.0",
                "id": 100 + i,
                "method": m,
                **({"params": {"name": "read_repo"}} if m == "tools/call" else {}),
            }
            for i, m in enumerate(draw(st.lists(st.sampled_from(["tools/list", "tools/call", "ping"]), max_size=4)))
        ]
        at = draw(st.integers(0, len(others)))
        message = [*others[:at], call, *others[at:]]
    text = json.dumps(message, ensure_ascii=draw(st.booleans()), indent=draw(st.none() | st.integers(0, 2)))
    if draw(st.booleans()):
        text = text.replace(f'"{FORBIDDEN}"', '"\\u0064elete\\u005frepo"')
    if draw(st.booleans()):
        # a duplicate "name" that a last-wins or first-wins parser would read differently
        text = text.replace(f'"name": "{FORBIDDEN}"', f'"name": "read_repo", "name": "{FORBIDDEN}"', 1)
    return text.encode()


def request_of(
    body: bytes | None, hdrs: tuple[dict[str, str], dict[str, tuple[str, ...]]], server: str, method: str = "POST"
) -> HttpRequest:
    plain, repeated = hdrs
    merged = {**plain, **{k: ",".join(v) for k, v in repeated.items()}}
    return HttpRequest(
        method=method,
        path="/mcp",
        headers=merged,
        body=body,
        context={"mcp_server": server},
        header_values=repeated,
    )


SERVERS = st.sampled_from(["plain", "header_only"])


# ---------------------------------------------------------------- properties


def test_the_policy_is_not_vacuous(stack: tuple[Checker, str]) -> None:
    checker, token = stack
    auth = {"authorization": f"Bearer {token}", "content-type": "application/json"}
    for server in ("plain", "header_only"):
        for tool, allowed in (("read_repo", True), (FORBIDDEN, False)):
            body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool}}).encode()
            decision = check(checker, request_of(body, (auth, {}), server))
            assert decision.allowed is allowed
            assert calls_forbidden(body) is not allowed
    header_only = {"authorization": f"Bearer {token}", "mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call"}
    assert check(checker, request_of(None, ({**header_only, "mcp-name": "read_repo"}, {}), "header_only")).allowed
    refused = check(checker, request_of(None, ({**header_only, "mcp-name": f"=?base64?{B64}?="}, {}), "header_only"))
    assert (refused.allowed, refused.reason) == (False, "policy_denied")


@FUZZ
@given(data=st.data(), body=forbidden_bodies(), server=SERVERS)
def test_no_header_combination_lets_a_forbidden_body_through(
    stack: tuple[Checker, str], data: st.DataObject, body: bytes, server: str
) -> None:
    checker, token = stack
    assert calls_forbidden(body)
    plain, repeated = data.draw(headers(token))
    if data.draw(st.booleans()):  # headers that tell the truth about the body, so the policy itself is reached
        plain = {**plain, "mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call"}
        plain["mcp-name"] = data.draw(st.sampled_from([FORBIDDEN, f"=?base64?{B64}?="]))
        plain["content-type"] = "application/json"
        repeated = {}
    decision = check(checker, request_of(body, (plain, repeated), server))
    assert not decision.allowed


@FUZZ
@given(data=st.data(), method=METHODS | st.text(max_size=10), name=NAMES | st.text(max_size=10))
def test_header_only_never_allows_the_forbidden_name(
    stack: tuple[Checker, str], data: st.DataObject, method: str, name: str
) -> None:
    checker, token = stack
    plain, repeated = data.draw(headers(token))
    version = data.draw(st.just("2026-07-28") | VERSIONS)
    plain = {**plain, "mcp-method": method, "mcp-name": name, "mcp-protocol-version": version}
    repeated = {k: v for k, v in repeated.items() if k not in ("mcp-method", "mcp-name", "mcp-protocol-version")}
    decision = check(checker, request_of(data.draw(st.sampled_from([None, b""])), (plain, repeated), "header_only"))
    if decision.allowed:
        assert decision.mcp is not None and decision.mcp.from_headers
        try:
            decoded = sdk_decode(name)
        except ValueError:
            decoded = None
        assert not (method == "tools/call" and decoded == FORBIDDEN)
        assert decision.mcp.calls[0].tool != FORBIDDEN


@FUZZ
@given(
    data=st.data(),
    body=st.binary(max_size=600),
    server=SERVERS,
    method=st.sampled_from(["POST", "GET", "DELETE", "PUT", "post"]),
)
def test_arbitrary_bytes(
    stack: tuple[Checker, str], data: st.DataObject, body: bytes, server: str, method: str
) -> None:
    checker, token = stack
    decision = check(checker, request_of(body, data.draw(headers(token)), server, method))
    if calls_forbidden(body) and method.upper() == "POST":
        assert not decision.allowed


@FUZZ
@given(data=st.data(), doc=JSON, server=SERVERS)
def test_arbitrary_json(stack: tuple[Checker, str], data: st.DataObject, doc: Any, server: str) -> None:
    checker, token = stack
    body = json.dumps(doc).encode()
    decision = check(checker, request_of(body, data.draw(headers(token)), server))
    if calls_forbidden(body):
        assert not decision.allowed


@settings(max_examples=300, deadline=None)
@given(
    data=st.data(),
    message=st.fixed_dictionaries(
        {"jsonrpc": st.sampled_from(["2.0", "2.0 ", 2.0, None]), "method": METHODS | st.text(max_size=8)},
        optional={
            "id": st.none() | st.integers() | st.text(max_size=4) | st.booleans() | st.floats(allow_nan=False),
            "params": st.dictionaries(st.sampled_from(["name", "uri", "arguments", "_meta"]), JSON, max_size=3) | JSON,
            "result": JSON,
        },
    ),
    server=SERVERS,
)
def test_arbitrary_json_rpc(
    stack: tuple[Checker, str], data: st.DataObject, message: dict[str, Any], server: str
) -> None:
    checker, token = stack
    body = json.dumps(message).encode()
    decision = check(checker, request_of(body, data.draw(headers(token)), server))
    if calls_forbidden(body):
        assert not decision.allowed


# ---------------------------------------------------------------- pathological bodies


def auth(token: str) -> tuple[dict[str, str], dict[str, tuple[str, ...]]]:
    return {"authorization": f"Bearer {token}", "content-type": "application/json"}, {}


CALL_PREFIX = b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "delete_repo", "arguments": '


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"[" * 100_000, "body_invalid"),
        (b"{" * 100_000, "body_invalid"),
        (CALL_PREFIX + b"[" * 100_000 + b"]" * 100_000 + b"}}", "body_invalid"),
        (b"1" + b"0" * 100_000, "body_invalid"),
        (b'{"jsonrpc": "2.0", "id": 1' + b"0" * 100_000 + b', "method": "ping"}', "body_invalid"),
        (CALL_PREFIX + b'{"n": 1' + b"0" * 100_000 + b"}}}", "body_invalid"),
        (
            b'{"jsonrpc": "2.0", "id": "\\ud800", "method": "tools/call", "params": {"name": "delete_repo"}}',
            "policy_denied",
        ),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "\\udfff"}}', "allowed"),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "\\ud800", "params": {"name": "delete_repo"}}', "allowed"),
        # another name (a server looks it up as it is, and finds no such tool)
        (b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "delete_repo\\u0000"}}', "allowed"),
        (
            b'\xef\xbb\xbf{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "delete_repo"}}',
            "body_invalid",
        ),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "delete_repo"}}\x00', "body_invalid"),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "delete_repo"}} {}', "body_invalid"),
    ],
)
@pytest.mark.parametrize("server", ["plain", "header_only"])
def test_pathological_bodies(stack: tuple[Checker, str], body: bytes, reason: str, server: str) -> None:
    checker, token = stack
    decision = check(checker, request_of(body, auth(token), server))
    assert decision.reason == reason
    if reason == "allowed":
        assert decision.mcp is not None and decision.mcp.calls[0].tool != FORBIDDEN


@pytest.mark.parametrize("tool", ["read_repo", FORBIDDEN])
def test_ten_thousand_element_batch(stack: tuple[Checker, str], tool: str) -> None:
    checker, token = stack
    batch = [{"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {"name": tool}} for i in range(10_000)]
    decision = check(checker, request_of(json.dumps(batch).encode(), auth(token), "plain"))
    assert (decision.allowed, decision.status, decision.reason) == (False, 400, "batch_invalid")


def test_forbidden_call_at_the_end_of_the_largest_batch(stack: tuple[Checker, str]) -> None:
    checker, token = stack
    batch = [{"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {"name": "read_repo"}} for i in range(255)]
    ok = check(checker, request_of(json.dumps(batch).encode(), auth(token), "plain"))
    assert ok.allowed
    batch.append({"jsonrpc": "2.0", "id": 999, "method": "tools/call", "params": {"name": FORBIDDEN}})
    decision = check(checker, request_of(json.dumps(batch).encode(), auth(token), "plain"))
    assert (decision.allowed, decision.reason, decision.rule) == (False, "policy_denied", "no-delete")
