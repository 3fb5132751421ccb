"""Acceptance, protocol revisions: one policy whatever the MCP revision, and no smuggling between
what the routing headers say and what the body does.

Two deployments:

- `rev`: the body is checked for every request (every revision accepted).
- `fast`: `header_only: true` and `revisions: [2025-11-25, 2026-07-28]`. Envoy sends a 2026-07-28
  request carrying `Mcp-Method` to the authorizer without its body; the decision is made on the
  routing headers, and the upstream (the `mcp` SDK server) refuses a body that disagrees with them,
  as the revision requires of it. Older revisions still go through the body check.

The token is `m2m-reader`'s (scope `tools:read`): `search` is allowed, `delete_repo` is not, so a
smuggling attempt that worked would run `delete_repo`, which the sample server's call log records.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from harness import (
    MODE_2025_11_25,
    MODE_2026_07_28,
    InMemoryTokenStorage,
    RawMcp,
    client_credentials_provider,
    mcp_client,
)
from mcp.shared.exceptions import MCPError
from stack import ACCEPT, META, Stack, call_body, challenge_params, start_stack

FAST_REVISIONS = ["2025-11-25", "2026-07-28"]


def _start(name: str, request: pytest.FixtureRequest, **server: Any) -> Stack:
    fixtures = {n: request.getfixturevalue(n) for n in ("idp_server", "sample_server", "authorizer", "envoy")}
    return start_stack(
        request.getfixturevalue("e2e_log_dir"),
        name=name,
        idp=fixtures["idp_server"],
        sample_server=fixtures["sample_server"],
        authorizer=fixtures["authorizer"],
        envoy=fixtures["envoy"],
        server=server,
    )


@pytest.fixture(scope="module")
def rev_stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    started = _start("rev", request)
    yield started
    started.stop()


@pytest.fixture(scope="module")
def fast_stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    started = _start("fast", request, header_only=True, revisions=FAST_REVISIONS)
    yield started
    started.stop()


@pytest.fixture
def rev(rev_stack: Stack) -> Stack:
    rev_stack.clear()
    return rev_stack


@pytest.fixture
def fast(fast_stack: Stack) -> Stack:
    fast_stack.clear()
    return fast_stack


@pytest.fixture(scope="module")
def reader_tokens(rev_stack: Stack, fast_stack: Stack) -> dict[str, str]:
    return {s.name: s.idp_token("m2m-reader", "tools:read") for s in (rev_stack, fast_stack)}


# ---------------------------------------------------------------- same tokens, same decisions


async def test_sdk_client_in_both_revisions_gets_the_same_decisions(rev: Stack) -> None:
    storage = InMemoryTokenStorage()  # shared: the second client starts with the first one's token
    seen: dict[str, list[tuple[int, str, str | None]]] = {}
    for mode, version in ((MODE_2026_07_28, "2026-07-28"), (MODE_2025_11_25, "2025-11-25")):
        rev.clear()
        before = len(rev.decisions())
        provider = client_credentials_provider(rev.url, "m2m-reader", issuer=rev.idp.issuer, storage=storage)
        async with mcp_client(rev.url, auth=provider, mode=mode) as client:
            assert client.protocol_version == version
            tools = await client.list_tools()
            assert "delete_repo" in {t.name for t in tools.tools}
            found = await client.call_tool("search", {"query": "readme"})
            assert not found.is_error
            with pytest.raises(MCPError, match="insufficient_scope"):
                await client.call_tool("delete_repo", {"repo": "sample"})
        assert rev.sample.tool_calls() == ["search"], version
        seen[version] = [
            (d["status"], d["reason"], d.get("mcp_name"))
            for d in rev.decisions()[before:]
            if d["message"] == "deny" and d["reason"] != "token_missing"
        ]
        requests = rev.sample.requests()
        assert all(r["headers"]["x-mcp-subject"] == "m2m-reader" for r in requests)
        assert all("authorization" not in r["headers"] for r in requests)
        with_session = [r for r in requests if "mcp-session-id" in r["headers"]]
        if version == "2026-07-28":
            assert with_session == []
        else:
            assert with_session, "the 2025-11-25 client should hold a session"
            assert all(r["headers"]["mcp-protocol-version"] == "2025-11-25" for r in with_session)
    # The SDK re-authorizes once on insufficient_scope (it can get no more than tools:read), so
    # each revision saw delete_repo refused twice; nothing else was refused.
    assert seen["2026-07-28"] == seen["2025-11-25"] == [(403, "insufficient_scope", "delete_repo")] * 2


async def test_raw_requests_in_both_revisions_get_the_same_answers(rev: Stack, reader_tokens: dict[str, str]) -> None:
    token = reader_tokens["rev"]
    answers = {}
    for version in ("2026-07-28", "2025-11-25", "2025-06-18"):
        async with RawMcp(rev.url, protocol_version=version, token=token) as raw:
            if version != "2026-07-28":
                assert (await raw.initialize()).status == 200
                assert raw.session_id
            allowed = await raw.call_tool("search", {"query": "main"})
            refused = await raw.call_tool("delete_repo", {"repo": "sample"})
        assert allowed.status == 200, allowed.text
        assert refused.status == 403
        answers[version] = (refused.headers["www-authenticate"], refused.message["error"]["code"])
        assert refused.message["id"] == (3 if version != "2026-07-28" else 2)
    assert len(set(answers.values())) == 1, answers
    assert challenge_params(answers["2026-07-28"][0])["scope"] == "tools:write"
    assert rev.sample.tool_calls() == ["search"] * 3


# ---------------------------------------------------------------- smuggling


@dataclass(frozen=True)
class Smuggle:
    """One request whose routing headers say one thing while its body does another."""

    headers: list[tuple[str, str]]  # the routing headers actually sent (besides content type etc.)
    body_meta_version: str = "2026-07-28"
    legacy_session: bool = False  # sent as 2025-11-25 after an initialize handshake
    reason: str = "header_mismatch"  # the authorizer's reason when it checks the body
    detail: str = ""  # ... and a word of its log detail, where the reason alone is ambiguous
    refused_by_upstream_when_header_only: bool = False
    header_only_status: int = 400  # 403: the headers alone name the forbidden tool
    code: int = -32020  # the JSON-RPC error code of the 400
    batch: bool = False  # the body is a batch: [search, delete_repo]


V = ("mcp-protocol-version", "2026-07-28")
M = ("mcp-method", "tools/call")

SMUGGLING: dict[str, Smuggle] = {
    "name-header-says-search": Smuggle([V, M, ("mcp-name", "search")], refused_by_upstream_when_header_only=True),
    "method-header-says-tools-list": Smuggle(
        [V, ("mcp-method", "tools/list")], refused_by_upstream_when_header_only=True
    ),
    "two-name-headers": Smuggle(
        [V, M, ("mcp-name", "search"), ("mcp-name", "delete_repo")], reason="header_duplicated"
    ),
    "two-identical-name-headers": Smuggle(
        [V, M, ("mcp-name", "delete_repo"), ("mcp-name", "delete_repo")], reason="header_duplicated"
    ),
    "base64-name-of-search": Smuggle(
        [V, M, ("mcp-name", "=?base64?c2VhcmNo?=")], refused_by_upstream_when_header_only=True
    ),
    # delete_repo is ZGVsZXRlX3JlcG8=; a non-zero padding bit decodes to the same bytes.
    "non-canonical-base64": Smuggle([V, M, ("mcp-name", "=?base64?ZGVsZXRlX3JlcG9=?=")], reason="header_malformed"),
    "no-name-header": Smuggle([V, M], reason="header_missing"),
    "version-header-disagrees-with-meta": Smuggle(
        [V, M, ("mcp-name", "delete_repo")],
        body_meta_version="2025-11-25",
        detail="_meta",
        header_only_status=403,
    ),
    # The body claims an older revision (whose servers need not check headers), the headers an allowed call.
    "meta-says-older-revision-name-header-says-search": Smuggle(
        [V, M, ("mcp-name", "search")],
        body_meta_version="2025-11-25",
        refused_by_upstream_when_header_only=True,
    ),
    "legacy-session-name-header-says-search": Smuggle([("mcp-name", "search")], legacy_session=True),
    # Headers for the batch's harmless first element; 2026-07-28 has no batches at all.
    "batch-behind-search-headers": Smuggle(
        [V, M, ("mcp-name", "search")],
        batch=True,
        reason="batch_invalid",
        code=-32600,
        refused_by_upstream_when_header_only=True,
    ),
}


async def smuggle(stack: Stack, token: str, case: Smuggle) -> tuple[httpx.Response, int]:
    """Send the attempt (a `delete_repo` call): the response, and whether the upstream received it (0 or 1)."""
    headers = [("authorization", f"Bearer {token}"), ("content-type", "application/json"), ("accept", ACCEPT)]
    body = call_body("delete_repo", {"repo": "sample"}, request_id=41)
    if case.legacy_session:
        raw = RawMcp(stack.url, protocol_version="2025-11-25", token=token)
        try:
            assert (await raw.initialize()).status == 200
            assert raw.session_id
            headers += [("mcp-protocol-version", "2025-11-25"), ("mcp-session-id", raw.session_id)]
            del body["params"]["_meta"]
            upstream_before = len(stack.sample.requests())
            async with httpx.AsyncClient(timeout=10.0) as http:
                response = await http.post(stack.url, content=json.dumps(body), headers=headers + case.headers)
            reached = len(stack.sample.requests()) - upstream_before
        finally:
            await raw.aclose()  # ends the session (a DELETE the upstream sees)
        return response, reached
    body["params"]["_meta"] = {**META, "io.modelcontextprotocol/protocolVersion": case.body_meta_version}
    sent: Any = [call_body("search", {"query": "x"}, request_id=40), body] if case.batch else body
    async with httpx.AsyncClient(timeout=10.0) as http:
        response = await http.post(stack.url, content=json.dumps(sent), headers=headers + case.headers)
    return response, len(stack.sample.requests())


@pytest.mark.parametrize("name", list(SMUGGLING))
async def test_smuggling_is_refused_by_the_authorizer(rev: Stack, reader_tokens: dict[str, str], name: str) -> None:
    case = SMUGGLING[name]
    before = len(rev.decisions())
    response, reached = await smuggle(rev, reader_tokens["rev"], case)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == case.code
    denial = rev.last_denial(before)
    assert denial["reason"] == case.reason
    assert case.detail in denial["detail"]
    assert reached == 0  # the attempt itself never reached the server
    assert rev.sample.tool_calls() == []


@pytest.mark.parametrize("name", list(SMUGGLING))
async def test_smuggling_in_header_only_mode(fast: Stack, reader_tokens: dict[str, str], name: str) -> None:
    """The authorizer decides on the headers; what it lets through, the upstream's own check refuses."""
    case = SMUGGLING[name]
    before = len(fast.decisions())
    response, reached = await smuggle(fast, reader_tokens["fast"], case)
    assert response.status_code == case.header_only_status, response.text
    if case.header_only_status == 403:
        assert fast.last_denial(before)["reason"] == "insufficient_scope"
        assert reached == 0
    elif case.refused_by_upstream_when_header_only:
        assert response.json()["error"]["code"] == case.code
        # Allowed on its headers (which name an allowed operation); refused by the SDK server.
        assert reached == 1, "expected the upstream to see (and refuse) the request"
        assert [d for d in fast.decisions()[before:] if d["message"] == "deny"] == []
    else:
        assert response.json()["error"]["code"] == case.code
        assert reached == 0
        assert fast.last_denial(before)["reason"] == case.reason
    assert fast.sample.tool_calls() == []


