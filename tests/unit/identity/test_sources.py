"""Identity sources (authz/identity/sources.py), through the Check: a bearer token travels in the
``Authorization`` header only (RFC 6750 §2.1; MCP forbids tokens in the query string)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support import METADATA_URL, DevStack, dev_stack, http_request, policy, server_spec, tool_call

from authz.errors import INVALID_REQUEST
from authz.model import Decision, HttpRequest


@pytest.fixture
def stack(tmp_path: Path) -> DevStack:
    return dev_stack(tmp_path, [server_spec(policy=policy({"name": "all", "methods": ["*"]}))])


def with_path(req: HttpRequest, path: str) -> HttpRequest:
    return HttpRequest(req.method, path, req.headers, req.body, context=req.context)


def assert_invalid_request(decision: Decision, reason: str) -> None:
    assert (decision.allowed, decision.status, decision.reason) == (False, 400, reason)
    headers = dict(decision.deny_headers)
    assert headers["www-authenticate"] == f'Bearer error="invalid_request", resource_metadata="{METADATA_URL}"'
    assert json.loads(decision.body)["error"]["code"] == INVALID_REQUEST


@pytest.mark.parametrize(
    "query",
    [
        "access_token={token}",
        "a=1&access_token={token}",
        "access_token=",  # any access_token parameter, even an empty one
        "access%5Ftoken={token}",  # the name percent-encoded
        "%61ccess_token={token}",
        "ACCESS_TOKEN={token}",
    ],
)
async def test_a_token_in_the_query_beside_the_header_is_400_invalid_request(stack: DevStack, query: str) -> None:
    token = stack.token()
    req = with_path(http_request(tool_call("x"), token=token), "/mcp?" + query.format(token=token))
    assert_invalid_request(await stack.checker.check(req), "token_in_query")


async def test_a_token_in_the_query_alone_is_400_not_accepted(stack: DevStack) -> None:
    req = with_path(http_request(tool_call("x")), f"/mcp?access_token={stack.token()}")
    assert_invalid_request(await stack.checker.check(req), "token_in_query")


async def test_a_token_in_a_form_body_is_400_invalid_request(stack: DevStack) -> None:
    token = stack.token()
    form = f"access_token={token}".encode()
    for bearer in (token, None):
        req = http_request(form, token=bearer, content_type="application/x-www-form-urlencoded")
        assert_invalid_request(await stack.checker.check(req), "token_in_body")


async def test_other_query_parameters_are_fine(stack: DevStack) -> None:
    req = with_path(http_request(tool_call("x"), token=stack.token()), "/mcp?tenant=a&my_access_token=b")
    decision = await stack.checker.check(req)
    assert decision.allowed, decision.detail


async def test_a_form_body_without_a_token_is_left_to_the_parser(stack: DevStack) -> None:
    req = http_request(b"q=1", token=stack.token(), content_type="application/x-www-form-urlencoded")
    decision = await stack.checker.check(req)
    assert (decision.status, decision.reason) == (400, "content_type_invalid")
