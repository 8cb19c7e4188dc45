"""The errors of devkit.services; one root.

Rules:
1. ``DevServiceError`` is the root: a tool is missing, or a server did not start or stop. The message says what
   to install or shows the server's log tail.
2. ``PortInUseError`` is the one a caller may retry: a picked port was taken before the server bound it.
"""

from __future__ import annotations

__all__ = ["DevServiceError", "PortInUseError"]


class DevServiceError(RuntimeError):
    """A tool is missing, or a server did not start or stop; the message says what to install or shows its log."""


class PortInUseError(DevServiceError):
    """The server could not bind a port: another process took it between the pick and the bind."""
