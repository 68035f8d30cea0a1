"""Fixtures for the shim: TLS files, a database per use, and a running ``k8s-sql shim serve``.

``shim`` is a real shim subprocess on a free loopback port with mTLS (server certificate,
--trusted-ca-file, --client-cert-auth) on a database of the session's throwaway PostgreSQL
(superuser over the Unix socket; the TLS path to PostgreSQL has its own test).
``shim_factory`` starts more (e.g. a second shim on the same database).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field

import grpc
import pytest

from etcd_server import EtcdServer, free_port, make_tls
from k8s_sql.shim.settings import DEFAULT_ETCD_VERSION, ShimSettings


@pytest.fixture(scope="session")
def shim_tls(tmp_path_factory):
    """A CA, the shim's server pair (SAN 127.0.0.1, localhost) and a client pair."""
    return make_tls(tmp_path_factory.mktemp("shim-pki"), client_cn="kube-apiserver-etcd-client")


@dataclass
class ShimProcess:
    """A ``k8s-sql shim serve`` subprocess. ``endpoint`` is the https:// client URL,
    ``address`` the host:port for gRPC channels."""

    datastore: str
    tls: object
    extra_args: list[str] = field(default_factory=list)
    port: int = 0
    metrics_port: int = 0
    proc: subprocess.Popen | None = None
    log: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.port = self.port or free_port()
        self.metrics_port = self.metrics_port or free_port()
        self.settings = ShimSettings(listen_client_urls=[self.endpoint], cert_file=self.tls.cert_file,
                                     key_file=self.tls.key_file, trusted_ca_file=self.tls.ca_file,
                                     client_cert_auth=True, datastore=self.datastore,
                                     metrics_addr=self.metrics_url)

    endpoint = property(lambda self: f"https://127.0.0.1:{self.port}")
    address = property(lambda self: f"127.0.0.1:{self.port}")
    metrics_url = property(lambda self: f"http://127.0.0.1:{self.metrics_port}")
    ca_file = property(lambda self: self.tls.ca_file)
    cert_file = property(lambda self: self.tls.client_cert_file)
    key_file = property(lambda self: self.tls.client_key_file)
    emulated_etcd_version = DEFAULT_ETCD_VERSION

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "k8s_sql", "shim", "serve", "--listen-client-urls", self.endpoint,
                "--cert-file", self.tls.cert_file, "--key-file", self.tls.key_file,
                "--trusted-ca-file", self.tls.ca_file, "--client-cert-auth", "--datastore", self.datastore,
                "--metrics-addr", self.metrics_url, "--log-level", "warning", *self.extra_args]

    def start(self, timeout: float = 30.0) -> "ShimProcess":
        self.proc = subprocess.Popen(self.argv(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        ready = threading.Event()

        def pump():
            for line in self.proc.stderr:
                self.log.append(line.rstrip("\n"))
                if "k8s-sql shim ready" in line:
                    ready.set()
        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not ready.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("shim did not start:\n" + "\n".join(self.log[-30:]))
        return self

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode if self.proc else None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def restart(self) -> "ShimProcess":
        self.stop()
        return self.start()

    def channel(self) -> grpc.Channel:
        """A synchronous gRPC channel with the client certificate."""
        return grpc.secure_channel(self.address, self.credentials())

    def aio_channel(self) -> grpc.aio.Channel:
        return grpc.aio.secure_channel(self.address, self.credentials())

    def credentials(self) -> grpc.ChannelCredentials:
        read = lambda p: open(p, "rb").read()  # noqa: E731
        return grpc.ssl_channel_credentials(read(self.ca_file), read(self.key_file), read(self.cert_file))


@pytest.fixture
def shim_db(pg):
    """A fresh, empty database on the session PostgreSQL; returns a superuser conninfo."""
    return pg.create_database(f"shim_{uuid.uuid4().hex[:10]}")


@pytest.fixture
def shim_factory(pg, shim_tls):
    """``start(datastore=None, extra_args=())`` → a running ShimProcess (a new database
    unless ``datastore`` is given); all are stopped at the end of the test."""
    started: list[ShimProcess] = []

    def start(datastore: str | None = None, extra_args=()) -> ShimProcess:
        ds = datastore or pg.create_database(f"shim_{uuid.uuid4().hex[:10]}")
        s = ShimProcess(ds, shim_tls, list(extra_args)).start()
        started.append(s)
        return s
    yield start
    for s in started:
        s.stop()


@pytest.fixture(scope="module")
def shim(pg, tmp_path_factory):
    """A running shim with mTLS on its own database, shared by a test module."""
    tls = make_tls(tmp_path_factory.mktemp("shim-pki"))
    s = ShimProcess(pg.create_database(f"shim_{uuid.uuid4().hex[:10]}"), tls).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    """etcd 3.4 on loopback (plaintext), one per test module: the oracle the shim is compared with."""
    server = EtcdServer(tmp_path_factory.mktemp("etcd-oracle")).start()
    yield server
    server.stop()


@pytest.fixture(params=["etcd", "shim"])
def channel(request, oracle, shim):
    """A channel to etcd or to the shim; a test using it runs on both."""
    ch = grpc.insecure_channel(oracle.endpoint.removeprefix("http://")) if request.param == "etcd" else shim.channel()
    yield ch
    ch.close()
