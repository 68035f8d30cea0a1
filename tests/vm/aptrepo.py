"""A stand-in for pkgs.k8s.io, served from the host to the VM: a flat apt repository of
stand-in ``kubeadm``, ``kubelet``, ``kubectl``, ``kubernetes-cni`` and ``cri-tools`` packages, signed with a
GnuPG key made here, over HTTPS with a certificate for ``pkgs.k8s.io`` from a CA made here.

Why this shape: the prereqs phase writes the real repository line
(``deb [signed-by=/etc/apt/keyrings/kubernetes-apt-keyring.gpg]
https://pkgs.k8s.io/core:/stable:/v1.<minor>/deb/ /``) and fetches ``Release.key`` with
``curl --proto =https``; k8s-sql has no setting for another repository. So the test leaves
all of that as it is and replaces only what is at the other end: in the VM, ``pkgs.k8s.io``
resolves (``/etc/hosts``) to an address that qemu forwards to this server on the host, and
the test's CA is added to the VM's trust store. Everything the phase does — curl, ``gpg
--dearmor``, ``signed-by``, ``apt-get update``, dpkg's conffile handling, ``apt-mark hold`` —
runs for real against it.

The packages have the names, versions, dependencies, conffiles and file layout of the
pkgs.k8s.io packages for Kubernetes 1.34 (kubernetes/release's krel templates: kubelet
depends on kubernetes-cni >= 1.2.0, mount and util-linux and ships ``/etc/default/kubelet``
as a conffile, kubelet.service and the kept directories; kubeadm ships the kubelet drop-in
``10-kubeadm.conf`` and has no dependencies since 1.32). Their programs are stand-ins: they
answer ``--version``/``version`` and fail for anything else, so nothing here runs a node.
"""

from __future__ import annotations

import datetime
import gzip
import hashlib
import http.server
import shutil
import ssl
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

HOSTNAME = "pkgs.k8s.io"
MAINTAINER = "Kubernetes Authors <dev@kubernetes.io>"

KUBELET_SERVICE = """\
[Unit]
Description=kubelet: The Kubernetes Node Agent
Documentation=https://kubernetes.io/docs/
Wants=network-online.target
After=network-online.target

[Service]
ExecStart=/usr/bin/kubelet
Restart=always
StartLimitInterval=0
RestartSec=10

[Install]
WantedBy=multi-user.target
"""

KUBEADM_DROPIN = """\
# Note: This dropin only works with kubeadm and kubelet v1.11+
[Service]
Environment="KUBELET_KUBECONFIG_ARGS=--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf --kubeconfig=/etc/kubernetes/kubelet.conf"
Environment="KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml"
EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env
EnvironmentFile=-/etc/default/kubelet
ExecStart=
ExecStart=/usr/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_KUBEADM_ARGS $KUBELET_EXTRA_ARGS
"""

#: /etc/default/kubelet as the package ships it (a conffile)
KUBELET_DEFAULTS = "KUBELET_EXTRA_ARGS=\n"

POSTINST_DAEMON_RELOAD = """\
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null || true
fi
"""


def stand_in(program: str, version: str) -> str:
    """The stand-in executable: prints the version, fails for anything else."""
    return f"""#!/bin/sh
# Stand-in for {program} {version}, from the k8s-sql VM tests' local apt repository:
# the real program cannot be had there. It only answers version queries.
case "$1 $2 $3" in
  "--version"*|"version"*) echo "Kubernetes {version}"; exit 0 ;;
esac
echo "{program}: stand-in of the k8s-sql VM tests, it does not run ($*)" >&2
exit 1
"""


@dataclass(frozen=True)
class Package:
    """One .deb: control fields, files (path -> (mode, content)), conffiles, postinst."""

    name: str
    version: str
    section: str
    description: str
    files: dict[str, tuple[int, str]]
    depends: str = ""
    recommends: str = ""
    conffiles: tuple[str, ...] = ()
    postinst: str = ""


