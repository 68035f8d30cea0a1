"""What ``k8s-sql shim serve`` refuses or warns about before it serves, so that it is not
unsafe by accident.

Refused (:func:`check`, exit 1, before PostgreSQL is contacted):

- a password in ``--datastore``: a command line is visible to every local user (``ps``),
  and the sidecar's to anyone who may read the kube-apiserver pod; libpq reads passwords
  from a password file (``PGPASSFILE``, ``~/.pgpass``) instead, and k8s-sql's own shims
  log in with client certificates. The password is never echoed;
- TLS files that cannot work: unreadable, not PEM, an encrypted key, or a key that does not
  belong to the certificate (gRPC would only say that it cannot listen).

Warned about (:func:`start_warnings`, logged at start):

- a plaintext listener (``http://``) on an address other than loopback, as etcd warns
  ("serving client traffic insecurely; this is strongly discouraged!"): anyone who reaches
  it reads and writes every key. Loopback and Unix sockets are the local tests' business;
- a TLS listener on such an address without ``--client-cert-auth``: encrypted, but open to
  anyone who reaches it;
- a server certificate that has expired or is not valid yet;
- ``PGPASSWORD`` in the environment (libpq's documentation advises a password file).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import warnings as pywarnings
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.utils import CryptographyDeprecationWarning

from k8s_sql.errors import K8sSqlError
from k8s_sql.pki.expiry import load_certificate

if TYPE_CHECKING:
    from k8s_sql.shim.settings import ShimSettings

_PASSWORD_HINT = ("remove the password: log in with a client certificate (sslcert=, sslkey= with "
                  "sslmode=verify-full, as k8s-sql's sidecar does) or put it in a password file "
                  "(PGPASSFILE=/path/to/pgpass, mode 0600, or ~/.pgpass), which libpq reads")


def _loopback(url: str) -> bool:
    """Whether client URL ``url`` listens only on this host (loopback address, ``localhost``,
    a Unix socket)."""
    scheme, _, _ = url.partition("://")
    if scheme in ("unix", "unixs"):
        return True
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name, or empty (every interface)


def has_password(datastore: str) -> bool:
    """Whether libpq conninfo or URI ``datastore`` carries a (non-empty) password.

    Raises:
        K8sSqlError: libpq cannot parse it (the text is not shown: it may hold a password).
    """
    if not datastore:
        return False
    from psycopg import conninfo

    try:
        params = conninfo.conninfo_to_dict(datastore)
    except Exception:  # psycopg.ProgrammingError, with the text in its message
        raise K8sSqlError("--datastore is not a libpq connection string or URI", where="--datastore",
                          hint="use postgresql://ROLE@HOST:PORT/DB?sslmode=verify-full&... or "
                               "'host=HOST dbname=DB ...'") from None
    return bool(params.get("password"))


def read_file(path: str, flag: str) -> bytes:
    """The bytes of ``path``, given by ``flag`` (``--cert-file``…).

    Raises:
        K8sSqlError: it cannot be read (the reason, the flag, what to check).
    """
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise K8sSqlError(f"cannot read {path}: {e.strerror}", where=flag,
                          hint="check the path, and that the shim's user may read the file") from None


def _tls_files(s: ShimSettings) -> x509.Certificate | None:
    """Check --cert-file, --key-file and --trusted-ca-file; returns the server certificate
    (``None`` when no listener uses TLS)."""
    if not any(u.startswith(("https://", "unixs://")) for u in s.listen_client_urls):
        return None
    if not (s.cert_file and s.key_file):
        return None  # settings.validate says what is missing
    cert_pem = read_file(s.cert_file, "--cert-file")
    key_pem = read_file(s.key_file, "--key-file")
    try:
        cert = load_certificate(cert_pem)
    except ValueError:
        raise K8sSqlError(f"{s.cert_file} is not a PEM certificate", where="--cert-file",
                          hint="pass the server certificate (-----BEGIN CERTIFICATE-----)") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise K8sSqlError(f"{s.key_file} is encrypted: the shim cannot ask for its passphrase", where="--key-file",
                          hint="pass an unencrypted key (mode 0600), e.g. `openssl pkey -in KEY -out KEY.plain`") \
            from None
    except ValueError:
        raise K8sSqlError(f"{s.key_file} is not a PEM private key", where="--key-file",
                          hint="pass the server certificate's key (-----BEGIN PRIVATE KEY-----)") from None
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != cert.public_key().public_bytes(*spki):
        raise K8sSqlError(f"the key {s.key_file} does not belong to the certificate {s.cert_file}",
                          where="--key-file", hint="pass the key the certificate was issued for (or the "
                          "certificate of this key); `openssl x509 -noout -pubkey -in CERT` and "
                          "`openssl pkey -pubout -in KEY` must print the same")
    if s.trusted_ca_file:
        ca_pem = read_file(s.trusted_ca_file, "--trusted-ca-file")
        try:
            with pywarnings.catch_warnings():
                pywarnings.simplefilter("ignore", CryptographyDeprecationWarning)
                x509.load_pem_x509_certificates(ca_pem)
        except ValueError:
            raise K8sSqlError(f"{s.trusted_ca_file} is not a PEM certificate bundle", where="--trusted-ca-file",
                              hint="pass the CA certificate(s) that sign client certificates") from None
    return cert


def check(s: ShimSettings) -> None:
    """Refuse what is unsafe or cannot work (see the module doc); run before PostgreSQL is
    contacted.

    Raises:
        K8sSqlError: a password in --datastore; a TLS file unreadable, not PEM, encrypted,
            or a key that does not belong to the certificate.
    """
    if has_password(s.datastore):
        raise K8sSqlError("--datastore carries a password, which every local user can read in the shim's command "
                          "line (and anyone who may read its pod); it is refused", where="--datastore",
                          hint=_PASSWORD_HINT)
    _tls_files(s)


def start_warnings(s: ShimSettings, environ: dict[str, str] | None = None,
             now: dt.datetime | None = None) -> list[str]:
    """The warnings to log at start for settings ``s`` (see the module doc), one sentence
    each; ``environ`` defaults to the process environment. Reads the server certificate
    again; a problem with it is :func:`check`'s to report, not a warning."""
    environ = os.environ if environ is None else environ
    out = []
    for url in s.listen_client_urls:
        if _loopback(url):
            continue
        if url.startswith("http://"):
            out.append(f"serving client traffic insecurely on {url}: anyone who reaches it reads and writes every "
                       "key; this is strongly discouraged (use https:// with --client-cert-auth, or a loopback "
                       "address)")
        elif not s.client_cert_auth:
            out.append(f"serving {url} without --client-cert-auth: anyone who reaches it reads and writes every "
                       "key (pass --client-cert-auth and --trusted-ca-file)")
    try:
        cert = _tls_files(s)
    except K8sSqlError:
        cert = None
    now = now or dt.datetime.now(dt.timezone.utc)
    if cert is not None and cert.not_valid_after_utc <= now:
        out.append(f"the server certificate {s.cert_file} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC: "
                   "clients will refuse it")
    elif cert is not None and cert.not_valid_before_utc > now:
        out.append(f"the server certificate {s.cert_file} is not valid before "
                   f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC: clients will refuse it until then")
    if environ.get("PGPASSWORD"):
        out.append("PGPASSWORD is set: other users may see a process's environment on some systems; libpq "
                   "reads a password file instead (PGPASSFILE or ~/.pgpass, mode 0600)")
    return out
