"""The discovery HTTP service: RFC 9728 and RFC 8414 documents, local JWKS, /healthz and /readyz.

Routing is one table built from the configuration: request path → handler. Only GET and HEAD are
served; an unknown path is a JSON 404. Authorization-server metadata is mirrored by one background
task per issuer, which keeps the last good document when a refresh fails. On a config reload
``reconfigure`` swaps the table in place (the server keeps running and answering): an issuer whose
settings did not change keeps its mirrored document and its refresh task.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from authz.config.runtime import Config, Issuer
from authz.oauth.rfc8414 import MetadataError, fetch_issuer_metadata
from discovery import rfc8414, rfc9728

log = logging.getLogger(__name__)

Readiness = Callable[[], Mapping[str, bool]]
Metrics = Callable[[], tuple[bytes, str] | None]  # Prometheus exposition and its content type; None: off
_Handler = Callable[[web.Request], web.Response]
# A signed approval answer: (approval id, request headers, body) -> (status, JSON body). See authz.approval.gate.
ApprovalCallback = Callable[[str, Mapping[str, str], bytes], Awaitable[tuple[int, dict[str, Any]]]]
APPROVALS_PREFIX = "/approvals/"
MAX_CALLBACK_BYTES = 16_384

DOCUMENT_MAX_AGE = 300
REFRESH_INTERVAL = 300.0
RETRY_INTERVAL = 5.0
_ALLOWED_METHODS = ("GET", "HEAD")
_PRIVATE = frozenset({"/healthz", "/readyz", "/metrics"})  # operator endpoints: no CORS


# ---------------------------------------------------------------- responses


def _json(status: int, body: Mapping[str, Any] | bytes, *, max_age: int | None = None) -> web.Response:
    """A JSON response; documents are cacheable for ``max_age`` seconds, everything else is not."""
    raw = body if isinstance(body, bytes) else _encode(body)
    response = web.Response(status=status, body=raw, content_type="application/json")
    response.headers["Cache-Control"] = f"public, max-age={max_age}" if max_age is not None else "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Server"] = "mcp-authz"
    if max_age is not None:
        response.headers["Access-Control-Allow-Origin"] = "*"
    return response


def _preflight() -> web.Response:
    """CORS preflight for the public documents: browser MCP clients send ``MCP-Protocol-Version`` with
    their metadata requests, which makes the browser ask first."""
    response = web.Response(status=204)
    response.headers["Access-Control-Allow-Origin"] = "*"
    response.headers["Access-Control-Allow-Methods"] = "GET, HEAD, OPTIONS"
    response.headers["Access-Control-Allow-Headers"] = "mcp-protocol-version, content-type"
    response.headers["Access-Control-Max-Age"] = "86400"
    response.headers["Server"] = "mcp-authz"
    return response


def _encode(document: Mapping[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def _error(status: int, code: str, description: str | None = None) -> web.Response:
    body = {"error": code} if description is None else {"error": code, "error_description": description}
    return _json(status, body)


# ---------------------------------------------------------------- the authorization-server metadata mirror


@dataclass(slots=True)
class _Mirrored:
    issuer: Issuer
    body: bytes | None = None
    failures: int = 0


class MetadataMirror:
    """Last good metadata document of each issuer, refreshed in the background.

    After a success the next fetch is ``refresh`` seconds later; after a failure ``retry`` seconds,
    doubling with each further failure up to ``refresh``.
    """

    def __init__(self, issuers: Sequence[Issuer], *, refresh: float, retry: float) -> None:
        self._entries = {i.name: _Mirrored(i) for i in issuers}
        self.refresh_interval = refresh
        self.retry_interval = retry
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._session: aiohttp.ClientSession | None = None  # set while running

    def body(self, name: str) -> bytes | None:
        """The serialized document of issuer ``name``, or None if never fetched (or not mirrored)."""
        entry = self._entries.get(name)
        return entry.body if entry is not None else None

    def update(self, issuers: Sequence[Issuer]) -> None:
        """Mirror ``issuers`` from now on. One whose settings did not change keeps its document and its
        refresh task; a new or changed one is fetched afresh; a removed one stops."""
        entries: dict[str, _Mirrored] = {}
        for issuer in issuers:
            old = self._entries.get(issuer.name)
            entries[issuer.name] = old if old is not None and old.issuer == issuer else _Mirrored(issuer)
        for name in [n for n in self._tasks if entries.get(n) is not self._entries.get(n)]:
            self._tasks.pop(name).cancel()
        self._entries = entries
        self._start_tasks()

    def _start_tasks(self) -> None:
        session = self._session
        if session is None:
            return
        for name in self._entries:
            if name not in self._tasks:
                self._tasks[name] = asyncio.create_task(self.run(session, name), name=f"as-metadata:{name}")

    def checks(self) -> dict[str, bool]:
        """Readiness: ``as_metadata:<issuer>`` is true once that issuer's metadata was fetched."""
        return {f"as_metadata:{name}": e.body is not None for name, e in self._entries.items()}

    async def fetch(self, session: aiohttp.ClientSession, name: str) -> bool:
        """Fetch issuer ``name`` once; on failure keep the previous document. True on success."""
        entry = self._entries[name]
        try:
            document = await fetch_issuer_metadata(session, entry.issuer.issuer, entry.issuer.jwks_timeout)
        except MetadataError as exc:
            entry.failures += 1
            kept = "keeping the last good document" if entry.body is not None else "none fetched yet"
            log.warning("issuer %s: metadata refresh failed (%s): %s", name, kept, exc)
            return False
        if entry.body is None or entry.failures:
            log.info("issuer %s: metadata fetched", name)
        entry.body = _encode(document)
        entry.failures = 0
        return True

    def delay(self, name: str) -> float:
        """Seconds until the next fetch of issuer ``name``."""
        failures = self._entries[name].failures
        if not failures:
            return self.refresh_interval
        return min(self.retry_interval * 2.0 ** min(failures - 1, 16), self.refresh_interval)

    async def run(self, session: aiohttp.ClientSession, name: str) -> None:
        """Fetch issuer ``name`` now and then forever (until cancelled)."""
        while True:
            try:
                await self.fetch(session, name)
            except Exception:  # a bug must not end the loop and leave the document stale forever
                self._entries[name].failures += 1
                log.exception("issuer %s: unexpected error while fetching metadata", name)
            await asyncio.sleep(self.delay(name))

    @contextlib.asynccontextmanager
    async def running(self, http: aiohttp.ClientSession | None) -> AsyncIterator[None]:
        """Run one refresh task per issuer (also those ``update`` adds), using ``http`` or a session of its
        own (closed on exit)."""
        self._session = http if http is not None else aiohttp.ClientSession()
        self._start_tasks()
        try:
            yield
        finally:
            session, self._session = self._session, None
            tasks = list(self._tasks.values())
            self._tasks.clear()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if http is None:
                await session.close()


