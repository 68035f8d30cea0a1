"""Facts about the node that go into the kubeadm configuration: its CRI socket and
the address the API server advertises."""

from __future__ import annotations

import ipaddress
import json

from k8s_sql.config import Cluster
from k8s_sql.errors import K8sSqlError
from k8s_sql.host import Host

#: Default CRI endpoints, as kubeadm writes them (with the unix:// scheme).
CRI_SOCKETS = {
    "crio": "unix:///var/run/crio/crio.sock",
    "containerd": "unix:///run/containerd/containerd.sock",
}


def cri_socket(host: Host, cfg: Cluster) -> tuple[str, str]:
    """The CRI endpoint kubeadm should use, and a note on how it was chosen.

    ``config.node.cri_socket`` wins; otherwise the first socket of :data:`CRI_SOCKETS`
    present on the node (the configured runtime's first); with none present (the prereqs
    phase has not installed the runtime yet), the configured runtime's default. Whether
    the socket exists is :func:`require_cri_socket`'s question.
    """
    if cfg.node.cri_socket:
        sock = cfg.node.cri_socket
        if "://" not in sock:  # kubeadm >= 1.24 wants the scheme; accept a bare path
            sock = "unix://" + sock
        return sock, "from node.criSocket"
    runtime = cfg.kubernetes.container_runtime
    order = [runtime] + [r for r in CRI_SOCKETS if r != runtime]
    for name in order:
        if host.exists(CRI_SOCKETS[name].removeprefix("unix://")):
            return CRI_SOCKETS[name], f"found {name} on the node"
    return CRI_SOCKETS[runtime], f"not on the node yet: {runtime}'s default, which prereqs installs"


def cri_socket_present(host: Host, endpoint: str) -> bool:
    """Whether the Unix socket of CRI ``endpoint`` (``unix:///path``) exists on ``host``."""
    return host.exists(endpoint.removeprefix("unix://"))


def require_cri_socket(host: Host, endpoint: str) -> None:
    """Raises:
        K8sSqlError: the socket of ``endpoint`` is not on ``host`` (no runtime installed or
            running there).
    """
    if not cri_socket_present(host, endpoint):
        raise K8sSqlError(
            f"no container runtime socket at {endpoint} (also looked for " + ", ".join(CRI_SOCKETS.values()) + ")",
            where=host.name,
            hint="run `k8s-sql init phase prereqs` to install and start the runtime, or set node.criSocket / "
                 "--cri-socket",
        )


def advertise_address(host: Host, cfg: Cluster) -> tuple[str, str]:
    """The API server's advertise address, and a note on how it was chosen.

    ``config.node.advertise_address`` wins; otherwise the source address of the default
    route, from ``ip -j route get 1.1.1.1`` (a route lookup: no packet is sent).

    Raises:
        K8sSqlError: the configured value is not an IP address, or there is no default route.
    """
    if cfg.node.advertise_address:
        try:
            ipaddress.ip_address(cfg.node.advertise_address)
        except ValueError:
            raise K8sSqlError(f"node.advertiseAddress {cfg.node.advertise_address!r} is not an IP address",
                              hint="use the node's IPv4 or IPv6 address, e.g. 192.168.56.10") from None
        return cfg.node.advertise_address, "from node.advertiseAddress"
    src = source_address(host, "1.1.1.1")
    if not src:
        raise K8sSqlError(
            "cannot find the node's address: there is no default route",
            where=host.name,
            hint="set node.advertiseAddress in the configuration or pass --apiserver-advertise-address",
        )
    return src, "source address of the default route"


def source_address(host: Host, destination: str) -> str | None:
    """The address ``host`` sends from to reach ``destination`` (an IP address), from
    ``ip -j route get`` (a route lookup: no packet is sent); ``None`` when there is no route."""
    res = host.run(["ip", "-j", "route", "get", destination], check=False)
    if not res.ok:
        return None
    try:
        routes = json.loads(res.stdout or "[]")
        return (routes[0].get("prefsrc") if routes else None) or None
    except (ValueError, AttributeError, IndexError):
        return None
