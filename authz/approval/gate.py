"""Human approval of tool calls whose policy rule says ``approval: true``.

On such a call the gate POSTs an approval request to the webhook and holds the Check up to
``wait``. The webhook answers at once (``{"decision": "approve"|"deny"}``) or later through the
signed callback ``POST /approvals/<id>`` of the discovery service. Approved: the call goes on.
An immediate answer counts only when signed with ``webhook_secret`` and naming the request's ``approval_id``
(``{"approval_id": ..., "decision": ...}``); an unsigned one is ignored (the call stays pending).
Denied, or no answer in time: a JSON-RPC error (``ApprovalRefused``) with the approval id.

A late approval is kept ``keep_seconds`` in the store, keyed by subject, server, method, name and
argument digest, and lets that identical retry through exactly once (``store.take``), on any
replica. State in the store: ``approval:pending:<id>`` (taken by the one callback that answers
it, so a replayed callback finds nothing), ``approval:decision:<id>`` (what the answer was, for a
Check still waiting on another replica) and ``approval:grant:<digest>`` (one use).

Signatures (requests, immediate answers, callbacks): ``X-MCP-Authz-Timestamp: <unix seconds>`` and
``X-MCP-Authz-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp

from authz.config.runtime import Approvals, Server
from authz.errors import ApprovalRefused, Forbidden, MissingToken, Unavailable
from authz.model import Caller, HttpRequest, McpCall, McpRequest
from authz.observe import telemetry
from authz.store.base import Store, StoreError

log = logging.getLogger("mcp_authz.approval")

TIMESTAMP_HEADER = "x-mcp-authz-timestamp"
SIGNATURE_HEADER = "x-mcp-authz-signature"
POLL_INTERVAL = 0.1  # seconds between store reads while a Check waits (answers landing on other replicas)
MAX_CALLBACK_BYTES = 16_384

AuditStep = Callable[[dict[str, Any]], None]


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no spaces, UTF-8: the bytes the argument digest is taken over."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def arguments_digest(arguments: Mapping[str, Any] | None) -> str:
    return hashlib.sha256(canonical_json(dict(arguments or {}))).hexdigest()


def sign(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def signature_valid(secret: str, timestamp: str | None, signature: str | None, body: bytes, max_skew: int) -> bool:
    """True if ``signature`` signs ``timestamp.body`` with ``secret`` and the timestamp is recent."""
    if not timestamp or not signature or not timestamp.isdigit() or len(timestamp) > 12:
        return False
    if abs(time.time() - int(timestamp)) > max_skew:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


def _hash(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


class ApprovalGate:
    """The approval stage of the Check, and the handler of the signed callbacks."""

    def __init__(
        self,
        approvals: Approvals | None,
        store: Store | None,
        http: Callable[[], aiohttp.ClientSession],
        audit: AuditStep | None = None,
    ) -> None:
        self.approvals = approvals
        self._store = store
        self._http = http
        self._audit = audit
        self._waiting: dict[str, asyncio.Event] = {}

    def configure(self, approvals: Approvals | None, store: Store | None) -> None:
        """New settings on reload; Checks waiting now keep waiting (answers reach them via the store)."""
        self.approvals = approvals
        self._store = store

    def _step(self, step: str, approval_id: str | None, **fields: Any) -> None:
        """One audit event per step, and the ``mcp_authz.approvals`` counter."""
        try:
            telemetry.count_approval(step)
            if self._audit is not None:
                self._audit({"event": "approval", "step": step, "approval_id": approval_id, **fields})
        except Exception:  # auditing never fails a Check
            log.debug("approval audit failed", exc_info=True)

    # ------------------------------------------------------------------ the Check stage

    async def check(self, server: Server, caller: Caller, mcp: McpRequest, rule: str | None, req: HttpRequest) -> None:
        """Return if the call may go on; raise ApprovalRefused (or fail closed) otherwise."""
        policy = server.policy
        if policy is None or not policy.approval_rules:
            return
        if mcp.batch:  # ``rule`` is the last element's: a call needing approval could hide before it
            raise Forbidden("approval_batch", "a server with approval rules takes no JSON-RPC batches")
        if rule is None or rule not in policy.approval_rules or len(mcp.calls) != 1:
            return
        if mcp.from_headers:  # the arguments are what a person approves: never decide without the body
            raise Forbidden("approval_needs_body", "decided on routing headers alone; the arguments are unknown")
        if caller.anonymous:  # an approval is for someone: anonymous callers would share it
            raise MissingToken("approval_needs_identity", "an anonymous caller cannot be approved")
        approvals, store = self.approvals, self._store
        if approvals is None or store is None:
            raise Unavailable("approval_unavailable", "approvals are not configured or there is no store")
        call = mcp.calls[0]
        digest = arguments_digest(call.arguments)
        about = {
            "server": server.name,
            "subject": caller.subject,
            "client_id": caller.client_id,
            "method": call.method,
            "tool": call.name,
            "arguments_sha256": digest,
            "rule": rule,
        }
        grant = "approval:grant:" + _hash(caller.issuer, caller.subject, server.name, call.method, call.name, digest)
        try:
            granted = await store.take(grant)
            if granted is not None:
                self._step("grant_used", granted.decode(errors="replace"), **about)
                return
            await self._hold(approvals, store, server, caller, call, req, about, grant)
        except StoreError as exc:
            raise Unavailable("approval_unavailable", f"store: {exc}") from None

    async def _hold(
        self,
        approvals: Approvals,
        store: Store,
        server: Server,
        caller: Caller,
        call: McpCall,
        req: HttpRequest,
        about: dict[str, Any],
        grant: str,
    ) -> None:
        approval_id = secrets.token_urlsafe(18)
        deadline = time.monotonic() + approvals.wait
        pending = "approval:pending:" + approval_id
        await store.put(pending, json.dumps({"grant": grant, **about}).encode(), approvals.keep_seconds)
        woken = self._waiting[approval_id] = asyncio.Event()
        try:
            request = {
                "type": "mcp-authz.approval_request",
                "approval_id": approval_id,
                "request_id": req.headers.get("x-request-id"),
                "jsonrpc_id": call.id,
                **about,
                "arguments": dict(call.arguments or {}) if approvals.include_arguments else None,
                "callback_path": f"/approvals/{approval_id}",
                "expires_at": int(time.time()) + approvals.keep_seconds,
            }
            self._step("requested", approval_id, **about)
            answer = await self._ask(approvals, request, deadline)
            if answer is not None and await store.take(pending) is None:
                answer = None  # a callback answered first: its decision is in the store
            if answer is None:
                answer = await self._wait(store, approval_id, grant, deadline, woken)
        finally:
            del self._waiting[approval_id]
        self._step({"approve": "approved", "deny": "denied"}.get(answer or "", "pending"), approval_id, **about)
        if answer == "approve":
            return
        state = "denied" if answer == "deny" else "pending"
        raise ApprovalRefused(state, approval_id, f"approval {approval_id} {state}")

    async def _ask(self, approvals: Approvals, request: dict[str, Any], deadline: float) -> str | None:
        """POST the signed request; the webhook's immediate decision, or None (answer comes later)."""
        body = canonical_json(request)
        timestamp = str(int(time.time()))
        headers = {
            "content-type": "application/json",
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(approvals.webhook_secret.reveal(), timestamp, body),
        }
        remaining = max(deadline - time.monotonic(), 0.001)
        try:
            async with self._http().post(
                approvals.webhook_url,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=remaining),
                allow_redirects=False,
            ) as response:
                status = response.status
                raw = await response.read() if status == 200 else b""
                answer: Any = json.loads(raw) if raw.strip() else None
                signed = response.headers.get(TIMESTAMP_HEADER), response.headers.get(SIGNATURE_HEADER)
        except TimeoutError:
            return None  # no answer within the wait: pending
        except (aiohttp.ClientError, ValueError) as exc:
            self._step("webhook_failed", request["approval_id"], server=request["server"], detail=type(exc).__name__)
            raise Unavailable("approval_webhook_failed", f"approval webhook: {type(exc).__name__}") from None
        if status >= 300:
            self._step("webhook_failed", request["approval_id"], server=request["server"], detail=str(status))
            raise Unavailable("approval_webhook_failed", f"approval webhook answered {status}")
        decision = answer.get("decision") if isinstance(answer, dict) else None
        if decision not in ("approve", "deny"):
            return None
        return decision if self._answer_signed(approvals, request, answer, raw, *signed) else None

    def _answer_signed(
        self,
        approvals: Approvals,
        request: dict[str, Any],
        answer: dict[str, Any],
        raw: bytes,
        timestamp: str | None,
        signature: str | None,
    ) -> bool:
        """Is the webhook's immediate decision signed with ``webhook_secret`` and for this approval?"""
        approval_id = request["approval_id"]
        secret = approvals.webhook_secret.reveal()
        if not signature_valid(secret, timestamp, signature, raw, approvals.max_clock_skew):
            problem = "signature"
        elif answer.get("approval_id") != approval_id:
            problem = "approval_id"
        else:
            return True
        self._step("webhook_answer_refused", approval_id, server=request["server"], detail=problem)
        log.warning(
            "approval webhook: immediate answer ignored", extra={"reason": "unsigned_answer", "detail": problem}
        )
        return False

    async def _wait(
        self, store: Store, approval_id: str, grant: str, deadline: float, woken: asyncio.Event
    ) -> str | None:
        """Wait for a callback (here, or on another replica) until ``deadline``."""
        while (remaining := deadline - time.monotonic()) > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woken.wait(), min(remaining, POLL_INTERVAL))
            decision = await store.get("approval:decision:" + approval_id)
            if decision == b"deny":
                return "deny"
            if decision == b"approve":
                # This call runs on the approval: the grant kept for a retry is used up here.
                return "approve" if await store.take(grant) is not None else None
        return None

    # ------------------------------------------------------------------ the callback (discovery service)

    async def callback(self, approval_id: str, headers: Mapping[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
        """A late answer: ``POST /approvals/<id>`` with ``{"approval_id", "decision"}``, signed.

        Refused: a bad or stale signature (401), a body not naming this id and a decision (400),
        an approval unknown, expired or already answered, including a replayed callback (409).
        """
        approvals, store = self.approvals, self._store
        if approvals is None or store is None:
            return 404, {"error": "not_found"}
        if len(body) > MAX_CALLBACK_BYTES:
            return 413, {"error": "too_large"}
        lower = {k.lower(): v for k, v in headers.items()}
        secret = approvals.callback_secret.reveal()
        if not signature_valid(
            secret, lower.get(TIMESTAMP_HEADER), lower.get(SIGNATURE_HEADER), body, approvals.max_clock_skew
        ):
            self._step("callback_refused", approval_id, detail="signature")
            return 401, {"error": "invalid_signature"}
        try:
            answer = json.loads(body)
        except ValueError:
            answer = None
        decision = answer.get("decision") if isinstance(answer, dict) else None
        if (
            decision not in ("approve", "deny")
            or not isinstance(answer, dict)
            or answer.get("approval_id") != approval_id
        ):
            return 400, {"error": "invalid_request", "error_description": "need approval_id and decision"}
        try:
            raw = await store.take("approval:pending:" + approval_id)
            if raw is None:
                self._step("callback_refused", approval_id, detail="unknown, expired or already answered")
                return 409, {"error": "unknown_or_answered"}
            pending = json.loads(raw)
            await store.put("approval:decision:" + approval_id, decision.encode(), approvals.keep_seconds)
            if decision == "approve":
                await store.put(str(pending["grant"]), approval_id.encode(), approvals.keep_seconds)
        except StoreError as exc:
            log.warning("approval callback: store failed", extra={"reason": "store_error", "detail": str(exc)})
            return 503, {"error": "temporarily_unavailable"}
        pending.pop("grant", None)
        self._step("callback_" + ("approved" if decision == "approve" else "denied"), approval_id, **pending)
        woken = self._waiting.get(approval_id)
        if woken is not None:
            woken.set()
        return 200, {"status": "recorded", "decision": decision}
