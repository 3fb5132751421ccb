"""The Envoy filter chains Istio builds from deploy/istio/, run with a real Envoy, the authorizer and the
sample MCP server (no cluster here, so the shapes are written out as Envoy configs).

Istio turns a CUSTOM ``AuthorizationPolicy`` into an ``ext_authz`` filter on the selected workload's
inbound sidecar, configured from the MeshConfig extension provider alone: ``grpc_service`` (or
``http_service``) to the provider's service, its ``timeout``, ``failure_mode_allow`` = ``failOpen``,
``status_on_error`` = ``statusOnError``, ``with_request_body`` = ``includeRequestBodyInCheck``, and for
the HTTP provider ``allowed_headers`` / ``headers_to_add`` / ``allowed_upstream_headers`` /
``allowed_client_headers`` from its header lists. No per-route ``context_extensions``, no
``include_peer_certificate``, no ``encode_raw_headers``. ``notPaths: ["/.well-known/*"]`` keeps
discovery out of the Check. ``provider_filter`` below is that translation, fed with the rendered
provider, so the settings proven here are the ones in deploy/istio/.

Layouts: the shared authorizer (one sidecar per MCP workload, one authorizer Deployment; gRPC with one
server, HTTP with a provider per server) and the sidecar layout (per pod: Envoy, the authorizer on
127.0.0.1 with that server's own config from the rendered ConfigMap, the MCP server).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from envoy_data_plane.envoy.config.accesslog.v3 import AccessLog
from envoy_data_plane.envoy.config.bootstrap.v3 import Admin, Bootstrap, BootstrapStaticResources
from envoy_data_plane.envoy.config.core.v3 import (
    Address,
    ApiVersion,
    GrpcService,
    GrpcServiceEnvoyGrpc,
    HeaderValue,
    HttpUri,
    SocketAddress,
    SubstitutionFormatString,
)
from envoy_data_plane.envoy.config.route.v3 import Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost
from envoy_data_plane.envoy.extensions.access_loggers.file.v3 import FileAccessLog
from envoy_data_plane.envoy.extensions.filters.http.ext_authz.v3 import (
    AuthorizationRequest,
    AuthorizationResponse,
    BufferSettings,
    ExtAuthz,
    HttpService,
)
from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3 import HttpFilter
from envoy_data_plane.envoy.type.matcher.v3 import ListStringMatcher, StringMatcher
from envoy_data_plane.envoy.type.v3 import HttpStatus, StatusCode
from envoy_data_plane.google.protobuf import Any as AnyMessage
from envoy_data_plane.google.protobuf import Struct
from harness import Authorizer, Envoy, Factory, RawMcp, SampleServer, free_port

from authz import contract
from authz.config.load import parse_config
from authz.config.runtime import Config
from authz.identity.devkey import ensure_key, mint
from authz.render import authorizer_pod, istio
from authz.render import envoy as render

SUBJECT = "carol@example.test"
AUTHZ = "outbound|authz"  # Istio names the cluster after the provider's service; any name does here


# ---------------------------------------------------------------- Istio's translation of a provider


def _duration(value: str) -> timedelta:
    assert value.endswith("s")
    return timedelta(seconds=float(value[:-1]))


def _exact(names: list[str]) -> ListStringMatcher:
    return ListStringMatcher(patterns=[StringMatcher(exact=name) for name in names])


def provider_filter(provider: dict[str, Any], authorizer: str) -> HttpFilter:
    """The ext_authz filter Istio builds for ``provider`` (a rendered ``extensionProviders`` entry)."""
    kind, settings = next((k, v) for k, v in provider.items() if k != "name")
    body = settings["includeRequestBodyInCheck"]
    common: dict[str, Any] = {
        "transport_api_version": ApiVersion.V3,
        "failure_mode_allow": settings["failOpen"],
        "status_on_error": HttpStatus(code=StatusCode(int(settings["statusOnError"]))),
        "with_request_body": BufferSettings(
            max_request_bytes=body["maxRequestBytes"],
            allow_partial_message=body["allowPartialMessage"],
            pack_as_bytes=body["packAsBytes"],
        ),
    }
    timeout = _duration(settings["timeout"])
    if kind == "envoyExtAuthzGrpc":
        service = GrpcService(envoy_grpc=GrpcServiceEnvoyGrpc(cluster_name=AUTHZ), timeout=timeout)
        authz = ExtAuthz(grpc_service=service, **common)
    else:
        assert kind == "envoyExtAuthzHttp"
        added = settings["includeAdditionalHeadersInCheck"]
        authz = ExtAuthz(
            http_service=HttpService(
                server_uri=HttpUri(uri=f"http://{authorizer}", cluster=AUTHZ, timeout=timeout),
                authorization_request=AuthorizationRequest(
                    headers_to_add=[HeaderValue(key=k, value=v) for k, v in added.items()]
                ),
                authorization_response=AuthorizationResponse(
                    allowed_upstream_headers=_exact(settings["headersToUpstreamOnAllow"]),
                    allowed_client_headers=_exact(settings["headersToDownstreamOnDeny"]),
                ),
            ),
            allowed_headers=_exact(settings["includeRequestHeadersInCheck"]),
            **common,
        )
    return HttpFilter(name=render.EXT_AUTHZ, typed_config=AnyMessage.pack(authz))


def provider_access_log(provider: dict[str, Any]) -> AccessLog:
    """The access log Istio builds from a rendered ``envoyFileAccessLog`` provider (Telemetry ``accessLogging``):
    Envoy's file logger at ``path`` with the provider's labels as the JSON format."""
    settings = provider["envoyFileAccessLog"]
    log = FileAccessLog(
        path=settings["path"],
        log_format=SubstitutionFormatString(json_format=Struct.from_dict(settings["logFormat"]["labels"])),
    )
    return AccessLog(name="envoy.access_loggers.file", typed_config=AnyMessage.pack(log))


def sidecar_envoy(
    provider: dict[str, Any],
    *,
    listen: str,
    authorizer: str,
    upstream: str,
    discovery: str,
    admin: int,
    access_log: dict[str, Any] | None = None,
) -> str:
    """One workload's inbound sidecar: discovery paths unchecked (``notPaths``), everything else checked
    by the provider's filter, then the MCP server. The authorizer cluster stands for the provider's
    service (Kubernetes Service or the ``ext-authz-grpc.local`` ServiceEntry on 127.0.0.1). With
    ``access_log`` (a rendered ``envoyFileAccessLog`` provider) the sidecar logs as Istio makes it."""
    http = "envoyExtAuthzHttp" in provider
    app = Route(
        name="inbound|mcp",
        match=RouteMatch(prefix="/"),
        route=RouteAction(cluster="inbound|app", timeout=timedelta(0)),
    )
    routes = RouteConfiguration(
        name="inbound",
        virtual_hosts=[VirtualHost(name="inbound", domains=["*"], routes=[*render.discovery_routes(), app])],
    )
    logs = [provider_access_log(access_log)] if access_log is not None else []
    filters = [provider_filter(provider, authorizer), render.router_filter()]
    manager = render.http_connection_manager(routes, filters, access_logs=logs)
    bootstrap = Bootstrap(
        admin=Admin(address=Address(socket_address=SocketAddress(address="127.0.0.1", port_value=admin))),
        static_resources=BootstrapStaticResources(
            listeners=[render.listener(listen, manager)],
            clusters=[
                render.cluster(AUTHZ, authorizer, http2=not http),
                render.cluster(render.DISCOVERY_CLUSTER, discovery),
                render.cluster("inbound|app", upstream),
            ],
        ),
    )
    return yaml.safe_dump(render.to_json(bootstrap), sort_keys=False)


# ---------------------------------------------------------------- configs


def server_spec(name: str, base: str, upstream: str) -> dict[str, Any]:
    return {
        "name": name,
        "resource": f"{base}/mcp",
        "upstream": upstream,
        "scopes_supported": ["tools:read"],
        "policy": {
            "default": "deny",
            "rules": [
                {"name": "protocol", "methods": ["initialize", "ping", "notifications/*", "*/list"]},
                {"name": "read", "tools": ["search", "echo_headers"], "scopes": ["tools:read"]},
            ],
        },
    }


def authz_spec(key: Path, servers: list[dict[str, Any]], issuer: str, *, http: bool) -> dict[str, Any]:
    listen = {"grpc": f"127.0.0.1:{free_port()}", "discovery": f"127.0.0.1:{free_port()}"}
    if http:
        listen["http"] = f"127.0.0.1:{free_port()}"
    return {
        "listen": listen,
        "issuers": [{"name": "dev", "issuer": issuer, "local_key_file": str(key)}],
        "servers": servers,
        "envoy": {"authorizer": "http" if http else "grpc", "max_request_bytes": 65536, "timeout_ms": 2000},
    }


def load(spec: dict[str, Any]) -> tuple[Config, dict[str, Any], str]:
    text = yaml.safe_dump(spec, sort_keys=False)
    return parse_config(text, "istio-shape.yaml"), yaml.safe_load(text), text


@dataclass(frozen=True)
class Workload:
    """One MCP workload as a client sees it: its sidecar's URL, the MCP server behind it."""

    name: str
    base: str
    sample: SampleServer
    proxy: Envoy

    @property
    def url(self) -> str:
        return f"{self.base}/mcp"

    def upstream_calls(self, tool: str) -> list[dict[str, str]]:
        return [r["headers"] for r in self.sample.requests() if r["headers"].get("mcp-name") == tool]


