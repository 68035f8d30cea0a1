"""A real etcd 3.4 server for tests: the oracle the shim is compared against.

``EtcdServer(base_dir, tls=None).start()`` runs Debian's ``etcd`` binary with its own data
directory under ``base_dir`` on free loopback ports; ``.endpoint`` is the client URL
(``https://127.0.0.1:<port>`` with TLS, ``http://...`` without). With ``tls`` (a
:class:`TlsFiles`, e.g. from :func:`make_tls`) it serves like a kubeadm etcd: server
certificate, ``--trusted-ca-file`` and ``--client-cert-auth``. ``.etcdctl(*args)`` runs
``etcdctl`` (API v3) against it with the client certificate.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import grpc

from k8s_sql.shim.etcdpb import rpc_pb2, rpc_pb2_grpc
from procs import stop_process

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
ETCDCTL = shutil.which("etcdctl") or "/usr/bin/etcdctl"


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a test PKI: the CA, a server pair (SAN 127.0.0.1, localhost) and a
    client pair (CN ``client_cn``)."""

    ca_file: str
    cert_file: str
    key_file: str
    client_cert_file: str
    client_key_file: str


def make_tls(directory: str | os.PathLike, client_cn: str = "kube-apiserver-etcd-client") -> TlsFiles:
    """Write a throwaway CA, server and client certificate (EC P-256, 1 day) to ``directory``.

    Keys are written with mode 0600. Returns their paths.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)
    later = now + datetime.timedelta(days=1)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def save(stem: str, cert, key) -> tuple[str, str]:
        cpath, kpath = d / f"{stem}.crt", d / f"{stem}.key"
        cpath.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        kpath.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
        os.chmod(kpath, 0o600)
        return str(cpath), str(kpath)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("test-etcd-ca")).issuer_name(name("test-etcd-ca"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now).not_valid_after(later)
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    ca_file, _ = save("ca", ca, ca_key)

    def leaf(cn: str, usage, sans=None):
        key = ec.generate_private_key(ec.SECP256R1())
        b = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca.subject)
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now).not_valid_after(later)
             .add_extension(x509.ExtendedKeyUsage(usage), critical=False))
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return b.sign(ca_key, hashes.SHA256()), key

    sans = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    server, server_key = leaf("127.0.0.1", [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH], sans)
    cert_file, key_file = save("server", server, server_key)
    client, client_key = leaf(client_cn, [ExtendedKeyUsageOID.CLIENT_AUTH])
    client_cert_file, client_key_file = save("client", client, client_key)
    return TlsFiles(ca_file, cert_file, key_file, client_cert_file, client_key_file)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EtcdServer:
    """One etcd 3.4 member on loopback.

    Args:
        base_dir: scratch directory; the data dir (``base_dir/etcd``) and log go there.
        tls: serve the client port with TLS and require client certificates; ``None`` = plain HTTP.
        extra_args: more etcd flags (``--auto-compaction-retention=1``, ...).

    Attributes (after :meth:`start`): ``endpoint`` (client URL), ``client_port``,
    ``peer_port``, ``metrics_url`` (plain-HTTP ``--listen-metrics-urls``), ``name``.
    """

    def __init__(self, base_dir: str | os.PathLike, tls: TlsFiles | None = None, extra_args: list[str] | None = None):
        self.base_dir = Path(base_dir)
        self.tls = tls
        self.extra_args = list(extra_args or [])
        self.name = "oracle"
        self.proc: subprocess.Popen | None = None
        self.client_port = self.peer_port = self.metrics_port = 0
        self.endpoint = ""
        self.metrics_url = ""

    # Files an etcdctl client needs (same names as the shim fixture).
    @property
    def ca_file(self) -> str | None:
        return self.tls.ca_file if self.tls else None

    @property
    def cert_file(self) -> str | None:
        return self.tls.client_cert_file if self.tls else None

    @property
    def key_file(self) -> str | None:
        return self.tls.client_key_file if self.tls else None

    def start(self, timeout: float = 30.0) -> "EtcdServer":
        """Start etcd and wait until ``/health`` on the metrics port says true.

        Raises:
            RuntimeError: etcd exited or did not become healthy within ``timeout`` seconds
                (the message carries the end of its log).
        """
        self.base_dir.mkdir(parents=True, exist_ok=True)
        data_dir = self.base_dir / "etcd"
        self.client_port, self.peer_port, self.metrics_port = free_port(), free_port(), free_port()
        scheme = "https" if self.tls else "http"
        self.endpoint = f"{scheme}://127.0.0.1:{self.client_port}"
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        argv = [ETCD, "--name", self.name, "--data-dir", str(data_dir),
                "--listen-client-urls", self.endpoint, "--advertise-client-urls", self.endpoint,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"{self.name}={peer}", "--initial-cluster-state", "new",
                "--listen-metrics-urls", self.metrics_url, "--log-level", "warn", "--logger", "zap"]
        if self.tls:
            argv += ["--cert-file", self.tls.cert_file, "--key-file", self.tls.key_file,
                     "--trusted-ca-file", self.tls.ca_file, "--client-cert-auth"]
        argv += self.extra_args
        self.log_path = self.base_dir / "etcd.log"
        self._log = open(self.log_path, "wb")
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(self.metrics_url + "/health", timeout=2) as r:
                    if b'"true"' in r.read():
                        return self
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"etcd did not become healthy in {timeout}s: {self.log_tail()}")

    def log_tail(self, n: int = 2000) -> str:
        """The last ``n`` bytes of etcd's log, as text."""
        try:
            return self.log_path.read_bytes()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        """Terminate etcd (SIGTERM, then SIGKILL after 10 s); safe to call twice."""
        stop_process(self.proc)
        if getattr(self, "_log", None):
            self._log.close()

    def etcdctl_argv(self, *args: str) -> list[str]:
        """``etcdctl --endpoints ... [--cacert --cert --key] args`` for this server."""
        argv = [ETCDCTL, "--endpoints", self.endpoint, "--dial-timeout", "5s", "--command-timeout", "15s"]
        if self.tls:
            argv += ["--cacert", self.tls.ca_file, "--cert", self.tls.client_cert_file,
                     "--key", self.tls.client_key_file]
        return argv + list(args)

    def etcdctl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        """Run etcdctl (``ETCDCTL_API=3``) against this server; text output.

        Raises:
            subprocess.CalledProcessError: with ``check`` and a non-zero exit.
        """
        env = dict(os.environ, ETCDCTL_API="3")
        return subprocess.run(self.etcdctl_argv(*args), input=input, capture_output=True, text=True,
                              env=env, check=check, timeout=60)

    def __enter__(self) -> "EtcdServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def secure_channel(target):
    """An mTLS gRPC channel to ``target`` (an :class:`EtcdServer` with TLS, or a shim
    handle): anything with ``endpoint`` (``https://host:port``), ``ca_file``, ``cert_file``
    and ``key_file``."""

    def read(path):
        with open(path, "rb") as f:
            return f.read()

    creds = grpc.ssl_channel_credentials(read(target.ca_file), read(target.key_file), read(target.cert_file))
    return grpc.secure_channel(target.endpoint.removeprefix("https://"), creds)

