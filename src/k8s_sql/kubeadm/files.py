"""Names of the datastore certificates in ``config.paths.pki_dir``.

They are made by the pki phase; the names come from :mod:`k8s_sql.pki.files`, so both
sides agree on one list.
"""

from __future__ import annotations

import posixpath

from k8s_sql.pki.files import (  # noqa: F401 - re-exported for the kubeadm modules
    APISERVER_CLIENT_CERT, APISERVER_CLIENT_KEY, CA_CERT, SHIM_PG_CLIENT_CERT, SHIM_PG_CLIENT_KEY, SHIM_SERVER_CERT,
    SHIM_SERVER_KEY)


def pki(pki_dir: str, name: str) -> str:
    """Absolute path of certificate file ``name`` in ``pki_dir``."""
    return posixpath.join(pki_dir, name)
