"""File names of the datastore certificates in ``config.paths.pki_dir`` (fixed: the
kubeadm configuration, the sidecar patch, status and reset import them from here)."""

from __future__ import annotations

import posixpath

#: The datastore CA: signs every certificate below; PostgreSQL and the shim trust only it.
CA_CERT = "ca.crt"
CA_KEY = "ca.key"
#: PostgreSQL's serving certificate (ssl_cert_file / ssl_key_file); key owned by ``postgres``.
POSTGRES_SERVER_CERT = "postgres-server.crt"
POSTGRES_SERVER_KEY = "postgres-server.key"
#: The shim's client certificate for PostgreSQL (CN = ``postgres.role``); key owned by ``shim.runAsUser``.
SHIM_PG_CLIENT_CERT = "shim-postgres-client.crt"
SHIM_PG_CLIENT_KEY = "shim-postgres-client.key"
#: The shim's serving certificate for its etcd endpoint; key owned by ``shim.runAsUser``.
SHIM_SERVER_CERT = "shim-server.crt"
SHIM_SERVER_KEY = "shim-server.key"
#: kube-apiserver's client certificate for the shim (``--etcd-certfile``); key owned by root.
APISERVER_CLIENT_CERT = "apiserver-shim-client.crt"
APISERVER_CLIENT_KEY = "apiserver-shim-client.key"

#: Every certificate, CA first (the order ``certs check-expiration`` prints).
ALL_CERTS = (CA_CERT, POSTGRES_SERVER_CERT, SHIM_PG_CLIENT_CERT, SHIM_SERVER_CERT, APISERVER_CLIENT_CERT)


def path(pki_dir: str, name: str) -> str:
    """Absolute path of file ``name`` in ``pki_dir``."""
    return posixpath.join(pki_dir, name)


def key_of(cert_name: str) -> str:
    """``shim-server.crt`` -> ``shim-server.key``."""
    return cert_name[: -len(".crt")] + ".key"