class Both:
    """One etcd and one shim (``EtcdServer``s, TLS) that started empty and receive the same requests."""

    def __init__(self, etcd, shim):
        self.channels = {"etcd": secure_channel(etcd), "shim": secure_channel(shim)}

    def call(self, service: str, method: str, request):
        """Send ``request`` to both; return {name: response} (both must succeed)."""
        out = {}
        for name, ch in self.channels.items():
            stub = getattr(rpc_pb2_grpc, f"{service}Stub")(ch)
            out[name] = getattr(stub, method)(request, timeout=15)
        assert out["etcd"].header.revision == out["shim"].header.revision, (method, request)
        return out

    def put(self, key: bytes, value: bytes, lease: int = 0):
        return self.call("KV", "Put", rpc_pb2.PutRequest(key=key, value=value, lease=lease))

    def revision(self) -> int:
        return self.call("KV", "Range", rpc_pb2.RangeRequest(key=b"\0", range_end=b"\0", count_only=True))[
            "etcd"].header.revision

    def hashkv(self, revision: int) -> dict:
        """HashKV(revision) on both: {name: (hash, compact_revision, header revision) or (code, message)}."""
        out = {}
        for name, ch in self.channels.items():
            try:
                r = rpc_pb2_grpc.MaintenanceStub(ch).HashKV(rpc_pb2.HashKVRequest(revision=revision), timeout=15)
                out[name] = (r.hash, r.compact_revision, r.header.revision)
            except grpc.RpcError as e:
                out[name] = (e.code(), e.details())
        return out

    def assert_same_hashkv(self) -> dict[int, tuple]:
        """HashKV agrees at every revision from -1 to current + 1; returns etcd's answers."""
        answers = {}
        for rev in range(-1, self.revision() + 2):
            got = self.hashkv(rev)
            assert got["shim"] == got["etcd"], f"HashKV({rev}): shim {got['shim']} != etcd {got['etcd']}"
            answers[rev] = got["etcd"]
        return answers

    def close(self):
        for ch in self.channels.values():
            ch.close()
