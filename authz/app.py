"""The running authorizer: wires config, keys, the gRPC service and the discovery service; reloads.

The only module that imports everything. Reload (SIGHUP, or the config file's content changing)
validates the new file first; an invalid one is logged and the running config keeps serving.
Reloads run one at a time: requests while one runs coalesce into one more after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import grpc

from authz import __version__
from authz.approval.gate import ApprovalGate
from authz.check import Checker
from authz.config.errors import ConfigError
from authz.config.load import load_config
from authz.config.runtime import Config, HostPort
from authz.extproc.service import ExtProcService
from authz.front.admission import Admission
from authz.front.grpc_h2corn import GrpcFront, H2cornServer, start_grpc_h2corn
from authz.front.grpc_service import AuthorizationService, start_grpc
from authz.front.grpc_wire import message_limit
from authz.identity import devkey
from authz.identity.jwks import KeySet
from authz.identity.rfc9068 import Verifier
from authz.identity.sources import IdentitySources
from authz.model import Decision, HttpRequest
from authz.observe import telemetry
from authz.observe.audit import Auditor
from authz.observe.audit_webhook import WebhookSink
from authz.observe.logs import masked
from authz.stages import Stages
from authz.state.guards import Guards
from authz.store import open_store
from authz.store.base import Store
from authz.upstream.credentials import UpstreamCredentials
from authz.upstream.exchange import TokenExchanger
from discovery import build_app
from discovery import reconfigure as reconfigure_discovery
from discovery import start as start_discovery

log = logging.getLogger("mcp_authz")
decisions = logging.getLogger("mcp_authz.decision")
GRPC_GRACE = 2.0  # seconds the gRPC front drains on SIGTERM
GRPC_SERVER_ENV = "MCP_AUTHZ_GRPC_SERVER"  # grpcio | h2corn: overrides listen.grpc_server (the tests pick with it)
GRPC_SERVERS = ("grpcio", "h2corn")


def grpc_server(config: Config) -> str:
    """Which gRPC front serves ``listen.grpc``: ``$MCP_AUTHZ_GRPC_SERVER``, else ``listen.grpc_server``
    (docs/grpc-server.md); refuses an unknown name."""
    chosen = os.environ.get(GRPC_SERVER_ENV, "") or config.listen.grpc_server
    if chosen not in GRPC_SERVERS:
        raise ValueError(f"{GRPC_SERVER_ENV}={chosen!r}: expected one of {', '.join(GRPC_SERVERS)}")
    return chosen


def _text(address: HostPort | None) -> str | None:
    """An address for a log line; None when that listener is off."""
    return str(address) if address is not None else None


def _claims_read(config: Config) -> bool:
    """Does any policy read token claims (CEL ``jwt.*``)? Else cached tokens keep only what the Check needs."""
    return any(s.policy is not None and s.policy.uses_cel for s in config.servers.values())


class Authorizer:
    def __init__(self, config: Config, path: str | None = None) -> None:
        self.path = path
        self._http: aiohttp.ClientSession | None = None
        self._keys: dict[str, KeySet] = {}
        self._refreshers: list[asyncio.Task[None]] = []
        self._grpc: grpc.aio.Server | H2cornServer | None = None
        self._discovery: Any = None
        self._http_front: asyncio.Server | None = None
        self._admin: grpc.aio.Server | None = None
        self._jobs: set[asyncio.Future[Any]] = set()
        self._reload_lock = asyncio.Lock()
        self._reloading: asyncio.Task[None] | None = None  # the queue of requested reloads, while it runs
        self._reload_again = False
        self._seen = self._stat()  # the file as last loaded (or refused): its stat and its content digest
        self._digest = self._file_digest()
        self.audit = Auditor()
        self.approvals = ApprovalGate(None, None, self._session, self.audit.step)
        self.webhook: WebhookSink | None = None
        self.store: Store = open_store(config.store)  # started in start(); kept across reloads
        self.checker = self._build(config)

    # ------------------------------------------------------------------ building a config's runtime

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(headers={"User-Agent": "mcp-authz"})
        return self._http

    def _build(self, config: Config) -> Checker:
        keys = {}
        for name, issuer in config.key_issuers.items():
            old = self._keys.get(name)
            keys[name] = old if old is not None and old.issuer == issuer else KeySet(issuer, self._session)
        self._keys = keys
        self.audit.configure(config.audit.enabled, config.audit.argument_keys)
        self.approvals.configure(config.approvals, self.store)
        self.verifier = Verifier(config.issuers, keys, config.token_cache_size, keep_claims=_claims_read(config))
        guards = Guards(self.store, config.store.failure, config.store.max_sessions_per_subject)
        exchanger = TokenExchanger(self._session, self.store, config.secret_keys)
        stages = Stages(
            identity=IdentitySources(self.verifier),
            revocation=guards,
            rate_limit=guards,
            sessions=guards,
            approval=self.approvals,
            credentials=UpstreamCredentials(exchanger),
        )
        return Checker(config, stages)

    @property
    def config(self) -> Config:
        return self.checker.config

    def readiness(self) -> Mapping[str, bool]:
        checks = {"config": True, "store": self.store.healthy}
        checks.update({f"jwks:{name}": ks.ready for name, ks in self._keys.items()})
        return checks

    def stats(self) -> dict[str, Any]:
        """What must stay bounded under load: asyncio tasks, cached tokens, keys per issuer (logged on SIGUSR1)."""
        cache = self.verifier.cache
        return {
            "tasks": len(asyncio.all_tasks()),
            "token_cache": len(cache),
            "token_cache_size": cache.size,
            "jwks_keys": {name: len(ks) for name, ks in self._keys.items()},
            "jwks_fetches": {name: ks.fetches for name, ks in self._keys.items()},
        }

    def jwks_documents(self) -> dict[str, dict[str, Any]]:
        return {
            name: devkey.public_jwks(issuer.local_key_file)
            for name, issuer in self.config.issuers.items()
            if issuer.local_key_file
        }

    # ------------------------------------------------------------------ serving

    def observe(self, req: HttpRequest, decision: Decision, started_ns: int | None = None) -> None:
        """Count, time and trace the decision; write its audit event; log it with its reason code.

        Denials are logged at info, allows at debug. ``started_ns``: ``time.perf_counter_ns()`` at the
        Check's start. The trace id of the Check's span (if one was made) goes into the audit event.
        """
        self.audit(req, decision, telemetry.record_check(req, decision, started_ns))
        level = logging.DEBUG if decision.allowed else logging.INFO
        if not decisions.isEnabledFor(level):
            return
        mcp = decision.mcp
        call = mcp.calls[0] if mcp and mcp.calls else None
        decisions.log(
            level,
            "allow" if decision.allowed else "deny",
            extra={
                "status": decision.status,
                "reason": decision.reason,
                "server": decision.server,
                "rule": decision.rule,
                "subject": decision.caller.subject if decision.caller else None,
                "mcp_method": call.method if call else None,
                "mcp_name": call.name if call else None,
                "http_method": req.method,
                "source": req.source_address,
                "detail": decision.detail,
            },
        )

    async def start(self) -> None:
        from authz import ports

        # before anything binds: a busy port is one message naming its key, not a traceback
        ports.require(self.config.listeners())
        self._start_telemetry()
        await self.store.start()
        self._configure_webhook()
        self._start_refreshers()
        await self._start_grpc()
        if self.config.listen.http:
            from authz.front.http_service import start_http

            admission = Admission(self.config.listen.max_inflight)
            self._http_front = await start_http(self.config.listen.http, lambda: self.checker, self.observe, admission)
        await self._start_discovery()
        await self._start_admin()
        log.info(
            "mcp-authz serving",
            extra={
                "grpc": str(self.config.listen.grpc),
                "grpc_server": grpc_server(self.config),
                "http": _text(self.config.listen.http),
                "discovery": _text(self.config.listen.discovery),
                "servers": sorted(self.config.servers),
                "issuers": sorted(self.config.issuers),
                "config": self.path,
            },
        )
        log.info("configuration in force", extra={"settings": self.settings_summary()})

    def message_limit(self) -> int:
        """The largest gRPC message accepted, from ``envoy.max_request_bytes`` and ``ext_proc.max_body_bytes``."""
        return message_limit(self.config.envoy.max_request_bytes, self.config.ext_proc.max_body_bytes)

    async def _start_grpc(self) -> None:
        """The gRPC front ``listen.grpc_server`` names: ext_authz, the list filter (ext_proc), health."""
        processor = ExtProcService(lambda: self.config)
        if grpc_server(self.config) == "h2corn":
            admission = Admission(self.config.listen.max_inflight)
            front = GrpcFront(lambda: self.checker, self.observe, self.message_limit, processor, admission)
            self._grpc = await start_grpc_h2corn(str(self.config.listen.grpc), front, grace=GRPC_GRACE)
            return
        service = AuthorizationService(lambda: self.checker, self.observe, Admission(self.config.listen.max_inflight))
        self._grpc, _ = await start_grpc(str(self.config.listen.grpc), service, processor, self.message_limit())

    # ------------------------------------------------------------------ telemetry and audit sinks

    def _start_telemetry(self) -> None:
        try:
            telemetry.setup(self.config.telemetry, version=__version__)
        except Exception:  # no telemetry is better than no authorizer
            log.exception("telemetry setup failed; serving without metrics and traces")

    def _configure_webhook(self) -> None:
        """Start, replace or stop the audit webhook sink to match the config (the old one flushes meanwhile)."""
        settings = self.config.audit.webhook
        old = self.webhook
        if old is not None and old.settings == settings:
            return
        self.webhook = WebhookSink(settings) if settings is not None else None
        self.audit.sink = self.webhook.submit if self.webhook is not None else None
        if self.webhook is not None:
            self.webhook.start()
        if old is not None:
            self._background(old.stop())

    def _background(self, job: Any) -> None:
        task = asyncio.ensure_future(job)
        self._jobs.add(task)
        task.add_done_callback(self._jobs.discard)

    def settings_summary(self) -> dict[str, Any]:
        """The configuration in force for the startup log line: secrets and ``${ENV}`` values masked."""
        raw: Any = None
        if self.path:
            try:
                import yaml

                raw = yaml.safe_load(Path(self.path).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                raw = None
        result: dict[str, Any] = masked(self.config.settings, raw)
        return result

    async def _start_admin(self) -> None:
        """The admin API (revocation, sessions, explain) on ``admin.listen``, if set."""
        if self.config.admin.listen is None:
            return
        from authz.admin.server import start_admin
        from authz.admin.service import AdminService

        service = AdminService(lambda: self.checker, lambda: self.store)
        self._admin, _ = await start_admin(self.config.admin, service)

    def _start_refreshers(self) -> None:
        for task in self._refreshers:
            task.cancel()
        self._refreshers = [asyncio.create_task(ks.run_refresher()) for ks in self._keys.values()]

    async def _start_discovery(self) -> None:
        address = self.config.listen.discovery
        if address is None:
            return
        app = build_app(
            self.config,
            readiness=self.readiness,
            jwks_documents=self.jwks_documents(),
            metrics=telemetry.prometheus_text,
            approval_callback=self.approvals.callback if self.config.approvals else None,
        )
        self._discovery = await start_discovery(app, address.host, address.port)

    def _reconfigure_discovery(self) -> None:
        """The running discovery server serves the config in force (no restart: it never stops answering)."""
        if self._discovery is None:
            return
        reconfigure_discovery(
            self._discovery.app,
            self.config,
            jwks_documents=self.jwks_documents(),
            approval_callback=self.approvals.callback if self.config.approvals else None,
        )

    async def stop(self) -> None:
        if self._reloading is not None:
            self._reloading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reloading
        for task in self._refreshers:
            task.cancel()
        if self._admin is not None:
            await self._admin.stop(grace=1)
        if self._http_front is not None:
            self._http_front.close()
        if self._grpc is not None:
            await self._grpc.stop(grace=GRPC_GRACE)  # health NOT_SERVING, GOAWAY, in-flight calls finish
        if self._discovery is not None:
            await self._discovery.cleanup()
        if self._http is not None:
            await self._http.close()
        if self.webhook is not None:
            await self.webhook.stop()
        await self.store.close()
        telemetry.shutdown()

    # ------------------------------------------------------------------ reload

    def _stat(self) -> tuple[int, int, int] | None:
        """The config file's (mtime_ns, size, inode): a cheap hint that it may have changed."""
        try:
            found = os.stat(self.path) if self.path else None
        except OSError:
            return None
        return (found.st_mtime_ns, found.st_size, found.st_ino) if found is not None else None

    def _file_digest(self) -> bytes | None:
        try:
            return hashlib.sha256(Path(self.path).read_bytes()).digest() if self.path else None
        except OSError:
            return None

    def file_changed(self) -> bool:
        """Does the config file hold other bytes than the ones last loaded (or refused)? A rewrite with
        the same content, or a change a reload already took in, is no change."""
        seen = self._stat()
        if seen is None or seen == self._seen:
            return False
        digest = self._file_digest()
        if digest is None:
            return False
        if digest == self._digest:
            self._seen = seen
            return False
        return True

    def request_reload(self) -> None:
        """Reload soon (SIGHUP, the watcher). One reload at a time: requests made while one is queued or
        running coalesce into one more after it, so a storm of signals costs at most two."""
        self._reload_again = True
        if self._reloading is None or self._reloading.done():
            self._reloading = asyncio.get_running_loop().create_task(self._run_reloads(), name="config-reload")

    async def _run_reloads(self) -> None:
        while self._reload_again:
            self._reload_again = False
            try:
                await self.reload()
            except Exception:  # a reload never ends the process, and leaves no task exception unretrieved
                log.exception("config reload failed; the running config stays", extra={"reason": "reload_failed"})

    async def reload(self) -> bool:
        """Validate and swap in the config file; keep the old one if the new one is invalid. One at a time."""
        async with self._reload_lock:
            return await self._reload()

    async def _reload(self) -> bool:
        if self.path is None:
            return False
        self._seen, self._digest = self._stat(), self._file_digest()  # before reading: a later write is a change
        try:
            config = load_config(self.path)
        except ConfigError as exc:
            log.error("config reload refused; the running config stays", extra={"errors": exc.errors})
            return False
        old = self.config
        if config.listen != old.listen:
            log.warning("listen addresses change only on restart")
        if config.admin != old.admin:
            log.warning("admin settings change only on restart")
        await self._swap_store(config)
        self.checker = self._build(config)
        self._start_refreshers()
        self._configure_webhook()
        if config.telemetry != old.telemetry:
            log.warning("telemetry settings change only on restart")
        if config.log_level != old.log_level:
            logging.getLogger().setLevel(config.log_level.upper())
        self._reconfigure_discovery()
        log.info("config reloaded", extra={"config": self.path})
        log.info("configuration in force", extra={"settings": self.settings_summary()})
        return True

    async def _swap_store(self, config: Config) -> None:
        """A changed ``store`` section opens (and starts) the new store, then closes the old one."""
        if config.store == self.config.store:
            return
        old, self.store = self.store, open_store(config.store)
        await self.store.start()
        self._background(old.close())
        log.info("store replaced", extra={"store": self.store.kind})

    async def watch(self, interval: float = 2.0) -> None:
        """Reload when the config file's content changes, once per change."""
        while True:
            await asyncio.sleep(interval)
            idle = self._reloading is None or self._reloading.done()
            if idle and self.file_changed():
                self.request_reload()


async def serve(path: str) -> None:
    """Run until SIGTERM/SIGINT; SIGHUP reloads."""
    authorizer = Authorizer(load_config(path), path)
    await authorizer.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, authorizer.request_reload)
    loop.add_signal_handler(signal.SIGUSR1, lambda: log.info("stats", extra=authorizer.stats()))
    watcher = asyncio.create_task(authorizer.watch())
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
            loop.remove_signal_handler(sig)
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        await authorizer.stop()


def ensure_dev_keys(config_path: str | Path) -> None:
    """Create missing development keys named by ``local_key_file`` (relative to the config file's directory)."""
    import yaml

    from authz.config.compile import relative_to

    raw = yaml.safe_load(Path(config_path).read_text(encoding="utf-8")) or {}
    for issuer in raw.get("issuers") or []:
        if isinstance(issuer, dict) and issuer.get("local_key_file"):
            devkey.ensure_key(relative_to(Path(config_path).parent, str(issuer["local_key_file"])))