# ---------------------------------------------------------------- the application


@dataclass(frozen=True, slots=True)
class _Routes:
    """What the application serves for one config; replaced as a whole by ``reconfigure``."""

    table: Mapping[str, _Handler]
    jwks: Mapping[str, dict[str, Any]]
    approval_callback: ApprovalCallback | None


RouteBuilder = Callable[[Config, Mapping[str, dict[str, Any]], ApprovalCallback | None], _Routes]


class _Site:
    """The routes in force (read once per request) and how to build them for another config."""

    __slots__ = ("build", "routes")

    def __init__(self, routes: _Routes, build: RouteBuilder) -> None:
        self.routes = routes
        self.build = build


MIRROR = web.AppKey("mirror", MetadataMirror)
SITE = web.AppKey("site", _Site)


def build_app(
    config: Config,
    *,
    readiness: Readiness,
    jwks_documents: Mapping[str, dict[str, Any]] | None = None,
    http: aiohttp.ClientSession | None = None,
    refresh_interval: float = REFRESH_INTERVAL,
    retry_interval: float = RETRY_INTERVAL,
    metrics: Metrics | None = None,
    approval_callback: ApprovalCallback | None = None,
) -> web.Application:
    """The discovery application for ``config`` (``reconfigure`` gives it another one).

    ``readiness`` is called on every /readyz; its checks are reported beside the mirror's own.
    ``jwks_documents`` maps an issuer name to the JWKS published at /jwks/<name>.json (looked up
    per request, so a mapping updated in place is served as it changes). ``http`` is used for the
    metadata fetches and left open; without it the application opens and closes its own session.
    ``metrics`` serves /metrics (Prometheus text format) when given and not returning None.
    ``approval_callback`` serves ``POST /approvals/<id>`` (late answers to approval requests).
    """
    mirror = MetadataMirror(rfc8414.mirrored_issuers(config), refresh=refresh_interval, retry=retry_interval)
    retry_after = str(max(1, round(retry_interval)))

    def protected_resource(candidates: tuple[rfc9728.Published, ...]) -> _Handler:
        def handle(request: web.Request) -> web.Response:
            document = rfc9728.select(candidates, request.host)
            if document is None:
                return _error(404, "not_found", "no protected resource on this host at this path")
            return _json(200, document, max_age=DOCUMENT_MAX_AGE)

        return handle

    def authorization_server(name: str) -> _Handler:
        def handle(request: web.Request) -> web.Response:
            body = mirror.body(name)
            if body is None:
                response = _error(503, "temporarily_unavailable", "authorization server metadata not fetched yet")
                response.headers["Retry-After"] = retry_after
                return response
            return _json(200, body, max_age=DOCUMENT_MAX_AGE)

        return handle

    def healthz(request: web.Request) -> web.Response:
        return _json(200, {"status": "ok"})

    def readyz(request: web.Request) -> web.Response:
        try:
            checks = {str(k): bool(v) for k, v in readiness().items()}
        except Exception:
            log.exception("readiness callback failed")
            checks = {"readiness": False}
        checks.update(mirror.checks())
        ready = all(checks.values())
        return _json(200 if ready else 503, {"status": "ready" if ready else "not ready", "checks": checks})

    def prometheus(request: web.Request) -> web.Response:
        exposition = metrics() if metrics is not None else None
        if exposition is None:
            return _error(404, "not_found", "metrics are off")
        body, content_type = exposition
        return web.Response(body=body, headers={"Content-Type": content_type, "Cache-Control": "no-store"})

    def routes(
        config: Config, jwks: Mapping[str, dict[str, Any]], approval_callback: ApprovalCallback | None
    ) -> _Routes:
        table: dict[str, _Handler] = {"/healthz": healthz, "/readyz": readyz, "/metrics": prometheus}
        for path, name in rfc8414.routes(config).items():
            table[path] = authorization_server(name)
        for path, candidates in rfc9728.routes(config).items():
            table[path] = protected_resource(candidates)
        return _Routes(table, jwks, approval_callback)

    site = _Site(routes(config, jwks_documents if jwks_documents is not None else {}, approval_callback), routes)

    async def dispatch(request: web.Request) -> web.Response:
        current = site.routes  # once per request: a reconfigure never tears one
        path = request.rel_url.raw_path
        if current.approval_callback is not None and path.startswith(APPROVALS_PREFIX):
            return await _approval(request, path.removeprefix(APPROVALS_PREFIX), current.approval_callback)
        handler = current.table.get(path)
        if handler is None and path.startswith("/jwks/") and path.endswith(".json"):
            document = current.jwks.get(path.removeprefix("/jwks/").removesuffix(".json"))
            if document is not None:
                handler = _jwks_handler(document)
        if handler is None:
            return _error(404, "not_found")
        if request.method == "OPTIONS" and path not in _PRIVATE:
            return _preflight()
        if request.method not in _ALLOWED_METHODS:
            response = _error(405, "method_not_allowed")
            response.headers["Allow"] = ", ".join(_ALLOWED_METHODS)
            return response
        return handler(request)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        async with mirror.running(http):
            yield

    app = web.Application()
    app[MIRROR] = mirror
    app[SITE] = site
    app.router.add_route("*", "/{path:.*}", dispatch)
    app.cleanup_ctx.append(lifecycle)
    return app


