"""Network namespaces for the partition test: a hub namespace holding a bridge (the
cluster network, 10.213.7.0/24; the monitor and one shim run there at .1) and a namespace
per keeper attached to it by a veth pair (node N at .1N). The hub and the first keeper's
namespace also get a direct link to the test's own namespace (10.214.7.0/30 and
10.215.7.0/30), through which the test reaches the shims there; those links carry no
cluster traffic (no routes between them), so cutting a keeper's bridge port
(:meth:`Net.cut`) leaves it alone with its own shim, as a node whose network to the others
failed. Everything here is created by the test and removed by :meth:`Net.destroy`.
"""

from __future__ import annotations

import os
import subprocess

NET = "10.213.7"
HUB_CLIENT = ("10.214.7.1", "10.214.7.2")   # (test side, hub side)
NODE1_CLIENT = ("10.215.7.1", "10.215.7.2")  # (test side, node1 side)


def _ip(*args: str, ns: str | None = None) -> None:
    argv = ["ip", *(["-n", ns] if ns else []), *args]
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {r.stderr.strip()}")


class Net:
    """The namespaces and links; names carry ``tag`` (the test's pid) so runs do not clash."""

    def __init__(self, n: int = 3):
        tag = str(os.getpid() % 100000)
        self.hub = f"k8ssql-hub-{tag}"
        self.nodes = [f"k8ssql-n{i + 1}-{tag}" for i in range(n)]
        self.ports = [f"ks{tag}p{i + 1}" for i in range(n)]  # bridge-side ends, in the hub
        self.root_links = [f"ks{tag}h", f"ks{tag}c"]          # test-side ends of the client links
        self.monitor_address = f"{NET}.1"
        self.addresses = [f"{NET}.{11 + i}" for i in range(n)]
        self.created: list[str] = []

    def create(self) -> "Net":
        for ns in [self.hub, *self.nodes]:
            _ip("netns", "add", ns)
            self.created.append(ns)
            _ip("link", "set", "lo", "up", ns=ns)
        _ip("link", "add", "br0", "type", "bridge", ns=self.hub)
        _ip("addr", "add", f"{self.monitor_address}/24", "dev", "br0", ns=self.hub)
        _ip("link", "set", "br0", "up", ns=self.hub)
        for ns, port, addr in zip(self.nodes, self.ports, self.addresses):
            _ip("link", "add", port, "netns", self.hub, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("link", "set", port, "master", "br0", ns=self.hub)
            _ip("link", "set", port, "up", ns=self.hub)
            _ip("addr", "add", f"{addr}/24", "dev", "eth0", ns=ns)
            _ip("link", "set", "eth0", "up", ns=ns)
        for root_end, ns, (ours, theirs) in ((self.root_links[0], self.hub, HUB_CLIENT),
                                              (self.root_links[1], self.nodes[0], NODE1_CLIENT)):
            _ip("link", "add", root_end, "type", "veth", "peer", "name", "client0", "netns", ns)
            _ip("addr", "add", f"{ours}/30", "dev", root_end)
            _ip("link", "set", root_end, "up")
            _ip("addr", "add", f"{theirs}/30", "dev", "client0", ns=ns)
            _ip("link", "set", "client0", "up", ns=ns)
        return self

    def cut(self, i: int) -> None:
        """Keeper ``i`` (0-based) loses the cluster network (its bridge port down)."""
        _ip("link", "set", self.ports[i], "down", ns=self.hub)

    def heal(self, i: int) -> None:
        _ip("link", "set", self.ports[i], "up", ns=self.hub)

    def destroy(self) -> None:
        for link in self.root_links:
            subprocess.run(["ip", "link", "del", link], capture_output=True)
        for ns in reversed(self.created):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.created = []