def token(key: Path, issuer: str, audience: str, scopes: list[str]) -> str:
    return mint(key, issuer=issuer, audience=audience, subject=SUBJECT, scopes=scopes)


async def assert_allowed_with_identity(workload: Workload, key: Path, issuer: str) -> None:
    workload.sample.clear_logs()
    async with RawMcp(workload.url, token=token(key, issuer, workload.url, ["tools:read"])) as mcp:
        response = await mcp.call_tool("search", {"query": "istio"})
    assert response.status == 200, response.text
    [headers] = workload.upstream_calls("search")
    assert "authorization" not in headers  # the caller's token never reaches the MCP server
    assert headers["x-mcp-subject"] == SUBJECT
    assert headers["x-mcp-scopes"] == "tools:read"
    assert headers["x-mcp-issuer"] == issuer


async def assert_bad_token_is_401(workload: Workload, key: Path, issuer: str, audience: str) -> None:
    workload.sample.clear_logs()
    async with RawMcp(workload.url, token=token(key, issuer, audience, ["tools:read"])) as mcp:
        response = await mcp.call_tool("search", {"query": "x"})
    assert response.status == 401, response.text
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("Bearer ") and 'error="invalid_token"' in challenge
    assert f'resource_metadata="{workload.base}/.well-known/oauth-protected-resource/mcp"' in challenge
    assert workload.sample.requests() == []


