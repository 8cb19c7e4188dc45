"""Free ports on a loopback address, for servers that must not assume a fixed port.

Rules:
1. Standard library only (``devkit.services`` uses it before the project is installed).
2. A port is free when picked, not reserved: a server that loses the race must retry with a fresh one.
"""

from __future__ import annotations

import contextlib
import socket

__all__ = ["LOOPBACK", "free_port", "free_ports"]

#: The address every harness server binds unless told otherwise.
LOOPBACK = "127.0.0.1"


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """Return ``count`` distinct ports free on ``host`` now (all sockets stay open until all are picked)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind((host, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


def free_port(host: str = LOOPBACK) -> int:
    """One port free on ``host`` now."""
    return free_ports(1, host)[0]