# ---------------------------------------------------------------- revisions a server does not accept


@pytest.mark.parametrize("version", ["2025-06-18", None])
async def test_an_unaccepted_revision_gets_400_naming_the_accepted_ones(
    fast: Stack, reader_tokens: dict[str, str], version: str | None
) -> None:
    headers = {"authorization": f"Bearer {reader_tokens['fast']}", "content-type": "application/json"}
    headers["accept"] = ACCEPT
    if version is not None:
        headers["mcp-protocol-version"] = version
    body = {"jsonrpc": "2.0", "id": 5, "method": "tools/list"}
    before = len(fast.decisions())
    response = httpx.post(fast.url, content=json.dumps(body), headers=headers, timeout=10.0)
    assert response.status_code == 400, response.text
    message = response.json()
    assert message["id"] == 5
    assert message["error"]["code"] == -32022
    # A request without the header is taken as 2025-03-26.
    assert message["error"]["data"] == {"supported": FAST_REVISIONS, "requested": version or "2025-03-26"}
    assert fast.last_denial(before)["reason"] == "revision_unsupported"
    assert fast.sample.requests() == []


# ---------------------------------------------------------------- header-only decisions


async def test_header_only_decides_2026_requests_without_the_body(fast: Stack, reader_tokens: dict[str, str]) -> None:
    token = reader_tokens["fast"]
    async with RawMcp(fast.url, token=token) as raw:
        allowed = await raw.call_tool("search", {"query": "readme"})
        refused = await raw.call_tool("delete_repo", {"repo": "sample"})
        # Bigger than Envoy's max_request_bytes: a body-checked route answers 413 before the
        # Check (see below); here Envoy does not buffer the body at all, so it reaches the server.
        query = "q" * (fast.max_request_bytes + 1024)
        large = await raw.call_tool("search", {"query": query})
    assert allowed.status == 200, allowed.text
    assert refused.status == 403
    assert challenge_params(refused.headers["www-authenticate"])["scope"] == "tools:write"
    assert large.status == 200, large.text
    calls = fast.sample.calls()
    assert [c["tool"] for c in calls] == ["search", "search"]
    assert len(calls[1]["arguments"]["query"]) == len(query)


