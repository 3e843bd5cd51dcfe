"""
Helpers for tests and benchmarks that run real servers: network namespaces hanging off
a bridge, so that one server's link can be cut without touching anyone else's.

Root only, and Linux only: everything here runs iproute2's C{ip}.
"""

from __future__ import annotations

import os
import shutil
import subprocess

__all__ = ["Bridge", "netns_subnet"]


def netns_subnet(tag: int | None = None) -> str:
    """
    The first three octets of a /24 of 198.18.0.0/15 (the benchmarking range) for a
    process: C{tag} (this process's id by default) picks one of its 512, so that runs
    side by side (two checkouts, say) never route into each other's bridge.
    """
    n = (os.getpid() if tag is None else tag) % 512
    return f"198.{18 + n // 256}.{n % 256}"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def _ip_quietly(*args: str) -> None:
    subprocess.run(["ip", *args], check=False, capture_output=True, timeout=30)


class Bridge:
    """
    A bridge in this namespace and C{size} namespaces hanging off it by veth pairs:
    namespace I{n} (from 1) holds address C{SUBNET.n} on its C{eth0}, the bridge holds
    C{SUBNET.254}, so this namespace reaches every one of them.

    Make it with L{create} and always L{destroy} it (in a C{finally}); L{destroy} also
    removes the leftovers of an interrupted run with the same tag.

    @param tag: names the links and picks the subnet (this process's id by default).
    """

    def __init__(self, size: int, tag: int | None = None) -> None:
        tag = os.getpid() if tag is None else tag
        short = f"{tag % 10000}"
        self.subnet = netns_subnet(tag)
        self.bridge = f"lipsbr{short}"
        self.namespaces = [f"lips{short}n{n}" for n in range(1, size + 1)]
        self.links = [f"lips{short}v{n}" for n in range(1, size + 1)]
        self.hosts = [f"{self.subnet}.{n}" for n in range(1, size + 1)]

    def create(self) -> None:
        """Make the bridge, the namespaces and their links, all up."""
        _ip("link", "add", self.bridge, "type", "bridge", "mcast_snooping", "0")
        _ip("addr", "add", f"{self.subnet}.254/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for ns, link, host in zip(self.namespaces, self.links, self.hosts, strict=True):
            _ip("netns", "add", ns)
            _ip("link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("link", "set", link, "master", self.bridge, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "addr", "add", f"{host}/24", "brd", f"{self.subnet}.255", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "route", "add", "224.0.0.0/4", "dev", "eth0")

    def destroy(self) -> None:
        """Remove the namespaces, the links and the bridge; what is not there is fine."""
        for ns in self.namespaces:
            _ip_quietly("netns", "del", ns)
        for link in self.links:
            _ip_quietly("link", "del", link)
        _ip_quietly("link", "del", self.bridge)

    def cut(self, n: int) -> None:
        """Cut namespace C{n}'s link: its datagrams and segments go nowhere, silently."""
        _ip("link", "set", self.links[n - 1], "down")

    def heal(self, n: int) -> None:
        """Bring namespace C{n}'s link back."""
        _ip("link", "set", self.links[n - 1], "up")

    def prefix(self, n: int) -> list[str]:
        """The command that runs a program in namespace C{n} (C{ip netns exec NS})."""
        return [shutil.which("ip") or "ip", "netns", "exec", self.namespaces[n - 1]]
