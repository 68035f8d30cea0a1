"""Making and checking the datastore certificates (``cryptography``'s x509 API).

Keys are ECDSA P-256: every party speaks it (PostgreSQL/OpenSSL, Go's crypto/tls in
kube-apiserver, gRPC's BoringSSL in the shim), keys and handshakes are small and fast, and
it is as strong as RSA 3072. Keys are written as unencrypted PKCS#8 PEM (file mode 0600).
Extensions follow RFC 5280 as kubeadm's certificates do: basicConstraints (critical),
keyUsage (critical), extendedKeyUsage serverAuth or clientAuth, subject and authority key
identifiers, subjectAltName on serving certificates.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from k8s_sql.config import Cluster
from k8s_sql.errors import K8sSqlError
from k8s_sql.pki import files
from k8s_sql.pki.expiry import load_certificate

CA_COMMON_NAME = "k8s-sql-datastore-ca"
#: A leaf is re-issued when it expires within this many days.
RENEW_BEFORE_DAYS = 30
#: Clock skew allowance: certificates are valid from this many seconds in the past.
BACKDATE_SECONDS = 300


@dataclass(frozen=True)
class LeafSpec:
    """What one leaf certificate must say: file name (``shim-server.crt``), CN, whether it
    serves (serverAuth + SANs) or is a client (clientAuth), its SANs (DNS names and IP
    addresses as strings), and the owner/group of its key file (``None`` = root)."""

    cert: str
    common_name: str
    server: bool
    dns_names: tuple[str, ...] = ()
    ip_addresses: tuple[str, ...] = ()
    key_owner: str | None = None
    key_group: str | None = None

    @property
    def key(self) -> str:
        return files.key_of(self.cert)


def serving_sans(cfg: Cluster, address: str | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(dns_names, ip_addresses)`` of the serving certificates: localhost, the node name,
    127.0.0.1, ::1 and the node's advertise address (when known)."""
    dns = tuple(dict.fromkeys(["localhost", cfg.node.name]))
    ips = ["127.0.0.1", "::1"]
    if address and address not in ips:
        ips.append(address)
    return dns, tuple(ips)


def leaf_specs(cfg: Cluster, address: str | None, postgres_owner: str | None) -> list[LeafSpec]:
    """The four leaf certificates for ``cfg`` (five with ``postgres.ha``); ``postgres_owner`` owns PostgreSQL's key
    (``postgres``, or ``None`` for root when that OS user does not exist)."""
    dns, ips = serving_sans(cfg, address)
    shim_uid = str(cfg.shim.run_as_user)
    return [
        LeafSpec(files.POSTGRES_SERVER_CERT, "k8s-sql-postgres", True, dns, ips, postgres_owner, postgres_owner),
        LeafSpec(files.SHIM_PG_CLIENT_CERT, cfg.postgres.role, False, key_owner=shim_uid, key_group=shim_uid),
        LeafSpec(files.SHIM_SERVER_CERT, "k8s-sql-shim", True, dns, ips, shim_uid, shim_uid),
        LeafSpec(files.APISERVER_CLIENT_CERT, "kube-apiserver-k8s-sql-client", False),
        *([ha_node_spec(postgres_owner)] if cfg.postgres.ha.enabled else []),
    ]


