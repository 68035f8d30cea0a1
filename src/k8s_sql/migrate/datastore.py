"""Which PostgreSQL database ``migrate``, ``backup`` and ``restore`` work on."""

from __future__ import annotations

import psycopg

from k8s_sql.config import Cluster
from k8s_sql.errors import K8sSqlError
from k8s_sql.pg import connect


def datastore_conninfo(cfg: Cluster, datastore: str | None) -> str:
    """libpq conninfo of the datastore: ``--datastore`` when given (a password in it is
    refused: ``ps`` shows it), else the configuration's (``postgres.uri`` for an external
    server, else the local server with the shim's client certificate, verify-full).

    Raises:
        K8sSqlError: the URI does not parse, carries a password, or asks for no TLS.
    """
    if datastore:
        from psycopg.conninfo import conninfo_to_dict

        try:
            params = conninfo_to_dict(datastore)
        except Exception as e:  # noqa: BLE001 - psycopg.ProgrammingError with libpq's message
            raise K8sSqlError(f"--datastore is not a libpq URI: {e}",
                              hint="e.g. postgresql://k8s_sql@127.0.0.1/kubernetes?sslmode=verify-full&...") from None
        if params.get("password"):
            raise K8sSqlError("--datastore carries a password (ps shows it to every user)",
                              hint="use certificate authentication or a password file (PGPASSFILE, ~/.pgpass)")
        return datastore
    if cfg.postgres.mode == "external":
        conninfo, _ = connect.external_conninfo(cfg.postgres.uri)
        return conninfo
    return connect.local_conninfo(cfg)


def open_connection(conninfo: str) -> psycopg.Connection:
    """A connection to the datastore (10 s connect timeout).

    Raises:
        K8sSqlError: PostgreSQL cannot be reached or refuses the login (libpq's message).
    """
    try:
        return psycopg.connect(conninfo, connect_timeout=10)
    except psycopg.Error as e:
        raise K8sSqlError(f"cannot connect to the datastore: {' '.join(str(e).split())}",
                          hint="check --datastore (a libpq URI) or the configuration's postgres section") from None
