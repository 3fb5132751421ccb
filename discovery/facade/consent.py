"""Consent per client: the user approves which client, which scopes and which MCP server before the facade
uses its static upstream client (MCP 2026-07-28: a proxy with a static client id MUST get consent per client).

An authorization request is parked in the shared store under a transaction id with a one-time form token;
only a POST carrying that token marks it consented, and the upstream redirect is refused for a transaction
that was never consented (so consent cannot be skipped by going straight to the upstream step).
"""

from __future__ import annotations

import hmac
import html
import json
import secrets
from dataclasses import asdict, dataclass, replace

from authz.store.base import Store

TXN_TTL = 600.0
_PREFIX = "facade:txn:"


class ConsentError(Exception):
    """A transaction that is unknown, expired, or not consented."""


@dataclass(frozen=True)
class Pending:
    """An authorization request waiting for (or past) the user's consent."""

    client_id: str
    client_name: str
    redirect_uri: str
    state: str | None
    code_challenge: str
    resource: str
    scope: str
    form_token: str = ""
    consented: bool = False


async def _save(store: Store, txn: str, pending: Pending) -> None:
    await store.put(_PREFIX + txn, json.dumps(asdict(pending)).encode(), TXN_TTL)


async def _load(store: Store, txn: str) -> Pending:
    raw = await store.get(_PREFIX + txn)
    if raw is None:
        raise ConsentError("authorization request is unknown or expired; start again from the client")
    return Pending(**json.loads(raw))


async def begin(store: Store, pending: Pending) -> tuple[str, Pending]:
    """Park a request for consent; returns the transaction id and the request with its form token."""
    txn = secrets.token_urlsafe(24)
    parked = replace(pending, form_token=secrets.token_urlsafe(24), consented=False)
    await _save(store, txn, parked)
    return txn, parked


def page(txn: str, pending: Pending, server_name: str, action: str) -> str:
    """The consent page: the client, the scopes, the MCP server, and approve/deny buttons."""
    e = html.escape
    scopes = "".join(f"<li>{e(s)}</li>" for s in pending.scope.split()) or "<li>(none)</li>"
    return (
        "<!doctype html><html><head><meta charset=utf-8><title>Authorize access</title></head><body>"
        f"<h1>Allow {e(pending.client_name)} to use {e(server_name)}?</h1>"
        f"<p>Client: <code>{e(pending.client_id)}</code><br>Redirects to: <code>{e(pending.redirect_uri)}</code></p>"
        f"<p>MCP server: <code>{e(pending.resource)}</code></p><p>Scopes:</p><ul>{scopes}</ul>"
        f'<form method=post action="{e(action)}"><input type=hidden name=txn value="{e(txn)}">'
        f'<input type=hidden name=form_token value="{e(pending.form_token)}">'
        "<button name=decision value=approve>Allow</button> <button name=decision value=deny>Deny</button>"
        "</form></body></html>"
    )


async def approve(store: Store, txn: str, form_token: str) -> Pending:
    """Record consent for a transaction; the form token must be the one its page carried."""
    pending = await _load(store, txn)
    if not pending.form_token or not hmac.compare_digest(pending.form_token, form_token):
        raise ConsentError("consent form token does not match; reload the consent page")
    consented = replace(pending, form_token="", consented=True)
    await _save(store, txn, consented)
    return consented


async def take_consented(store: Store, txn: str) -> Pending:
    """Take a consented transaction once (the upstream callback); refused if consent was skipped."""
    raw = await store.take(_PREFIX + txn)
    if raw is None:
        raise ConsentError("authorization request is unknown, expired or already completed")
    pending = Pending(**json.loads(raw))
    if not pending.consented:
        raise ConsentError("the user has not consented to this client")
    return pending
