"""The audit webhook sink: audit events POSTed in signed batches, off the Check path.

``submit`` only appends the already serialised event to a bounded queue (a Check never waits on the
network); when the queue is full the event is dropped and counted. One background task sends batches
of up to ``batch_size`` events (or what arrived within ``flush_interval``) as a JSON array, signed:

    X-Mcp-Authz-Timestamp: <unix seconds>
    X-Mcp-Authz-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>

A failed POST (network error, timeout, 408, 429, 5xx) is retried with exponential backoff, signed
anew each time; another 4xx or exhausted retries drop the batch (counted and logged).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
from collections import deque
from collections.abc import Callable
from urllib.parse import urlsplit

import aiohttp

from authz.config.runtime import AuditWebhook
from authz.observe import telemetry

log = logging.getLogger("mcp_authz.webhook")

SIGNATURE_HEADER = "X-Mcp-Authz-Signature"
TIMESTAMP_HEADER = "X-Mcp-Authz-Timestamp"
BACKOFF = 0.5  # seconds before the first retry; doubled each time
MAX_BACKOFF = 30.0
_RETRY_STATUS = frozenset({408, 429})


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The signature header value: ``sha256=`` + hex HMAC-SHA256 over ``timestamp.body``."""
    return "sha256=" + hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256).hexdigest()


def verify(secret: bytes, timestamp: str, body: bytes, signature: str, *, max_age: float = 300.0) -> bool:
    """What a receiver does: constant-time compare, and refuse stale timestamps (replays)."""
    try:
        fresh = abs(time.time() - int(timestamp)) <= max_age
    except ValueError:
        return False
    return fresh and hmac.compare_digest(sign(secret, timestamp, body), signature)


class _Rejected(Exception):
    """The receiver refused the batch for good (a 4xx other than 408/429)."""


class WebhookSink:
    """A bounded queue of serialised audit events and the task that sends them."""

    def __init__(
        self,
        settings: AuditWebhook,
        *,
        backoff: float = BACKOFF,
        max_backoff: float = MAX_BACKOFF,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self._secret = settings.secret.reveal().encode("utf-8")  # decrypted by the config compiler
        self._queue: deque[bytes] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._clock = clock
        self._unlogged_drops = 0
        self._stopping = False
        self.sent = 0
        self.failed = 0
        self.dropped = 0

    def __repr__(self) -> str:  # never shows the secret
        host = urlsplit(self.settings.url).hostname
        return f"WebhookSink(host={host!r}, queued={len(self._queue)}, dropped={self.dropped})"

    # ------------------------------------------------------------ the Check side

    def submit(self, line: str) -> None:
        """Queue one serialised event; drop and count it when the queue is full. Never blocks or raises."""
        queue = self._queue
        if len(queue) >= self.settings.queue_size:
            self.dropped += 1
            self._unlogged_drops += 1
            telemetry.count_webhook("dropped")
            return
        queue.append(line.encode("utf-8"))
        if len(queue) >= self.settings.batch_size:
            self._wake.set()

    @property
    def queued(self) -> int:
        return len(self._queue)

    # ------------------------------------------------------------ the sender

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="audit-webhook")

    async def stop(self, timeout: float = 2.0) -> None:
        """Send what is queued (within ``timeout`` seconds), then end the task."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping = True
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout)
        except (TimeoutError, asyncio.CancelledError):
            pass
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._log_drops()

    async def _run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.settings.timeout)
        async with aiohttp.ClientSession(timeout=timeout, headers={"User-Agent": "mcp-authz"}) as session:
            while True:
                if len(self._queue) < self.settings.batch_size and not self._stopping:
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self.settings.flush_interval)
                self._log_drops()
                if not self._queue:
                    if self._stopping:
                        return
                    continue
                batch = [self._queue.popleft() for _ in range(min(self.settings.batch_size, len(self._queue)))]
                await self._deliver(session, b"[" + b",".join(batch) + b"]", len(batch))

    async def _deliver(self, session: aiohttp.ClientSession, body: bytes, events: int) -> None:
        """POST one batch, retrying with backoff; count it as sent or failed."""
        error = ""
        for attempt in range(self.settings.max_retries + 1):
            if attempt:
                await asyncio.sleep(min(self._backoff * 2 ** (attempt - 1), self._max_backoff))
            try:
                await self._post(session, body)
            except _Rejected as exc:
                error = str(exc)
                break
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                continue
            self.sent += events
            telemetry.count_webhook("sent", events)
            return
        self.failed += events
        telemetry.count_webhook("failed", events)
        log.warning(
            "audit webhook: batch dropped after %d attempts",
            attempt + 1,
            extra={"events": events, "error": error, "host": urlsplit(self.settings.url).hostname},
        )

    async def _post(self, session: aiohttp.ClientSession, body: bytes) -> None:
        timestamp = str(int(self._clock()))
        headers = {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(self._secret, timestamp, body),
        }
        async with session.post(self.settings.url, data=body, headers=headers, allow_redirects=False) as response:
            await response.read()
            if 200 <= response.status < 300:
                return
            if response.status in _RETRY_STATUS or response.status >= 500:
                raise aiohttp.ClientResponseError(response.request_info, (), status=response.status)
            raise _Rejected(f"HTTP {response.status}")

    def _log_drops(self) -> None:
        if self._unlogged_drops:
            dropped, self._unlogged_drops = self._unlogged_drops, 0
            log.warning(
                "audit webhook queue full: %d events dropped",
                dropped,
                extra={"dropped": dropped, "dropped_total": self.dropped, "queue_size": self.settings.queue_size},
            )