def ha_node_spec(postgres_owner: str | None) -> LeafSpec:
    """With ``postgres.ha.enabled``: the client certificate every pg_auto_failover process
    of the node presents (CN :data:`k8s_sql.pg.ha.NODE_CLIENT_CN`, key owned by postgres)."""
    from k8s_sql.pg import ha

    return LeafSpec(ha.NODE_CLIENT_CERT, ha.NODE_CLIENT_CN, False, key_owner=postgres_owner, key_group=postgres_owner)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def new_ca(days: int, now: dt.datetime | None = None) -> tuple[bytes, bytes]:
    """A self-signed CA valid for ``days`` days: ``(cert_pem, key_pem)``."""
    now = now or _now()
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_COMMON_NAME)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(seconds=BACKDATE_SECONDS))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def issue(spec: LeafSpec, ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, days: int,
          now: dt.datetime | None = None) -> tuple[bytes, bytes]:
    """A new key and a certificate for ``spec`` signed by the CA, valid ``days`` days (never
    past the CA's own end): ``(cert_pem, key_pem)``."""
    now = now or _now()
    key = ec.generate_private_key(ec.SECP256R1())
    end = min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    eku = ExtendedKeyUsageOID.SERVER_AUTH if spec.server else ExtendedKeyUsageOID.CLIENT_AUTH
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, spec.common_name)]))
               .issuer_name(ca_cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(seconds=BACKDATE_SECONDS)).not_valid_after(end)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                            crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False))
    if spec.server:
        names = [x509.DNSName(d) for d in spec.dns_names]
        names += [x509.IPAddress(ipaddress.ip_address(i)) for i in spec.ip_addresses]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def load_ca(cert_pem: bytes, key_pem: bytes, where: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Parse an existing CA pair and check it can still sign.

    Raises:
        K8sSqlError: a file does not parse, the key does not match, it is not a CA, or it
            expires within :data:`RENEW_BEFORE_DAYS` days. A CA is never replaced silently.
    """
    hint = ("restore ca.crt/ca.key from a backup; or move both away to make a new CA "
            "(every certificate is then re-issued and PostgreSQL and kube-apiserver must reload)")
    try:
        cert = load_certificate(cert_pem)  # a CA of kubeadm before 1.28 has serial number 0
    except ValueError:
        raise K8sSqlError(f"{files.CA_CERT} is not a PEM certificate", where=where, hint=hint) from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise K8sSqlError(f"{files.CA_KEY} is not an unencrypted PEM private key", where=where, hint=hint) from None
    if key.public_key().public_numbers() != cert.public_key().public_numbers():
        raise K8sSqlError(f"{files.CA_KEY} does not belong to {files.CA_CERT}", where=where, hint=hint)
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    except x509.ExtensionNotFound:
        bc = None
    if bc is None or not bc.ca:
        raise K8sSqlError(f"{files.CA_CERT} is not a CA certificate (basicConstraints CA:TRUE and a subject key "
                          "identifier are required)", where=where, hint=hint)
    left = cert.not_valid_after_utc - _now()
    if left < dt.timedelta(days=RENEW_BEFORE_DAYS):
        raise K8sSqlError(f"the datastore CA expires on {cert.not_valid_after_utc:%Y-%m-%d} "
                          f"({max(left.days, 0)} days left)", where=where, hint=hint)
    return cert, key


def renew_before(validity_days: int) -> dt.timedelta:
    """How long before its end a leaf is re-issued: 30 days, or a third of a shorter
    validity (else a 10-day certificate would be re-issued on every run)."""
    return dt.timedelta(days=min(RENEW_BEFORE_DAYS, validity_days / 3))


def leaf_problem(spec: LeafSpec, cert_pem: bytes | None, key_pem: bytes | None, ca_cert: x509.Certificate,
                 validity_days: int = 365, now: dt.datetime | None = None) -> str | None:
    """Why the existing leaf ``cert_pem``/``key_pem`` must be re-issued (``"missing"``,
    ``"not signed by the CA"``, ``"expires in 12 days"``, ``"SANs differ"`` …), or ``None``
    when it is still good for ``spec`` (``validity_days``: see :func:`renew_before`)."""
    now = now or _now()
    if cert_pem is None or key_pem is None:
        return "missing"
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        return "does not parse"
    if key.public_key().public_numbers() != cert.public_key().public_numbers():
        return "key does not match the certificate"
    try:
        if cert.issuer != ca_cert.subject:
            raise InvalidSignature
        cert.verify_directly_issued_by(ca_cert)
    except (InvalidSignature, ValueError, TypeError):
        return "not signed by the CA"
    if cert.not_valid_before_utc > now:
        return "not valid yet"
    left = cert.not_valid_after_utc - now
    if left < renew_before(validity_days):
        return f"expires in {max(left.days, 0)} days"
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if [a.value for a in cns] != [spec.common_name]:
        return f"CN is not {spec.common_name}"
    try:
        eku = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        eku = set()
    want = ExtendedKeyUsageOID.SERVER_AUTH if spec.server else ExtendedKeyUsageOID.CLIENT_AUTH
    if want not in eku:
        return "wrong extended key usage"
    if spec.server:
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            dns = set(san.get_values_for_type(x509.DNSName))
            ips = {str(i) for i in san.get_values_for_type(x509.IPAddress)}
        except x509.ExtensionNotFound:
            dns, ips = set(), set()
        if dns != set(spec.dns_names) or ips != {str(ipaddress.ip_address(i)) for i in spec.ip_addresses}:
            return "SANs differ from the configuration"
    return None
