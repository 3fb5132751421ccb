"""Memory caps of the running authorizer: the token cache size comes from the config and is never exceeded."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import ISSUER, RESOURCE, issuer_spec, make_config, policy, server_spec

from authz.app import Authorizer
from authz.config.errors import ConfigError
from authz.identity import devkey


def test_token_cache_size_defaults_to_ten_thousand() -> None:
    assert make_config().token_cache_size == 10_000


@pytest.mark.parametrize("size", [0, -1, 1_000_001, "many"])
def test_token_cache_size_must_be_a_sane_bound(size: object) -> None:
    with pytest.raises(ConfigError):
        make_config(token_cache_size=size)


async def test_the_token_cache_holds_at_most_token_cache_size_tokens(tmp_path: Path) -> None:
    key = devkey.ensure_key(tmp_path / "dev.pem")
    config = make_config([issuer_spec(local_key_file=str(key))], token_cache_size=5)
    authorizer = Authorizer(config)
    verifier = authorizer.verifier
    server = config.servers["mcp"]
    tokens = [devkey.mint(key, issuer=ISSUER, audience=RESOURCE, subject=f"user-{i}") for i in range(12)]
    for token in tokens:
        assert (await verifier.verify(token, server)).issuer == ISSUER
        assert len(verifier.cache) <= 5
    stats = authorizer.stats()
    assert (stats["token_cache"], stats["token_cache_size"]) == (5, 5)
    assert stats["jwks_keys"] == {"main": 1}
    assert verifier.cache.get(tokens[0]) is None and verifier.cache.get(tokens[-1]) is not None
    await authorizer.stop()


@pytest.mark.parametrize(("when", "kept"), [(None, False), ('"admins" in jwt.groups', True)])
async def test_cached_tokens_keep_their_claims_only_when_a_policy_reads_them(
    tmp_path: Path, when: str | None, kept: bool
) -> None:
    key = devkey.ensure_key(tmp_path / "dev.pem")
    rule: dict[str, object] = {"name": "r", "methods": ["*"], **({"when": when} if when else {})}
    server = server_spec(policy=policy(rule))
    config = make_config([issuer_spec(local_key_file=str(key))], [server])
    authorizer = Authorizer(config)
    token = devkey.mint(key, issuer=ISSUER, audience=RESOURCE, subject="alice", extra={"groups": ["admins"]})
    caller = await authorizer.verifier.verify(token, config.servers["mcp"])
    assert ("groups" in caller.claims) is kept and "iat" in caller.claims
    await authorizer.stop()
