"""Envoy's ext_authz messages ↔ our model, shared by both gRPC fronts (grpcio and h2corn)."""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2
from envoy.type.v3 import http_status_pb2
from google.rpc import code_pb2, status_pb2

from authz.model import Decision, HttpRequest

OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


def to_http_request(check: external_auth_pb2.CheckRequest) -> HttpRequest:
    """CheckRequest → HttpRequest. Prefers the raw header map, which keeps repeated headers apart."""
    attrs = check.attributes
    http: attribute_context_pb2.AttributeContext.HttpRequest = attrs.request.http
    values: dict[str, tuple[str, ...]] = {}
    if http.header_map.headers:
        for h in http.header_map.headers:
            key = h.key.lower()
            value = h.raw_value.decode("utf-8", "replace") if h.raw_value else h.value
            values[key] = (*values.get(key, ()), value)
        headers = {k: ",".join(v) for k, v in values.items()}
    else:
        headers = dict(http.headers)
    if http.raw_body:
        body: bytes | None = http.raw_body
    elif http.body:
        body = http.body.encode("utf-8", "surrogateescape")
    else:
        body = None
    source = attrs.source
    return HttpRequest(
        method=http.method,
        path=http.path,
        headers=headers,
        body=body,
        source_address=source.address.socket_address.address,
        source_principal=source.principal,
        context=dict(attrs.context_extensions),
        header_values=values,
    )


def _header(key: str, value: str, append: int = OVERWRITE) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=key, value=value), append_action=append)


def to_check_response(decision: Decision) -> external_auth_pb2.CheckResponse:
    if decision.allowed:
        allowed = external_auth_pb2.CheckResponse(
            status=status_pb2.Status(code=code_pb2.OK),
            ok_response=external_auth_pb2.OkHttpResponse(
                headers=[_header(k, v) for k, v in decision.set_headers],
                headers_to_remove=list(decision.remove_headers),
            ),
        )
        if decision.metadata:  # Envoy keeps it as the stream's ext_authz dynamic metadata (for ext_proc)
            allowed.dynamic_metadata.update(decision.metadata)
        return allowed
    return external_auth_pb2.CheckResponse(
        status=status_pb2.Status(
            code=code_pb2.PERMISSION_DENIED if decision.status != 401 else code_pb2.UNAUTHENTICATED
        ),
        denied_response=external_auth_pb2.DeniedHttpResponse(
            status=http_status_pb2.HttpStatus(code=decision.status),
            headers=[_header(k, v) for k, v in decision.deny_headers],
            body=decision.body.decode("utf-8"),
        ),
    )
