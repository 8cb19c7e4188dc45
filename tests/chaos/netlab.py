"""Network namespaces for the chaos cluster, so a partition is a real one: packets dropped by nftables.

Layout: one namespace per coordinator, each with a veth pair whose host end sits on a bridge in the root
namespace. The bridge has ``10.A.B.1``; node i has ``10.A.B.(11+i)``. Workers, the recording proxy and the test
stay in the root namespace and reach every node through the bridge.

Rules:
1. ``partition(i)`` installs an nftables table in node i's namespace that drops every packet to or from the other
   nodes' addresses (Raft and HTTP forwarding alike), while the bridge address (clients: the proxy, the test)
   still gets through. ``heal(i)`` deletes that table. Established TCP connections are cut too: the filter is per
   packet, not per connection.
2. Names carry the creating process id (``sdp`` + 6 hex digits; interface names stay within 15 characters) and
   ``destroy()`` removes everything, so concurrent runs never collide; ``create()`` first removes what a run
   that died without cleaning up (its process is gone) left behind.
3. ``NetLab.available()`` says whether this machine can do it (root, ``ip`` and ``nft``); without it the chaos
   runner falls back to loopback addresses and a SIGSTOP of the leader as the partition (documented in
   docs/reliability.md).
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
from dataclasses import dataclass, field

__all__ = ["NetLab"]


def _run(*args: str, stdin: str | None = None) -> None:
    result = subprocess.run(list(args), input=stdin, capture_output=True, text=True, timeout=30, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")


@dataclass
class NetLab:
    """One bridge and ``count`` namespaces (rule 1)."""

    count: int = 3
    tag: str = field(default_factory=lambda: f"sdp{os.getpid():06x}")
    subnet: str = field(default_factory=lambda: f"10.{random.randint(200, 250)}.{random.randint(0, 255)}")
    created: list[tuple[str, str]] = field(default_factory=list)
    partitioned: set[int] = field(default_factory=set)

    @staticmethod
    def available() -> bool:
        return os.geteuid() == 0 and shutil.which("ip") is not None and shutil.which("nft") is not None

    @property
    def bridge(self) -> str:
        return f"{self.tag}br"

    @property
    def gateway(self) -> str:
        return f"{self.subnet}.1"

    def namespace(self, index: int) -> str:
        return f"{self.tag}n{index}"

    def address(self, index: int) -> str:
        return f"{self.subnet}.{11 + index}"

    def exec_prefix(self, index: int) -> list[str]:
        """Prefix a command with this to run it inside node ``index``'s namespace."""
        return ["ip", "netns", "exec", self.namespace(index)]

    @staticmethod
    def remove_orphans() -> None:
        """Delete the namespaces and bridges of runs whose process no longer exists (rule 2)."""
        names = subprocess.run(
            ["ip", "netns", "list"], capture_output=True, text=True, timeout=30, check=False
        ).stdout.split()
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, timeout=30, check=False).stdout
        for name in {*names, *re.findall(r"\d+: (sdp[0-9a-f]{6}br)[:@]", links)}:
            match = re.fullmatch(r"sdp([0-9a-f]{6})(n\d+|br)", name)
            if match is None or os.path.exists(f"/proc/{int(match.group(1), 16)}"):
                continue
            kind = ["netns", "del"] if match.group(2) != "br" else ["link", "del"]
            subprocess.run(["ip", *kind, name], capture_output=True, timeout=30, check=False)

    def create(self) -> NetLab:
        self.remove_orphans()
        used = subprocess.run(
            ["ip", "-o", "-4", "addr"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
        while f" {self.subnet}." in used:
            self.subnet = f"10.{random.randint(200, 250)}.{random.randint(0, 255)}"
        try:
            _run("ip", "link", "add", self.bridge, "type", "bridge")
            self.created.append(("link", self.bridge))
            _run("ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            _run("ip", "link", "set", self.bridge, "up")
            for i in range(self.count):
                ns, host_end, ns_end = self.namespace(i), f"{self.tag}h{i}", f"{self.tag}p{i}"
                _run("ip", "netns", "add", ns)
                self.created.append(("netns", ns))
                _run("ip", "link", "add", host_end, "type", "veth", "peer", "name", ns_end)
                self.created.append(("link", host_end))
                _run("ip", "link", "set", ns_end, "netns", ns)
                _run("ip", "link", "set", host_end, "master", self.bridge, "up")
                _run("ip", "-n", ns, "addr", "add", f"{self.address(i)}/24", "dev", ns_end)
                _run("ip", "-n", ns, "link", "set", ns_end, "up")
                _run("ip", "-n", ns, "link", "set", "lo", "up")
        except BaseException:
            self.destroy()
            raise
        return self

    def partition(self, index: int) -> None:
        """Cut node ``index`` off from the other nodes (rule 1); clients still reach it."""
        others = ", ".join(self.address(i) for i in range(self.count) if i != index)
        rules = (
            "table inet chaos {\n"
            f"  chain in {{ type filter hook input priority 0; ip saddr {{ {others} }} drop; }}\n"
            f"  chain out {{ type filter hook output priority 0; ip daddr {{ {others} }} drop; }}\n"
            "}\n"
        )
        _run(*self.exec_prefix(index), "nft", "-f", "-", stdin=rules)
        self.partitioned.add(index)

    def heal(self, index: int) -> None:
        if index in self.partitioned:
            _run(*self.exec_prefix(index), "nft", "delete", "table", "inet", "chaos")
            self.partitioned.discard(index)

    def destroy(self) -> None:
        """Remove every namespace and link this lab made (processes inside must be gone first)."""
        for kind, name in reversed(self.created):
            command = ["ip", "netns", "del", name] if kind == "netns" else ["ip", "link", "del", name]
            subprocess.run(command, capture_output=True, timeout=30, check=False)
        self.created.clear()
        self.partitioned.clear()
