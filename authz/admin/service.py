"""The admin API servicer: revocation and sessions go to the store, Explain runs the live Check offline
(``authz.explain``, as ``policy explain`` does).

Every replica sharing the store sees a change made through any one of them (the Redis store
publishes revocations). Bad arguments are refused with INVALID_ARGUMENT and change nothing; a
store that cannot answer gives UNAVAILABLE. Tokens sent to Explain are never logged.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import NoReturn

import grpc

from authz.admin._pb import admin_pb2, admin_pb2_grpc
from authz.check import Checker
from authz.explain.offline import explain
from authz.explain.request import ExplainInput
from authz.state.revocation import subject_revocation_until
from authz.store.base import Store, StoreError

log = logging.getLogger("mcp_authz.admin")
MAX_FIELD = 1024  # longest jti, subject, server or session id accepted


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


def explain_input(req: admin_pb2.ExplainRequest) -> ExplainInput:
    """ExplainRequest → what ``authz.explain`` explains (the token travels apart)."""
    return ExplainInput(method=req.method, path=req.path, headers=dict(req.headers), body=req.body, server=req.server)


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
        live = self._checker()  # its config and identity stage (the key sets and token cache in use)
        found = await explain(live.config, live.stages.identity, self._store(), explain_input(request), request.token)
        return admin_pb2.ExplainResponse(**found.as_dict())


async def _abort(context: grpc.aio.ServicerContext, exc: Exception) -> NoReturn:
    """End the call with INVALID_ARGUMENT (bad input) or UNAVAILABLE (the store did not answer)."""
    if isinstance(exc, InvalidArgument):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    else:
        log.warning("admin: store unavailable", extra={"error": str(exc)})
        await context.abort(grpc.StatusCode.UNAVAILABLE, f"store unavailable: {exc}")
    raise AssertionError("context.abort returned")
