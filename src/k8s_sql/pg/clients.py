"""Which addresses besides loopback may log in as the shim's role: the further
control-plane nodes, each running its own shim against this node's PostgreSQL.

Two sources, merged: ``postgres.clientAddresses`` in the configuration, and the file
``paths.postgresClients`` on the node, which ``k8s-sql join --control-plane`` appends to
(so a later ``k8s-sql init`` with the original configuration keeps the joined nodes).
The file has one address or network per line; ``#`` starts a comment.
"""

from __future__ import annotations

from k8s_sql.config import Cluster, client_network
from k8s_sql.errors import ConfigError
from k8s_sql.host import Host


def parse(text: str, source: str) -> list[str]:
    """The networks (CIDR form, in file order) listed in ``text``.

    Raises:
        ConfigError: a line is neither an address nor a network, with ``source:line``.
    """
    out: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        item = line.split("#", 1)[0].strip()
        if not item:
            continue
        net = client_network(item)
        if net is None:
            raise ConfigError(f"{item!r} is not an IP address or network", where=f"{source}:{number}",
                              hint="one address (192.0.2.11) or network (10.0.0.0/24) per line; fix or remove it")
        out.append(net)
    return out


def add(text: str | None, address: str, comment: str) -> str | None:
    """``text`` (the file, ``None`` when missing) with ``address`` appended as
    ``ADDRESS  # comment``; ``None`` when the address is already listed."""
    net = client_network(address)
    if net is None:
        raise ValueError(f"not an IP address: {address!r}")
    if net in parse(text or "", "<clients>"):
        return None
    head = text or "# Written by `k8s-sql join --control-plane`: addresses whose shims may log in to PostgreSQL.\n"
    if not head.endswith("\n"):
        head += "\n"
    return head + f"{address}  # {comment}\n"


def networks(host: Host, cfg: Cluster) -> list[str]:
    """``postgres.clientAddresses`` plus the lines of ``paths.postgresClients`` on ``host``,
    in CIDR form, without repeats.

    Raises:
        ConfigError: a bad line in the file (see :func:`parse`).
    """
    nets = [client_network(a) for a in cfg.postgres.client_addresses]
    text = host.read_text(cfg.paths.postgres_clients)
    if text is not None:
        nets += parse(text, f"{host.name}:{cfg.paths.postgres_clients}")
    return list(dict.fromkeys(n for n in nets if n))
