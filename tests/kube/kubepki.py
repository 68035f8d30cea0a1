"""The Kubernetes side of a kubeadm control plane's PKI, for tests: what ``kubeadm init phase
certs`` and ``kubeadm init phase kubeconfig`` write, made here with ``cryptography`` because
kubeadm is not built for the tests.

File names, subjects and usages follow kubeadm 1.20 (cmd/kubeadm/app/constants and
phases/certs): ``ca``, ``apiserver`` (serving; SANs kubernetes, kubernetes.default[.svc[.
cluster.local]], the node name, the first service IP and the advertise address),
``apiserver-kubelet-client`` (O=system:masters), ``front-proxy-ca``, ``front-proxy-client``,
``sa.key``/``sa.pub`` (RSA 2048), and the kubeconfigs ``admin.conf`` (CN=kubernetes-admin,
O=system:masters) and ``controller-manager.conf`` (CN=system:kube-controller-manager).
Keys are written 0600. Validity is one day.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: The first address of kubeadm's default service subnet (10.96.0.0/12): the ``kubernetes`` Service.
SERVICE_IP = "10.96.0.1"


@dataclass(frozen=True)
class KubePki:
    """Paths of the files written by :func:`make_kube_pki` (``dir`` stands for /etc/kubernetes/pki)."""

    dir: str
    admin_conf: str
    controller_manager_conf: str

    def path(self, name: str) -> str:
        """``dir/name``: a file kubeadm would put in /etc/kubernetes/pki."""
        return os.path.join(self.dir, name)


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org)] if org else []
    return x509.Name(attrs + [x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def _cert_pem(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write(path: Path, data: bytes, secret: bool = False) -> None:
    path.write_bytes(data)
    os.chmod(path, 0o600 if secret else 0o644)


class _Ca:
    def __init__(self, cn: str):
        self.key = _key()
        now = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)
        self.cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .add_extension(x509.KeyUsage(True, False, True, False, False, True, True, False, False),
                                    critical=True)
                     .sign(self.key, hashes.SHA256()))

    def issue(self, cn: str, org: str | None, usages, sans=()):
        key = _key()
        now = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)
        b = (x509.CertificateBuilder().subject_name(_name(cn, org)).issuer_name(self.cert.subject)
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True)
             .add_extension(x509.ExtendedKeyUsage(usages), critical=False))
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
        return b.sign(self.key, hashes.SHA256()), key


def kubeconfig(server: str, ca_pem: bytes, cert_pem: bytes, key_pem: bytes, user: str) -> str:
    """A kubeconfig (YAML text) with one cluster ``kubernetes``, one user and its context, as
    ``kubeadm init phase kubeconfig`` writes them (certificate data embedded)."""
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return (f"apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    certificate-authority-data: {b64(ca_pem)}\n"
            f"    server: {server}\n  name: kubernetes\ncontexts:\n- context:\n    cluster: kubernetes\n"
            f"    user: {user}\n  name: {user}@kubernetes\ncurrent-context: {user}@kubernetes\n"
            f"preferences: {{}}\nusers:\n- name: {user}\n  user:\n    client-certificate-data: {b64(cert_pem)}\n"
            f"    client-key-data: {b64(key_pem)}\n")


def make_kube_pki(directory: str | os.PathLike, server: str, node_name: str = "cp1",
                  advertise_address: str = "127.0.0.1") -> KubePki:
    """Write kubeadm's certificates, service-account keys and two kubeconfigs to ``directory``.

    Args:
        server: the API server URL the kubeconfigs point at (``https://127.0.0.1:<port>``).
        node_name, advertise_address: go into the apiserver certificate's SANs as kubeadm puts them.

    Returns:
        :class:`KubePki` with the directory and the kubeconfig paths.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    server_auth, client_auth = ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH

    ca = _Ca("kubernetes")
    _write(d / "ca.crt", _cert_pem(ca.cert))
    _write(d / "ca.key", _key_pem(ca.key), secret=True)
    sans = [x509.DNSName(n) for n in ("kubernetes", "kubernetes.default", "kubernetes.default.svc",
                                      "kubernetes.default.svc.cluster.local", node_name, "localhost")]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in sorted({SERVICE_IP, advertise_address, "127.0.0.1"})]
    for stem, cn, org, usages, alt in (("apiserver", "kube-apiserver", None, [server_auth], sans),
                                       ("apiserver-kubelet-client", "kube-apiserver-kubelet-client",
                                        "system:masters", [client_auth], ())):
        cert, key = ca.issue(cn, org, usages, alt)
        _write(d / f"{stem}.crt", _cert_pem(cert))
        _write(d / f"{stem}.key", _key_pem(key), secret=True)

    fp = _Ca("front-proxy-ca")
    _write(d / "front-proxy-ca.crt", _cert_pem(fp.cert))
    _write(d / "front-proxy-ca.key", _key_pem(fp.key), secret=True)
    cert, key = fp.issue("front-proxy-client", None, [client_auth])
    _write(d / "front-proxy-client.crt", _cert_pem(cert))
    _write(d / "front-proxy-client.key", _key_pem(key), secret=True)

    sa = _key()
    _write(d / "sa.key", _key_pem(sa), secret=True)
    _write(d / "sa.pub", sa.public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo))

    confs = {}
    for stem, cn, org in (("admin", "kubernetes-admin", "system:masters"),
                          ("controller-manager", "system:kube-controller-manager", None)):
        cert, key = ca.issue(cn, org, [client_auth])
        path = d / f"{stem}.conf"
        _write(path, kubeconfig(server, _cert_pem(ca.cert), _cert_pem(cert), _key_pem(key), cn).encode(),
               secret=True)
        confs[stem] = str(path)
    return KubePki(str(d), confs["admin"], confs["controller-manager"])
