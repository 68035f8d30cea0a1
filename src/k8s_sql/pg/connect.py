"""The connection the shim makes to PostgreSQL: TLS with ``sslmode=verify-full`` and a
client certificate, as libpq conninfo; and a probe that makes it from the node with psql
and reads ``pg_stat_ssl`` for the own backend."""

from __future__ import annotations

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from k8s_sql.config import Cluster
from k8s_sql.errors import K8sSqlError
from k8s_sql.host import Host
from k8s_sql.pki import files

#: sslmode values that do not authenticate the server (libpq "SSL Support" table).
WEAK_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca")


def local_conninfo(cfg: Cluster, connect_timeout: int = 10) -> str:
    """libpq conninfo of the shim's connection to the local server: ``postgres.host``
    (127.0.0.1) and port, the role and database, verify-full against the datastore CA
    with the shim's client certificate."""
    pki, pg = cfg.paths.pki_dir, cfg.postgres
    return make_conninfo(host=pg.host, port=str(pg.port), dbname=pg.database, user=pg.role,
                         sslmode="verify-full", sslrootcert=files.path(pki, files.CA_CERT),
                         sslcert=files.path(pki, files.SHIM_PG_CLIENT_CERT),
                         sslkey=files.path(pki, files.SHIM_PG_CLIENT_KEY), connect_timeout=str(connect_timeout))


def external_conninfo(uri: str) -> tuple[str, str | None]:
    """``postgres.uri`` as conninfo with ``sslmode=verify-full`` added when it has none;
    returns ``(conninfo, warning)``, the warning set when the URI asks for a weaker mode.

    Raises:
        K8sSqlError: the URI does not parse, or asks for sslmode disable/allow/prefer (no
            guaranteed TLS at all).
    """
    try:
        params = conninfo_to_dict(uri)
    except Exception as e:  # psycopg.ProgrammingError: libpq's parse message
        raise K8sSqlError(f"postgres.uri is not a libpq URI: {e}", hint="e.g. postgresql://db.example:5432/"
                          "kubernetes?sslmode=verify-full&sslrootcert=/etc/ssl/db-ca.crt") from None
    mode = params.get("sslmode")
    if mode is None:
        params["sslmode"] = "verify-full"
        return make_conninfo(**params), None
    if mode in ("disable", "allow", "prefer"):
        raise K8sSqlError(f"postgres.uri has sslmode={mode}: the cluster state would travel without guaranteed TLS",
                          hint="use sslmode=verify-full (or leave sslmode out)")
    if mode in WEAK_SSLMODES:
        return make_conninfo(**params), f"sslmode={mode} does not check the server's host name"
    return make_conninfo(**params), None


def tls_probe(host: Host, conninfo: str) -> dict[str, str]:
    """Connect with ``conninfo`` from ``host`` (psql as root) and return the own backend's
    ``pg_stat_ssl`` row: ``{"ssl": "t", "version": "TLSv1.3", "cipher": …, "bits": "256",
    "user": role}``.

    Raises:
        K8sSqlError: the connection fails (libpq's message) or is not TLS.
    """
    sql = ("SELECT s.ssl, s.version, s.cipher, s.bits, current_user FROM pg_stat_ssl s "
           "WHERE s.pid = pg_backend_pid()")
    res = host.run(["psql", "-X", "-A", "-t", "-q", "-d", conninfo, "-c", sql], check=False, timeout=60,
                   env={"PGCONNECT_TIMEOUT": "10"})
    params = conninfo_to_dict(conninfo)
    target = f"{params.get('host', '?')}:{params.get('port', '5432')}"
    if not res.ok:
        reason = " ".join((res.stderr or res.stdout).split())[:400]
        raise K8sSqlError(f"cannot connect to PostgreSQL at {target} with TLS ({reason})", where=host.name,
                          hint="check the server log; `k8s-sql init phase pki` then `k8s-sql init phase postgres` "
                          "re-creates certificates and configuration")
    fields = res.stdout.strip().split("|")
    info = dict(zip(("ssl", "version", "cipher", "bits", "user"), fields))
    if info.get("ssl") != "t":
        raise K8sSqlError(f"the connection to {target} is not encrypted", where=host.name,
                          hint="turn ssl on in the server")
    return info
