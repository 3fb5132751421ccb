"""Can this process listen on a ``host:port``? Asked before anything binds, so that a busy port is one message
naming its config key (``listen.grpc 127.0.0.1:9191: address already in use``) instead of a traceback."""

from __future__ import annotations

import errno
import socket
from collections.abc import Mapping
from dataclasses import dataclass

from authz.config.runtime import HostPort

_PROBLEMS = {
    errno.EADDRINUSE: "address already in use",
    errno.EADDRNOTAVAIL: "not an address of this host",
    errno.EACCES: "permission denied (ports below 1024 need privileges)",
}


@dataclass(frozen=True)
class Unavailable:
    """A listen address that cannot be bound: the config key that names it, the address, and why."""

    key: str
    address: str
    problem: str

    def __str__(self) -> str:
        return f"{self.key} {self.address}: {self.problem}"


class PortsUnavailable(Exception):
    """Raised before start-up when some listen addresses cannot be bound; ``str()`` names each one."""

    def __init__(self, unavailable: list[Unavailable]) -> None:
        self.unavailable = unavailable
        super().__init__("cannot listen on " + "; ".join(str(u) for u in unavailable))


def problem(address: str | HostPort) -> str | None:
    """Why nothing can listen on ``host:port`` here, or None when a bind would succeed (port 0 always does)."""
    try:
        at = HostPort.of(address)
        infos = socket.getaddrinfo(at.host, at.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, ValueError) as exc:
        return f"cannot resolve it ({exc})"
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do: TIME_WAIT is no obstacle
            try:
                sock.bind(sockaddr)
            except OSError as exc:
                return _PROBLEMS.get(exc.errno or 0, exc.strerror or str(exc))
    return None


def unavailable(listeners: Mapping[str, str | HostPort | None]) -> list[Unavailable]:
    """The listeners (config key → ``host:port``; empty or None: disabled) that cannot be bound, in the given
    order."""
    found = []
    for key, address in listeners.items():
        if address and (why := problem(address)) is not None:
            found.append(Unavailable(key, str(address), why))
    return found


def require(listeners: Mapping[str, str | HostPort | None]) -> None:
    """Raise PortsUnavailable naming every listener that cannot be bound."""
    found = unavailable(listeners)
    if found:
        raise PortsUnavailable(found)