def kube_packages(kube_version: str, cni_version: str = "1.7.1") -> list[Package]:
    """The stand-in packages for Kubernetes ``kube_version`` (``1.34.2``), revision ``-1.1``
    as on pkgs.k8s.io; cri-tools of the same minor (``1.34.0``), kubernetes-cni
    ``cni_version``."""
    v = f"{kube_version}-1.1"
    tag = f"v{kube_version}"
    cri_tools = ".".join(kube_version.split(".")[:2]) + ".0"
    return [
        Package("kubelet", v, "net", "Node agent for Kubernetes clusters",
                {"/usr/bin/kubelet": (0o755, stand_in("kubelet", tag)),
                 "/usr/lib/systemd/system/kubelet.service": (0o644, KUBELET_SERVICE),
                 "/var/lib/kubelet/.kubelet-keep": (0o644, ""),
                 "/etc/kubernetes/manifests/.kubelet-keep": (0o644, ""),
                 "/etc/default/kubelet": (0o644, KUBELET_DEFAULTS)},
                depends="kubernetes-cni (>= 1.2.0), mount, util-linux", recommends="iptables (>= 1.8.4)",
                conffiles=("/etc/default/kubelet",), postinst=POSTINST_DAEMON_RELOAD),
        Package("kubeadm", v, "admin", "Command-line utility for administering a Kubernetes cluster",
                {"/usr/bin/kubeadm": (0o755, stand_in("kubeadm", tag)),
                 "/usr/lib/systemd/system/kubelet.service.d/10-kubeadm.conf": (0o644, KUBEADM_DROPIN)},
                postinst=POSTINST_DAEMON_RELOAD),
        Package("kubectl", v, "utils", "Command-line utility for interacting with a Kubernetes cluster",
                {"/usr/bin/kubectl": (0o755, stand_in("kubectl", tag))}),
        Package("kubernetes-cni", f"{cni_version}-1.1", "net", "Binaries required to provision kubernetes "
                "container networking", {"/opt/cni/bin/.kubernetes-cni-keep": (0o644, ""),
                                         "/etc/cni/net.d/.kubernetes-cni-keep": (0o644, "")}),
        Package("cri-tools", f"{cri_tools}-1.1", "admin", "Command-line utility for interacting with a container "
                "runtime", {"/usr/bin/crictl": (0o755, stand_in("crictl", f"v{cri_tools}"))}),
    ]


def build_deb(pkg: Package, out_dir: Path) -> Path:
    """``dpkg-deb --build --root-owner-group`` of ``pkg`` into ``out_dir``; returns the file."""
    with tempfile.TemporaryDirectory(prefix=f"deb-{pkg.name}-") as tmp:
        root = Path(tmp)
        size = 0
        for path, (mode, content) in pkg.files.items():
            target = root / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)
            target.chmod(mode)
            size += len(content.encode())
        debian = root / "DEBIAN"
        debian.mkdir()
        fields = [f"Package: {pkg.name}", f"Version: {pkg.version}", "Architecture: amd64",
                  f"Maintainer: {MAINTAINER}", f"Installed-Size: {max(1, size // 1024)}"]
        if pkg.depends:
            fields.append(f"Depends: {pkg.depends}")
        if pkg.recommends:
            fields.append(f"Recommends: {pkg.recommends}")
        fields += [f"Section: {pkg.section}", "Priority: optional", "Homepage: https://kubernetes.io",
                   f"Description: {pkg.description}", " Stand-in package of the k8s-sql VM tests."]
        (debian / "control").write_text("\n".join(fields) + "\n")
        if pkg.conffiles:
            (debian / "conffiles").write_text("".join(f"{c}\n" for c in pkg.conffiles))
        if pkg.postinst:
            (debian / "postinst").write_text(pkg.postinst)
            (debian / "postinst").chmod(0o755)
        deb = out_dir / f"{pkg.name}_{pkg.version}_amd64.deb"
        subprocess.run(["dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(root), str(deb)],
                       check=True, capture_output=True)
    return deb


def _control(deb: Path) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb)], check=True, capture_output=True, text=True).stdout


def write_index(repo: Path, debs: list[Path]) -> Path:
    """``Packages``, ``Packages.gz`` and an unsigned ``Release`` of a flat repository in
    ``repo`` (debs referenced relative to it); returns the Release path."""
    stanzas = []
    for deb in sorted(debs):
        data = deb.read_bytes()
        stanzas.append(_control(deb).rstrip("\n") + "\n"
                       + f"Filename: ./{deb.name}\nSize: {len(data)}\n"
                       + f"MD5sum: {hashlib.md5(data).hexdigest()}\nSHA256: {hashlib.sha256(data).hexdigest()}\n")
    packages = "\n".join(stanzas).encode()
    (repo / "Packages").write_bytes(packages)
    (repo / "Packages.gz").write_bytes(gzip.compress(packages, mtime=0))
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%a, %d %b %Y %H:%M:%S UTC")
    lines = ["Origin: k8s-sql-tests", "Label: stand-in for pkgs.k8s.io", "Architectures: amd64", f"Date: {date}",
             "MD5Sum:"]
    files = {name: (repo / name).read_bytes() for name in ("Packages", "Packages.gz")}
    lines += [f" {hashlib.md5(d).hexdigest()} {len(d)} {n}" for n, d in files.items()]
    lines.append("SHA256:")
    lines += [f" {hashlib.sha256(d).hexdigest()} {len(d)} {n}" for n, d in files.items()]
    release = repo / "Release"
    release.write_text("\n".join(lines) + "\n")
    return release


