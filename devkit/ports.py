"""Free ports on a loopback address, for servers that must not assume a fixed port.

Rules:
1. Standard library only (``devkit.services`` uses it before the project is installed).
2. A port is free when picked, not reserved: a server that loses the race must retry with a fresh one.
3. This process never hands out the same (host, port) twice. The kernel offers a port again as soon as the probe
   that found it is closed, so two picks for one cluster (a node's Raft and HTTP ports) could coincide: the node
   then served HTTP on its Raft port and never joined (a CI failure of ``test_leader_wait.py``).
"""

from __future__ import annotations

import contextlib
import socket
import threading

__all__ = ["LOOPBACK", "free_port", "free_ports"]

#: The address every harness server binds unless told otherwise.
LOOPBACK = "127.0.0.1"

_given: set[tuple[str, int]] = set()
_lock = threading.Lock()


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """Return ``count`` distinct ports free on ``host`` now, none handed out before by this process (rule 3)."""
    ports: list[int] = []
    with _lock, contextlib.ExitStack() as stack:  # probes stay open until all are picked: no repeats among them
        while len(ports) < count:
            sock = stack.enter_context(socket.socket())
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
            if (host, port) not in _given:
                ports.append(port)
        _given.update((host, port) for port in ports)
    return ports


def free_port(host: str = LOOPBACK) -> int:
    """One port free on ``host`` now (never one this process handed out before)."""
    return free_ports(1, host)[0]
