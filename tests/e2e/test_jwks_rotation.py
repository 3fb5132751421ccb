"""Key rotation behind a real Envoy with a throttled refetch (issue 21 item 5): the issuer's JWKS server
(`jwks_server.py`) starts serving a new key moments after the authorizer fetched its keys, and the
authorizer has `jwks_min_refetch: 30`.

A token signed with the new key must be accepted at once (the fetch that preceded the rotation was the
scheduled one, which cannot know the new key), by one shared fetch however many such tokens arrive
together; an unknown kid while no refetch is allowed is a retryable 503 `jwks_unavailable`, never the
401 `invalid_token` that makes a client throw its token away.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from faultstack import FaultStack, Signer, jwks, start_fault_stack
from harness import Authorizer, Envoy, Factory, SampleServer

OLD, NEW, UNPUBLISHED = Signer("rotation-old"), Signer("rotation-new"), Signer("never-published")


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    sample_server: Factory[SampleServer],
    authorizer: Factory[Authorizer],
    envoy: Factory[Envoy],
) -> Iterator[FaultStack]:
    running = start_fault_stack(
        tmp_path_factory.mktemp("rotation"),
        name="rotation",
        signer=OLD,
        sample_server=sample_server,
        authorizer=authorizer,
        envoy=envoy,
        issuer_fields={"jwks_min_refetch": 30},
    )
    yield running
    running.stop()


def test_rotation_right_after_a_fetch_is_accepted_and_throttling_is_retryable(stack: FaultStack) -> None:
    started = stack.jwks.fetches()  # the authorizer's startup fetch, a few seconds ago
    assert started >= 1
    got, marker = stack.call("search", stack.token(OLD))
    assert got == 200, stack.audit().get(marker)

    stack.jwks.set("ok", jwks=jwks(OLD, NEW))  # the issuer rotates: tokens now carry the new kid
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: stack.call("search", stack.token(NEW)), range(8)))
    assert [status for status, _ in results] == [200] * 8, [stack.audit().get(m) for _, m in results]
    assert stack.jwks.fetches() == started + 1  # one fetch for all of them

    # within 30 s of that kid-triggered fetch, an unknown kid gets no fetch and no verdict: 503, retryable
    got, marker = stack.call("search", stack.token(UNPUBLISHED))
    assert (got, stack.reason(marker)) == (503, (503, "jwks_unavailable"))
    assert stack.jwks.fetches() == started + 1

    ran = stack.reached_upstream()
    assert {m for _, m in results} <= ran and marker not in ran