class Signer:
    """A throwaway GnuPG home with one ed25519 signing key (no passphrase)."""

    def __init__(self):
        # short path: gpg-agent's socket lives in the home directory
        self.home = tempfile.mkdtemp(prefix="k8s-sql-gpg-", dir="/tmp")
        self._gpg("--quick-gen-key", "k8s-sql VM tests repository <tests@k8s-sql.invalid>", "ed25519", "sign", "never")

    def _gpg(self, *args: str) -> str:
        return subprocess.run(["gpg", "--homedir", self.home, "--batch", "--yes", "--passphrase", "",
                               "--pinentry-mode", "loopback", *args],
                              check=True, capture_output=True, text=True).stdout

    def public_key(self) -> str:
        """The armored public key (what pkgs.k8s.io serves as ``Release.key``)."""
        return self._gpg("--armor", "--export")

    def sign_release(self, release: Path) -> None:
        """``InRelease`` (clearsigned) and ``Release.gpg`` (detached) beside ``release``."""
        self._gpg("--clearsign", "--digest-algo", "SHA256", "-o", str(release.parent / "InRelease"), str(release))
        self._gpg("--armor", "--detach-sign", "--digest-algo", "SHA256", "-o", str(release.parent / "Release.gpg"),
                  str(release))

    def close(self) -> None:
        subprocess.run(["gpgconf", "--homedir", self.home, "--kill", "all"], capture_output=True)
        shutil.rmtree(self.home, ignore_errors=True)


@dataclass
class Tls:
    """A CA (PEM) and a server certificate + key (PEM files) for ``names``."""

    ca_pem: bytes
    cert_file: Path
    key_file: Path


def make_tls(out: Path, names: list[str]) -> Tls:
    """A fresh CA and a serving certificate for ``names`` signed by it (P-256, 2 days)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "k8s-sql VM tests CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_file, key_file = out / "server.crt", out / "server.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_file.chmod(0o600)
    return Tls(ca.public_bytes(serialization.Encoding.PEM), cert_file, key_file)


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, fmt, *args):  # into the server's log file, not the test output
        self.server.log.write(f"{self.address_string()} {fmt % args}\n")
        self.server.log.flush()

    def guess_type(self, path):
        # a registry's manifests (tests/vm/images.py registry_layout) are typed by the
        # Content-Type header, not by a file name
        if "/v2/" in str(path) and "/manifests/" in str(path):
            return "application/vnd.oci.image.manifest.v1+json"
        return super().guess_type(path)


class RepoServer:
    """The document tree ``root`` over HTTPS on ``127.0.0.1:port`` (a thread); requests are
    logged to ``log_file`` (what the VM fetched)."""

    def __init__(self, root: Path, tls: Tls, log_file: Path):
        handler = lambda *a, **kw: _Handler(*a, directory=str(root), **kw)  # noqa: E731
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(tls.cert_file, tls.key_file)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.httpd.log = open(log_file, "a")
        self.log_file = log_file
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def requests(self) -> list[str]:
        return self.log_file.read_text().splitlines()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.httpd.log.close()


@dataclass
class KubeRepo:
    """The built repository: ``root`` is the document root, ``path`` the URL path of the
    Kubernetes 1.<minor> repository below it, ``tls`` its certificate."""

    root: Path
    path: str
    tls: Tls
    packages: list[Package]


def build_kube_repo(out: Path, kube_version: str) -> KubeRepo:
    """Build the signed repository for ``kube_version`` (``1.34.2``) under ``out/www``,
    at the URL path pkgs.k8s.io uses (``/core:/stable:/v1.34/deb/``)."""
    minor = ".".join(kube_version.split(".")[:2])
    path = f"/core:/stable:/v{minor}/deb/"
    root = out / "www"
    repo = root / path.strip("/")
    repo.mkdir(parents=True, exist_ok=True)
    packages = kube_packages(kube_version)
    debs = [build_deb(p, repo) for p in packages]
    release = write_index(repo, debs)
    signer = Signer()
    try:
        signer.sign_release(release)
        (repo / "Release.key").write_text(signer.public_key())
    finally:
        signer.close()
    tls = make_tls(out, [HOSTNAME])
    return KubeRepo(root, path, tls, packages)