def reconfigure(
    app: web.Application,
    config: Config,
    *,
    jwks_documents: Mapping[str, dict[str, Any]] | None = None,
    approval_callback: ApprovalCallback | None = None,
) -> None:
    """Serve ``config`` from now on, without a restart (the listening socket and its connections stay).

    The mirror keeps the documents and refresh tasks of issuers whose settings did not change; the
    readiness, metrics and HTTP session given to ``build_app`` stay."""
    app[MIRROR].update(rfc8414.mirrored_issuers(config))
    site = app[SITE]
    site.routes = site.build(config, jwks_documents if jwks_documents is not None else {}, approval_callback)


async def _approval(request: web.Request, approval_id: str, callback: ApprovalCallback) -> web.Response:
    if request.method != "POST":
        response = _error(405, "method_not_allowed")
        response.headers["Allow"] = "POST"
        return response
    if not approval_id or len(approval_id) > 64 or not approval_id.replace("-", "").replace("_", "").isalnum():
        return _error(404, "not_found")
    if (request.content_length or 0) > MAX_CALLBACK_BYTES:
        return _error(413, "too_large")
    body = await request.content.read(MAX_CALLBACK_BYTES + 1)
    if len(body) > MAX_CALLBACK_BYTES:
        return _error(413, "too_large")
    try:
        status, answer = await callback(approval_id, request.headers, body)
    except Exception:
        log.exception("approval callback failed")
        status, answer = 500, {"error": "server_error"}
    return _json(status, answer)


def _jwks_handler(document: Mapping[str, Any]) -> _Handler:
    def handle(request: web.Request) -> web.Response:
        return _json(200, document, max_age=DOCUMENT_MAX_AGE)

    return handle


async def start(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Serve ``app`` on ``host:port`` (port 0: any free port, see ``runner.addresses``).

    The caller ends it with ``await runner.cleanup()``, which also stops the metadata mirror.
    """
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, host.strip("[]"), port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner
