"""The ``conf.d/k8s-sql.conf`` include file that turns TLS on (PostgreSQL "ssl" settings).

PostgreSQL reads ``conf.d`` through ``include_dir = 'conf.d'`` in postgresql.conf (Debian's
default). k8s-sql never edits postgresql.conf: without that line the postgres phase stops
with a hint instead.
"""

from __future__ import annotations

import re

from k8s_sql.config import Cluster
from k8s_sql.pki import files

#: Name of k8s-sql's file in the cluster's ``conf.d`` directory.
CONF_D_FILE = "k8s-sql.conf"
_INCLUDE_DIR = re.compile(r"^\s*include_dir\s*=?\s*'(?:\./)?conf\.d/?'", re.M)
LOOPBACK = ("127.0.0.1", "::1")


def has_include_dir(postgresql_conf: str) -> bool:
    """Whether postgresql.conf has an active ``include_dir = 'conf.d'`` line."""
    return bool(_INCLUDE_DIR.search(postgresql_conf))


def listen_addresses_for(base: str, extra: list[str] | tuple[str, ...] = ()) -> str | None:
    """The ``listen_addresses`` k8s-sql must set so that the server also listens on
    127.0.0.1 and ::1 and on the ``extra`` addresses (the node's advertise address when
    other control-plane nodes connect), given the value from the other configuration
    files (``base``; PostgreSQL's default is ``localhost``); ``None`` when ``base``
    already covers them all (``*``, ``0.0.0.0`` for IPv4, ``::`` for IPv6)."""
    items = [a.strip() for a in base.split(",") if a.strip()]
    if "*" in items:
        return None
    wanted = ([] if "localhost" in items else list(LOOPBACK)) + list(extra)
    missing = [a for a in dict.fromkeys(wanted)
               if a not in items and not ("0.0.0.0" in items and ":" not in a) and not ("::" in items and ":" in a)]
    return ",".join(items + missing) if missing else None


def render_ssl_conf(cfg: Cluster, listen_addresses: str | None = None) -> str:
    """Content of ``conf.d/k8s-sql.conf``: ssl on with the pki phase's server certificate
    and key, clients verified against the datastore CA, TLS 1.2 at least; plus
    ``listen_addresses`` when given (see :func:`listen_addresses_for`). Pure function."""
    pki = cfg.paths.pki_dir
    lines = [
        "# Written by k8s-sql (postgres phase); `k8s-sql reset` removes it. Do not edit:",
        "# the next `k8s-sql init` rewrites it.",
        "ssl = on",
        f"ssl_cert_file = '{files.path(pki, files.POSTGRES_SERVER_CERT)}'",
        f"ssl_key_file = '{files.path(pki, files.POSTGRES_SERVER_KEY)}'",
        f"ssl_ca_file = '{files.path(pki, files.CA_CERT)}'",
        "ssl_min_protocol_version = 'TLSv1.2'",
    ]
    if listen_addresses:
        lines += ["# the shims connect over TLS to these addresses (changing this needs a restart)",
                  f"listen_addresses = '{listen_addresses}'"]
    return "\n".join(lines) + "\n"