async def test_the_same_large_body_gets_413_where_bodies_are_checked(rev: Stack, reader_tokens: dict[str, str]) -> None:
    async with RawMcp(rev.url, token=reader_tokens["rev"]) as raw:
        large = await raw.call_tool("search", {"query": "q" * (rev.max_request_bytes + 1024)})
    assert large.status == 413
    assert rev.sample.requests() == []


async def test_header_only_still_checks_bodies_of_older_revisions(fast: Stack, reader_tokens: dict[str, str]) -> None:
    async with RawMcp(fast.url, protocol_version="2025-11-25", token=reader_tokens["fast"]) as raw:
        assert (await raw.initialize()).status == 200
        allowed = await raw.call_tool("search", {"query": "readme"})
        refused = await raw.call_tool("delete_repo", {"repo": "sample"})
        large = await raw.call_tool("search", {"query": "q" * (fast.max_request_bytes + 1024)})
    assert allowed.status == 200, allowed.text
    assert refused.status == 403
    assert large.status == 413  # buffered for the Check: this revision's server need not validate headers
    assert fast.sample.tool_calls() == ["search"]


async def test_sdk_client_through_header_only_mode(fast: Stack) -> None:
    provider = client_credentials_provider(fast.url, "m2m-reader", issuer=fast.idp.issuer)
    async with mcp_client(fast.url, auth=provider, mode=MODE_2026_07_28) as client:
        tools = await client.list_tools()
        assert "search" in {t.name for t in tools.tools}
        assert not (await client.call_tool("search", {"query": "readme"})).is_error
        with pytest.raises(MCPError, match="insufficient_scope"):
            await client.call_tool("delete_repo", {"repo": "sample"})
    assert fast.sample.tool_calls() == ["search"]