async def assert_discovery_unchecked(workload: Workload) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(f"{workload.base}/.well-known/oauth-protected-resource/mcp")
    assert response.status_code == 200, response.text
    assert response.json()["resource"] == workload.url


# ---------------------------------------------------------------- shared authorizer, gRPC provider


@pytest.fixture(scope="module")
def shared_grpc(
    tmp_path_factory: pytest.TempPathFactory,
    sample_server: Factory[SampleServer],
    envoy: Factory[Envoy],
    authorizer: Factory[Authorizer],
) -> Iterator[tuple[Workload, Path, str, Authorizer]]:
    key = ensure_key(tmp_path_factory.mktemp("istio-grpc") / "key.pem")
    sample = sample_server(json_response=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    issuer = f"{base}/dev"
    config, _raw, text = load(authz_spec(key, [server_spec("sample", base, sample.upstream)], issuer, http=False))
    [provider] = istio.shared_providers(config, istio.Options())
    assert provider["name"] == istio.PROVIDER and "envoyExtAuthzGrpc" in provider
    [log] = istio.access_log_providers(config)
    running = authorizer(text)
    proxy = envoy(
        sidecar_envoy(
            provider,
            listen=f"127.0.0.1:{port}",
            authorizer=config.listen.grpc,
            upstream=sample.upstream,
            discovery=config.listen.discovery,
            admin=free_port(),
            access_log=log,
        )
    )
    yield Workload("sample", base, sample, proxy), key, issuer, running


async def test_grpc_provider_allows_with_identity_and_without_the_token(
    shared_grpc: tuple[Workload, Path, str, Authorizer],
) -> None:
    workload, key, issuer, _ = shared_grpc
    await assert_allowed_with_identity(workload, key, issuer)


async def test_grpc_provider_bad_token_is_401_with_challenge(
    shared_grpc: tuple[Workload, Path, str, Authorizer],
) -> None:
    workload, key, issuer, _ = shared_grpc
    await assert_bad_token_is_401(workload, key, issuer, audience="http://elsewhere.example/mcp")


async def test_grpc_provider_no_token_and_forbidden_tool(shared_grpc: tuple[Workload, Path, str, Authorizer]) -> None:
    workload, key, issuer, _ = shared_grpc
    async with RawMcp(workload.url) as mcp:
        anonymous = await mcp.call_tool("search", {"query": "x"})
    assert anonymous.status == 401 and "error=" not in anonymous.headers["www-authenticate"]
    async with RawMcp(workload.url, token=token(key, issuer, workload.url, ["tools:read"])) as mcp:
        forbidden = await mcp.call_tool("delete_repo", {"name": "x"})
    assert forbidden.status == 403


async def test_grpc_provider_discovery_is_not_checked(shared_grpc: tuple[Workload, Path, str, Authorizer]) -> None:
    workload, _, _, _ = shared_grpc
    await assert_discovery_unchecked(workload)


async def test_grpc_provider_body_bound_is_413_before_any_check(
    shared_grpc: tuple[Workload, Path, str, Authorizer],
) -> None:
    workload, key, issuer, _ = shared_grpc
    async with RawMcp(workload.url, token=token(key, issuer, workload.url, ["tools:read"])) as mcp:
        response = await mcp.call_tool("search", {"query": "x" * 70_000})  # maxRequestBytes 65536
    assert response.status == 413


# ---------------------------------------------------------------- shared authorizer, two MCP workloads


def two_workloads(
    tmp: Path,
    sample_server: Factory[SampleServer],
    envoy: Factory[Envoy],
    authorizer: Factory[Authorizer],
    *,
    http: bool,
    hosts: dict[str, str],
) -> tuple[list[Workload], Path, str]:
    """Two MCP workloads (name → the host clients use), each with its own sidecar, one shared authorizer:
    over HTTP a provider per server, over gRPC one provider for both."""
    key = ensure_key(tmp / "key.pem")
    issuer = f"http://127.0.0.1:{free_port()}/dev"
    samples = {name: sample_server(json_response=True) for name in hosts}
    ports = {name: free_port() for name in hosts}
    bases = {name: f"http://{hosts[name]}:{ports[name]}" for name in hosts}
    servers = [server_spec(n, bases[n], s.upstream) for n, s in samples.items()]
    config, _raw, text = load(authz_spec(key, servers, issuer, http=http))
    providers = {p["name"]: p for p in istio.shared_providers(config, istio.Options())}
    if http:
        assert set(providers) == {f"{istio.PROVIDER}-{name}" for name in hosts}
    else:
        assert set(providers) == {istio.PROVIDER} and "envoyExtAuthzGrpc" in providers[istio.PROVIDER]
    authorizer(text)
    workloads = []
    for name, sample in samples.items():
        proxy = envoy(
            sidecar_envoy(
                providers[f"{istio.PROVIDER}-{name}" if http else istio.PROVIDER],
                listen=f"127.0.0.1:{ports[name]}",
                authorizer=config.listen.http if http else config.listen.grpc,
                upstream=sample.upstream,
                discovery=config.listen.discovery,
                admin=free_port(),
            )
        )
        workloads.append(Workload(name, bases[name], sample, proxy))
    return workloads, key, issuer


@pytest.fixture(scope="module")
def shared_grpc_two(
    tmp_path_factory: pytest.TempPathFactory,
    sample_server: Factory[SampleServer],
    envoy: Factory[Envoy],
    authorizer: Factory[Authorizer],
) -> tuple[list[Workload], Path, str]:
    """One gRPC provider sends no context extension, so the authorizer tells the servers apart by host and
    path (``authz/routing.py``): one is addressed as 127.0.0.1, the other as localhost."""
    tmp = tmp_path_factory.mktemp("istio-grpc-two")
    hosts = {"alpha": "127.0.0.1", "beta": "localhost"}
    return two_workloads(tmp, sample_server, envoy, authorizer, http=False, hosts=hosts)


async def test_grpc_provider_tells_servers_apart_by_host_and_path(
    shared_grpc_two: tuple[list[Workload], Path, str],
) -> None:
    workloads, key, issuer = shared_grpc_two
    for workload in workloads:
        await assert_allowed_with_identity(workload, key, issuer)
    alpha, beta = workloads
    # alpha's token at beta: beta's server was selected, so the audience does not match
    await assert_bad_token_is_401(beta, key, issuer, alpha.url)


@pytest.fixture(scope="module")
def shared_http(
    tmp_path_factory: pytest.TempPathFactory,
    sample_server: Factory[SampleServer],
    envoy: Factory[Envoy],
    authorizer: Factory[Authorizer],
) -> tuple[list[Workload], Path, str]:
    """Two MCP workloads, each with its own sidecar and HTTP provider naming its server."""
    tmp = tmp_path_factory.mktemp("istio-http")
    hosts = {"alpha": "127.0.0.1", "beta": "127.0.0.1"}
    return two_workloads(tmp, sample_server, envoy, authorizer, http=True, hosts=hosts)


async def test_http_provider_allows_with_identity_and_without_the_token(
    shared_http: tuple[list[Workload], Path, str],
) -> None:
    workloads, key, issuer = shared_http
    for workload in workloads:
        await assert_allowed_with_identity(workload, key, issuer)


async def test_http_provider_names_its_server(shared_http: tuple[list[Workload], Path, str]) -> None:
    """alpha's token at beta's sidecar is checked as beta (the provider's x-mcp-authz-server): 401."""
    (alpha, beta), key, issuer = shared_http
    await assert_bad_token_is_401(beta, key, issuer, audience=alpha.url)


async def test_http_provider_client_cannot_pick_the_server(shared_http: tuple[list[Workload], Path, str]) -> None:
    (alpha, beta), key, issuer = shared_http
    beta.sample.clear_logs()
    forged = {contract.SERVER_HEADER: "alpha", "x-mcp-subject": "mallory"}
    async with RawMcp(beta.url, token=token(key, issuer, alpha.url, ["tools:read"]), headers=forged) as mcp:
        response = await mcp.call_tool("search", {"query": "x"})
    assert response.status == 401
    async with RawMcp(beta.url, token=token(key, issuer, beta.url, ["tools:read"]), headers=forged) as mcp:
        allowed = await mcp.call_tool("search", {"query": "x"})
    assert allowed.status == 200
    [headers] = beta.upstream_calls("search")
    assert headers["x-mcp-subject"] == SUBJECT


async def test_http_provider_discovery_is_not_checked(shared_http: tuple[list[Workload], Path, str]) -> None:
    workloads, _, _ = shared_http
    for workload in workloads:
        await assert_discovery_unchecked(workload)


# ---------------------------------------------------------------- the sidecar layout


@pytest.fixture(scope="module", params=["grpc", "http"])
def sidecars(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    sample_server: Factory[SampleServer],
    envoy: Factory[Envoy],
    authorizer: Factory[Authorizer],
) -> Iterator[tuple[list[Workload], dict[str, Authorizer], Path, str]]:
    """Two pods: each Envoy reaches its own authorizer over loopback (the ``ext-authz-grpc.local`` or
    ``ext-authz-http.local`` ServiceEntry), each authorizer runs its server's rendered ConfigMap config."""
    http = request.param == "http"
    key = ensure_key(tmp_path_factory.mktemp("istio-sidecar") / "key.pem")
    issuer = f"http://127.0.0.1:{free_port()}/dev"
    samples = {name: sample_server(json_response=True) for name in ("north", "south")}
    ports = {name: free_port() for name in samples}
    servers = [server_spec(n, f"http://127.0.0.1:{ports[n]}", s.upstream) for n, s in samples.items()]
    config, raw, _ = load(authz_spec(key, servers, issuer, http=http))
    provider = istio.local_provider(config)
    kind, settings = ("envoyExtAuthzHttp", "http") if http else ("envoyExtAuthzGrpc", "grpc")
    assert provider[kind]["service"] == (istio.LOCAL_HTTP_HOST if http else istio.LOCAL_GRPC_HOST)
    maps = {
        d["metadata"]["name"]: d
        for d in istio.sidecar_objects(config, raw, istio.Options())
        if d["kind"] == "ConfigMap"
    }
    workloads, running = [], {}
    for name, sample in samples.items():
        pod = yaml.safe_load(maps[f"mcp-authz-{name}"]["data"][authorizer_pod.CONFIG_FILE])
        assert [s["name"] for s in pod["servers"]] == [name]
        assert pod["listen"][settings] == f"127.0.0.1:{provider[kind]['port']}"  # loopback, the provider's port
        # This machine runs both pods side by side: same config, ports moved off the shared defaults.
        pod["listen"] = {
            "grpc": f"127.0.0.1:{free_port()}",
            "discovery": f"127.0.0.1:{free_port()}",
            "http": f"127.0.0.1:{free_port()}" if http else "",
        }
        pod["issuers"][0]["local_key_file"] = str(key)
        running[name] = authorizer(yaml.safe_dump(pod, sort_keys=False))
        proxy = envoy(
            sidecar_envoy(
                provider,
                listen=f"127.0.0.1:{ports[name]}",
                authorizer=pod["listen"][settings],
                upstream=sample.upstream,
                discovery=pod["listen"]["discovery"],
                admin=free_port(),
            )
        )
        workloads.append(Workload(name, f"http://127.0.0.1:{ports[name]}", sample, proxy))
    yield workloads, running, key, issuer


async def test_each_pod_authorizes_its_own_server(
    sidecars: tuple[list[Workload], dict[str, Authorizer], Path, str],
) -> None:
    workloads, _, key, issuer = sidecars
    for workload in workloads:
        await assert_allowed_with_identity(workload, key, issuer)
        await assert_discovery_unchecked(workload)
    north, south = workloads
    await assert_bad_token_is_401(south, key, issuer, audience=north.url)  # south's authorizer knows south only


async def test_a_pod_without_its_authorizer_fails_closed(
    sidecars: tuple[list[Workload], dict[str, Authorizer], Path, str],
) -> None:
    """One authorizer per MCP server: stopping north's leaves north denying (503) and south serving."""
    (north, south), running, key, issuer = sidecars
    running["north"].proc.stop()
    north.sample.clear_logs()
    async with RawMcp(north.url, token=token(key, issuer, north.url, ["tools:read"])) as mcp:
        response = await mcp.call_tool("search", {"query": "x"})
    assert response.status == 503
    assert north.sample.requests() == []
    await assert_allowed_with_identity(south, key, issuer)


async def test_the_sidecar_logs_each_request_as_json_without_the_token(
    shared_grpc: tuple[Workload, Path, str, Authorizer],
) -> None:
    """The access log Istio builds from the rendered provider: the MCP server, the response code and the
    ext_authz outcome per request, never the token (issue 17 item 6)."""
    workload, key, issuer, _ = shared_grpc
    before = len(workload.proxy.access_log(wanted=0, timeout=0))
    bearer = token(key, issuer, workload.url, ["tools:read"])
    async with RawMcp(workload.url, token=bearer) as mcp:
        allowed = await mcp.call_tool("search", {"query": "logged"})
    async with RawMcp(workload.url) as mcp:
        refused = await mcp.call_tool("search", {"query": "logged"})
    assert (allowed.status, refused.status) == (200, 401)
    entries = workload.proxy.access_log(wanted=before + 2)[before:]
    assert [e["response_code"] for e in entries[-2:]] == [200, 401]
    ok, denied = entries[-2:]
    assert ok["mcp_server"] == denied["mcp_server"] == "sample"
    assert ok["response_code_details"] == "via_upstream" and ok["mcp_name"] == "search"
    assert denied["response_code_details"] == "ext_authz_denied" and "UAEX" in denied["response_flags"]
    assert bearer not in workload.proxy.proc.log_path.read_text(encoding="utf-8")
