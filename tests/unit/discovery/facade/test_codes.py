"""Facade authorization codes: single use, bound to client, redirect URI and PKCE, expiring."""

from __future__ import annotations

import pytest

from authz.store.memory import MemoryStore
from discovery.facade.codes import CodeError, Grant, issue, redeem, s256

VERIFIER = "v" * 50
GRANT = Grant("https://c.example/c.json", "http://127.0.0.1:9/cb", s256(VERIFIER), "https://mcp/x", "read", "alice")


async def test_code_redeemed_once() -> None:
    store = MemoryStore()
    code = await issue(store, GRANT)
    assert await redeem(store, code, GRANT.client_id, GRANT.redirect_uri, VERIFIER) == GRANT
    with pytest.raises(CodeError, match="already used"):
        await redeem(store, code, GRANT.client_id, GRANT.redirect_uri, VERIFIER)


@pytest.mark.parametrize(
    ("client_id", "redirect_uri", "verifier", "reason"),
    [
        ("https://other.example/c.json", GRANT.redirect_uri, VERIFIER, "another client"),
        (GRANT.client_id, "http://127.0.0.1:9/other", VERIFIER, "redirect_uri"),
        (GRANT.client_id, GRANT.redirect_uri, None, "code_verifier"),
        (GRANT.client_id, GRANT.redirect_uri, "w" * 50, "code_verifier"),
    ],
)
async def test_wrong_redeemer_refused_and_code_spent(
    client_id: str, redirect_uri: str, verifier: str | None, reason: str
) -> None:
    store = MemoryStore()
    code = await issue(store, GRANT)
    with pytest.raises(CodeError, match=reason):
        await redeem(store, code, client_id, redirect_uri, verifier)
    with pytest.raises(CodeError, match="already used"):
        await redeem(store, code, GRANT.client_id, GRANT.redirect_uri, VERIFIER)


async def test_code_expires() -> None:
    now = [1000.0]
    store = MemoryStore(clock=lambda: now[0])
    code = await issue(store, GRANT, ttl=60)
    now[0] += 61
    with pytest.raises(CodeError, match="expired"):
        await redeem(store, code, GRANT.client_id, GRANT.redirect_uri, VERIFIER)


def test_s256_is_unpadded_base64url_of_sha256() -> None:
    challenge = s256(VERIFIER)
    assert len(challenge) == 43 and "=" not in challenge and "+" not in challenge and "/" not in challenge
    assert challenge != s256(VERIFIER + "x")
