"""Names of the datastore certificates in ``config.paths.pki_dir``.

They are made by the pki phase; taken from :mod:`k8s_sql.pki.files` when that module
exists, so both sides agree on one list.
"""

from __future__ import annotations

import posixpath

try:  # the pki phase's own list, when present
    from k8s_sql.pki.files import (  # type: ignore[import-not-found]
        APISERVER_CLIENT_CERT, APISERVER_CLIENT_KEY, CA_CERT, SHIM_PG_CLIENT_CERT, SHIM_PG_CLIENT_KEY,
        SHIM_SERVER_CERT, SHIM_SERVER_KEY)
except ImportError:
    #: The datastore CA (signs PostgreSQL's, the shim's and their clients' certificates).
    CA_CERT = "ca.crt"
    #: The shim's client certificate for PostgreSQL (CN = the PostgreSQL role).
    SHIM_PG_CLIENT_CERT = "shim-postgres-client.crt"
    SHIM_PG_CLIENT_KEY = "shim-postgres-client.key"
    #: The shim's serving certificate for its etcd endpoint.
    SHIM_SERVER_CERT = "shim-server.crt"
    SHIM_SERVER_KEY = "shim-server.key"
    #: kube-apiserver's client certificate for the shim.
    APISERVER_CLIENT_CERT = "apiserver-shim-client.crt"
    APISERVER_CLIENT_KEY = "apiserver-shim-client.key"


def pki(pki_dir: str, name: str) -> str:
    """Absolute path of certificate file ``name`` in ``pki_dir``."""
    return posixpath.join(pki_dir, name)
