"""A blocking client of the admin API (what ``mcp-authz admin ...`` uses); errors become one clear ``AdminError``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from authz.admin._pb import admin_pb2, admin_pb2_grpc


class AdminError(Exception):
    """The call did not succeed: unreachable, credentials refused, bad arguments, store down."""


def _read(path: str | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise AdminError(f"cannot read {what} {path!r}: {exc.strerror}") from None


class AdminClient:
    """One channel to ``address``. TLS when ``ca`` or ``cert`` is given (``cert``+``key``: mTLS client identity)."""

    def __init__(
        self,
        address: str,
        *,
        token: str | None = None,
        cert: str | None = None,
        key: str | None = None,
        ca: str | None = None,
        timeout: float = 5.0,
    ) -> None:
        if (cert is None) != (key is None):
            raise AdminError("give --cert and --key together")
        self.address = address
        self._timeout = timeout
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._tls = bool(ca or cert)
        if self._tls:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read(ca, "CA bundle"),
                private_key=_read(key, "client key"),
                certificate_chain=_read(cert, "client certificate"),
            )
            self._channel = grpc.secure_channel(address, credentials)
        else:
            self._channel = grpc.insecure_channel(address)
        self._stub = admin_pb2_grpc.AdminStub(self._channel)  # type: ignore[no-untyped-call]

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, request: Message) -> dict[str, Any]:
        try:
            reply = getattr(self._stub, method)(request, metadata=self._metadata, timeout=self._timeout)
        except grpc.RpcError as exc:
            raise AdminError(self._explain_error(exc)) from None
        result: dict[str, Any] = MessageToDict(
            reply, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
        return result

    def _explain_error(self, exc: grpc.RpcError) -> str:
        code, details = exc.code(), exc.details() or ""
        where = f"admin API at {self.address}"
        if code == grpc.StatusCode.UNAUTHENTICATED:
            return f"{where} refused the credentials: {details}"
        if code == grpc.StatusCode.UNAVAILABLE:
            if details.startswith("store unavailable"):
                return f"{where}: {details}"
            hint = " (TLS: was the server certificate signed by --ca, and the client certificate accepted?)"
            return f"cannot reach the {where}: {details}{hint if self._tls else ''}"
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return f"no answer from the {where} within {self._timeout:g}s"
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            return f"refused: {details}"
        return f"{where}: {code.name}: {details}"

    # ------------------------------------------------------------------ the calls

    def revoke_token(self, jti: str, expires_at: float) -> dict[str, Any]:
        return self._call("RevokeToken", admin_pb2.RevokeTokenRequest(jti=jti, expires_at=expires_at))

    def revoke_subject(self, subject: str, before: float | None = None) -> dict[str, Any]:
        return self._call("RevokeSubject", admin_pb2.RevokeSubjectRequest(subject=subject, before=before))

    def sessions(self, server: str | None = None, subject: str | None = None) -> list[dict[str, Any]]:
        reply = self._call("ListSessions", admin_pb2.ListSessionsRequest(server=server, subject=subject))
        sessions: list[dict[str, Any]] = reply.get("sessions", [])
        return sessions

    def end_session(self, server: str, session_id: str) -> bool:
        reply = self._call("EndSession", admin_pb2.EndSessionRequest(server=server, session_id=session_id))
        return bool(reply.get("ended"))

    def explain(
        self,
        *,
        server: str = "",
        method: str = "POST",
        path: str = "/",
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
        token: str = "",
    ) -> dict[str, Any]:
        request = admin_pb2.ExplainRequest(
            server=server, method=method, path=path, headers=dict(headers or {}), body=body, token=token
        )
        return self._call("Explain", request)
