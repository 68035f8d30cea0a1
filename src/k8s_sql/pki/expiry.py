"""When the datastore certificates expire: the data of ``k8s-sql certs check-expiration``
and of the certificate rows of ``k8s-sql status``.

Certificates are read as kubeadm's ``certs check-expiration`` reads its own: a missing file
is reported as missing, an unparsable one as invalid, never as an error.
"""

from __future__ import annotations

import datetime as dt
import warnings

from cryptography import x509
from cryptography.utils import CryptographyDeprecationWarning

from k8s_sql.host import Host
from k8s_sql.pki import files

def load_certificate(pem: bytes) -> x509.Certificate:
    """The first certificate of PEM data ``pem``.

    CAs made by kubeadm before Kubernetes 1.28 (client-go's ``NewSelfSignedCACert``,
    kubernetes/kubernetes#117790) have serial number 0, which RFC 5280 forbids but asks
    readers to handle gracefully; cryptography reads them with a
    ``CryptographyDeprecationWarning``, an error under ``-W error``. It is silenced here:
    the serial number is not what is being checked.

    Raises:
        ValueError: ``pem`` is not a PEM certificate (or a future cryptography release
            refuses serial number 0).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        return x509.load_pem_x509_certificate(pem)


def inspect(host: Host, pki_dir: str, now: dt.datetime | None = None) -> list[dict]:
    """One dict per certificate of :data:`files.ALL_CERTS` (CA first): ``name``, ``path``,
    ``state`` (ok, missing, invalid), ``expires`` (ISO 8601 UTC or None),
    ``residual_seconds`` (int, negative when expired), ``authority`` (``ca`` or ``""``),
    ``externally_managed`` (the CA without its key here).

    Raises:
        CommandError: a file exists but cannot be read.
    """
    now = now or dt.datetime.now(dt.timezone.utc)
    ca_key_here = host.exists(files.path(pki_dir, files.CA_KEY))
    out = []
    for name in files.ALL_CERTS:
        path = files.path(pki_dir, name)
        row = {"name": name, "path": path, "state": "ok", "expires": None, "residual_seconds": None,
               "authority": "" if name == files.CA_CERT else "ca",
               "externally_managed": False}
        data = host.read_bytes(path)
        row["externally_managed"] = name == files.CA_CERT and data is not None and not ca_key_here
        if data is None:
            row["state"] = "missing"
        else:
            try:
                end = load_certificate(data).not_valid_after_utc
                row["expires"] = end.isoformat()
                row["residual_seconds"] = int((end - now).total_seconds())
            except ValueError:
                row["state"] = "invalid"
        out.append(row)
    return out


def problems(rows: list[dict], within: dt.timedelta, needed: frozenset[str] | set[str]) -> list[str]:
    """Why ``certs check-expiration`` fails, one phrase per certificate (``"shim-server.crt
    is missing"``, ``"ca.crt expires in 12 days"``), for :func:`inspect`'s ``rows``: a
    certificate of ``needed`` (file names) that is missing; any that is invalid, expired or
    expires within ``within`` (zero: only expired ones). Empty when all is well."""
    out = []
    for row in rows:
        name, state = row["name"], row["state"]
        if state == "missing":
            if name in needed:
                out.append(f"{name} is missing")
        elif state != "ok":
            out.append(f"{name} is {state}")
        elif row["residual_seconds"] <= 0:
            out.append(f"{name} has expired")
        elif row["residual_seconds"] < within.total_seconds():
            out.append(f"{name} expires in {row['residual_seconds'] // 86400} days")
    return out
