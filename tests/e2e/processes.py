"""Processes for end-to-end tests: one subprocess each (`Proc`), its log, readiness waits that fail with
the log tail, and SIGTERM then SIGKILL of its whole process group on `stop()` or at interpreter exit."""

from __future__ import annotations

import atexit
import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Generic, Protocol, TypeVar

import httpx

REPO_ROOT: Final = Path(__file__).resolve().parents[2]
VENV_BIN: Final = Path(sys.executable).parent

_ENVOY_BASE_IDS = itertools.count(1)
_LOG_SEQ = itertools.count(1)


class StartupError(RuntimeError):
    """A process did not come up (or died); the message carries the tail of its log."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that nothing listens on right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _port_accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def read_json_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file, [] if it does not exist."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------- processes

_LIVE: set[Proc] = set()
_PDEATHSIG: Final = ["setpriv", "--pdeathsig", "KILL", "--"] if shutil.which("setpriv") else []


class Proc:
    """One subprocess with its output in `log_path`; stopped with its whole process group.

    The child gets its own session (process group), so `stop()` also ends whatever it forked.
    With util-linux `setpriv` present the kernel kills the child if the test process dies
    (`PR_SET_PDEATHSIG`; it fires when the *thread* that started the child ends, so start
    processes from the main thread, as fixtures are).
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str | os.PathLike[str]],
        *,
        log_dir: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = [os.fspath(a) for a in argv]
        self.log_path = log_dir / f"{name}-{next(_LOG_SEQ)}.log"
        self._env = {**os.environ, **env} if env is not None else None
        self._cwd = cwd
        self._popen: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"Proc({self.name!r}, pid={self.pid}, log={str(self.log_path)!r})"

    def start(self) -> Proc:
        if self._popen is not None:
            raise RuntimeError(f"{self.name} already started")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"$ {' '.join(self.argv)}\n".encode())
            log.flush()
            self._popen = subprocess.Popen(
                [*_PDEATHSIG, *self.argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._env,
                cwd=self._cwd,
                start_new_session=True,
            )
        _LIVE.add(self)
        return self

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen is not None else None

    @property
    def alive(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._popen.poll() if self._popen is not None else None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def fail(self, what: str) -> StartupError:
        state = "running" if self.alive else f"exited with {self.returncode}"
        return StartupError(
            f"{self.name} ({state}): {what}\n--- {self.log_path} (last lines) ---\n{self.log_tail()}\n---"
        )

    def wait_until(self, what: str, ready: Callable[[], bool], timeout: float = 30.0) -> None:
        """Poll `ready()` until true; fail with the log tail if the process dies or `timeout` passes."""
        deadline = time.monotonic() + timeout
        delay = 0.02
        while True:
            if ready():
                return
            if not self.alive:
                raise self.fail(f"died while waiting for {what}")
            if time.monotonic() > deadline:
                raise self.fail(f"not ready after {timeout:.0f}s: {what}")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.25)

    def wait_port(self, port: int, host: str = "127.0.0.1", timeout: float = 30.0) -> None:
        """Wait until `host:port` accepts TCP connections."""
        self.wait_until(f"TCP {host}:{port} to accept", lambda: _port_accepts(host, port), timeout)

    def wait_http(self, url: str, *, timeout: float = 30.0, expect: Callable[[int], bool] | None = None) -> None:
        """Wait until `GET url` answers with a status `expect` accepts (default: 200)."""
        check = expect or (lambda status: status == 200)

        def ready() -> bool:
            try:
                return check(httpx.get(url, timeout=1.0).status_code)
            except httpx.HTTPError:
                return False

        self.wait_until(f"GET {url}", ready, timeout)

    def wait_log(self, text: str, timeout: float = 30.0) -> None:
        """Wait until the log contains `text`."""
        self.wait_until(f"{text!r} in the log", lambda: text in self.log_text(), timeout)

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM the process group, SIGKILL it after `timeout`; the exit status (None if never started)."""
        popen = self._popen
        if popen is None:
            return None
        _LIVE.discard(self)
        if popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, signal.SIGTERM)
            try:
                popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(popen.pid, signal.SIGKILL)
                popen.wait(timeout)
        # Whatever the leader left behind in its group goes too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(popen.pid, signal.SIGKILL)
        return popen.returncode

    def __enter__(self) -> Proc:
        return self if self._popen is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@atexit.register
def _stop_all() -> None:
    for proc in list(_LIVE):
        proc.stop(timeout=2.0)


def _start_or_fail(proc: Proc, ready: Callable[[Proc], None]) -> None:
    proc.start()
    try:
        ready(proc)
    except BaseException:
        proc.stop()
        raise


class _Component(Protocol):
    @property
    def proc(self) -> Proc: ...


ComponentT = TypeVar("ComponentT", bound=_Component)


class Factory(Generic[ComponentT]):
    """Starts components with `start(log_dir, *args, **kwargs)` on demand; `stop_all()` stops them all.

    The session fixtures `sample_server`, `envoy`, `redis`, `authorizer` and `idp_factory` are these.
    """

    def __init__(self, start: Callable[..., ComponentT], log_dir: Path) -> None:
        self._start = start
        self._log_dir = log_dir
        self.started: list[ComponentT] = []

    def __call__(self, *args: Any, **kwargs: Any) -> ComponentT:
        component = self._start(self._log_dir, *args, **kwargs)
        self.started.append(component)
        return component

    def stop_all(self) -> None:
        while self.started:
            self.started.pop().proc.stop()


# ---------------------------------------------------------------------------------------------- identity provider
