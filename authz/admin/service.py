"""The admin API servicer: revocation and sessions go to the store, Explain runs the live Check offline.

Every replica sharing the store sees a change made through any one of them (the Redis store
publishes revocations). Bad arguments are refused with INVALID_ARGUMENT and change nothing; a
store that cannot answer gives UNAVAILABLE. Tokens sent to Explain are never logged.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import NoReturn

import grpc

from authz.admin._pb import admin_pb2, admin_pb2_grpc
from authz.check import Checker
from authz.config.runtime import Config, Server
from authz.contract import SERVER_CONTEXT_KEY
from authz.errors import ApprovalRefused
from authz.explain.dryrun import DryRunStore
from authz.model import Caller, Decision, HttpRequest, McpRequest
from authz.state.guards import Guards
from authz.state.revocation import subject_revocation_until
from authz.store.base import Store, StoreError

log = logging.getLogger("mcp_authz.admin")
MAX_FIELD = 1024  # longest jti, subject, server or session id accepted
REDACTED = "<redacted>"


class InvalidArgument(ValueError):
    pass


def _required(name: str, value: str) -> str:
    if not value:
        raise InvalidArgument(f"{name} is required")
    if len(value) > MAX_FIELD:
        raise InvalidArgument(f"{name} is longer than {MAX_FIELD} characters")
    return value


def _epoch(name: str, value: float) -> float:
    if not math.isfinite(value) or value <= 0:
        raise InvalidArgument(f"{name} must be a positive number of epoch seconds")
    return value


def explain_request(req: admin_pb2.ExplainRequest) -> HttpRequest:
    """ExplainRequest → the HttpRequest a Check would get from Envoy."""
    headers = {k.lower(): v for k, v in req.headers.items()}
    if req.token:
        headers["authorization"] = f"Bearer {req.token}"
    return HttpRequest(
        method=(req.method or "POST").upper(),
        path=req.path or "/",
        headers=headers,
        body=req.body or None,
        context={SERVER_CONTEXT_KEY: req.server} if req.server else {},
    )


def shown_headers(config: Config, decision: Decision) -> dict[str, str]:
    """Headers a decision sets: on allow only the identity headers keep their values (never a credential)."""
    if not decision.allowed:
        return dict(decision.deny_headers)
    server = config.servers.get(decision.server or "")
    names: Iterable[str] = () if server is None else server.identity_headers.names
    visible = set(names)
    return {k: (v if k in visible else REDACTED) for k, v in decision.set_headers}


class ExplainApprovals:
    """A call whose rule needs a person's approval is reported as pending (``approval_pending``); nobody is asked."""

    async def check(self, server: Server, caller: Caller, mcp: McpRequest, rule: str | None, req: HttpRequest) -> None:
        policy = server.policy
        if rule is not None and policy is not None and rule in policy.approval_rules:
            raise ApprovalRefused("pending", "", f"explain: rule {rule!r} waits for a person's approval (none asked)")


class ExplainCredentials:
    """Names the credential headers a call would get; no secret is revealed and no token is exchanged."""

    async def headers(self, server: Server, caller: Caller) -> tuple[tuple[str, str], ...]:
        names = [c.header for c in (server.credentials, server.exchange) if c is not None]
        return tuple((name, REDACTED) for name in names)


def offline_checker(live: Checker, store: Store) -> Checker:
    """The live config and verifier (its cached keys) over a read-only view of the store; no approval
    is asked for and no upstream credential is fetched."""
    config = live.config
    guards = Guards(DryRunStore(store), config.store.failure, config.store.max_sessions_per_subject)
    stages = replace(
        live.stages,
        revocation=guards,
        rate_limit=guards,
        sessions=guards,
        approval=ExplainApprovals(),
        credentials=ExplainCredentials(),
    )
    return Checker(config, stages)


class AdminService(admin_pb2_grpc.AdminServicer):
    """``checker`` and ``store`` are read once per call (a reload may replace either)."""

    def __init__(
        self, checker: Callable[[], Checker], store: Callable[[], Store], clock: Callable[[], float] = time.time
    ) -> None:
        self._checker = checker
        self._store = store
        self._clock = clock

    async def RevokeToken(
        self, request: admin_pb2.RevokeTokenRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.RevokeTokenResponse:
        try:
            jti = _required("jti", request.jti)
            expires_at = _epoch("expires_at", request.expires_at)
            if expires_at <= self._clock():
                raise InvalidArgument("expires_at is in the past: the token is refused as expired already")
            await self._store().revoke_token(jti, expires_at)
        except (InvalidArgument, StoreError) as exc:
            await _abort(context, exc)
        log.info("admin: token revoked", extra={"jti": jti, "expires_at": expires_at, "peer": context.peer()})
        return admin_pb2.RevokeTokenResponse()

    async def RevokeSubject(
        self, request: admin_pb2.RevokeSubjectRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.RevokeSubjectResponse:
        try:
            subject = _required("subject", request.subject)
            before = _epoch("before", request.before) if request.HasField("before") else self._clock()
            until = subject_revocation_until(self._checker().config.issuers.values(), before)
            await self._store().revoke_subject(subject, before, until=until)
        except (InvalidArgument, StoreError) as exc:
            await _abort(context, exc)
        log.info("admin: subject revoked", extra={"subject": subject, "before": before, "peer": context.peer()})
        return admin_pb2.RevokeSubjectResponse(before=before)

    async def ListSessions(
        self, request: admin_pb2.ListSessionsRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ListSessionsResponse:
        server = request.server if request.HasField("server") else None
        subject = request.subject if request.HasField("subject") else None
        try:
            bindings = await self._store().sessions(server=server, subject=subject)
        except StoreError as exc:
            await _abort(context, exc)
        return admin_pb2.ListSessionsResponse(
            sessions=[
                admin_pb2.Session(server=b.server, session_id=b.session_id, subject=b.subject, expires_at=b.expires_at)
                for b in sorted(bindings, key=lambda b: (b.server, b.subject, b.session_id))
            ]
        )

    async def EndSession(
        self, request: admin_pb2.EndSessionRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.EndSessionResponse:
        try:
            server = _required("server", request.server)
            session_id = _required("session_id", request.session_id)
            ended = await self._store().end_session(server, session_id)
        except (InvalidArgument, StoreError) as exc:
            await _abort(context, exc)
        log.info("admin: session ended", extra={"server": server, "ended": ended, "peer": context.peer()})
        return admin_pb2.EndSessionResponse(ended=ended)

    async def Explain(
        self, request: admin_pb2.ExplainRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ExplainResponse:
        checker = offline_checker(self._checker(), self._store())
        decision = await checker.check(explain_request(request))
        return admin_pb2.ExplainResponse(
            decision="allow" if decision.allowed else "deny",
            status=decision.status,
            reason=decision.reason,
            rule=decision.rule or "",
            server=decision.server or "",
            detail=decision.detail,
            headers=shown_headers(checker.config, decision),
        )


async def _abort(context: grpc.aio.ServicerContext, exc: Exception) -> NoReturn:
    """End the call with INVALID_ARGUMENT (bad input) or UNAVAILABLE (the store did not answer)."""
    if isinstance(exc, InvalidArgument):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    else:
        log.warning("admin: store unavailable", extra={"error": str(exc)})
        await context.abort(grpc.StatusCode.UNAVAILABLE, f"store unavailable: {exc}")
    raise AssertionError("context.abort returned")
