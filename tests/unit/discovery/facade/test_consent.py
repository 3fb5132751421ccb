"""Facade consent: shown per client, required before the upstream step, form token checked."""

from __future__ import annotations

import pytest

from authz.store.memory import MemoryStore
from discovery.facade.consent import ConsentError, Pending, approve, begin, page, take_consented

REQ = Pending(
    "https://c.example/c.json", "Demo <b>", "http://127.0.0.1:9/cb", "s1", "ch", "https://mcp/x", "read write"
)


async def test_consent_skipped_is_refused() -> None:
    store = MemoryStore()
    txn, _ = await begin(store, REQ)
    with pytest.raises(ConsentError, match="not consented"):
        await take_consented(store, txn)
    with pytest.raises(ConsentError, match="already completed"):
        await take_consented(store, txn)


async def test_consent_needs_the_page_form_token() -> None:
    store = MemoryStore()
    txn, parked = await begin(store, REQ)
    with pytest.raises(ConsentError, match="form token"):
        await approve(store, txn, "forged")
    await approve(store, txn, parked.form_token)
    with pytest.raises(ConsentError, match="form token"):
        await approve(store, txn, parked.form_token)  # used once
    assert (await take_consented(store, txn)).client_id == REQ.client_id


async def test_page_names_client_scopes_and_server_escaped() -> None:
    store = MemoryStore()
    txn, parked = await begin(store, REQ)
    html = page(txn, parked, "GitHub tools", "/facade/consent")
    assert "Demo &lt;b&gt;" in html and "<li>read</li><li>write</li>" in html and "GitHub tools" in html
    assert parked.form_token in html and REQ.client_id in html
