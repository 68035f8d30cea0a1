"""Fixtures for a real kube-apiserver v1.20.2 on the k8s-sql shim (and on etcd 3.4, the reference).

``kube_bin`` builds the binaries when their cache is empty (tests/kube/build-kubernetes.sh):
on a cold CI machine this fixture is where the build happens, and a failed build fails the
tests with the end of the build log — never a skip.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from kube import (ADVERTISE_ADDRESS, BuildError, ControllerManager, EtcdDatastore,  # noqa: E402
                  KubeApiserver, Kubectl, ShimDatastore, ensure_binaries, free_port)
from kubepki import KubePki, make_kube_pki  # noqa: E402


@pytest.fixture(scope="session")
def kube_bin(tmp_path_factory) -> Path:
    """Directory with kube-apiserver, kube-controller-manager and kubectl v1.20.2 (built if needed)."""
    try:
        return ensure_binaries(tmp_path_factory.getbasetemp() / "build-kubernetes.log")
    except BuildError as e:
        failure = str(e)
    pytest.fail(failure, pytrace=False)


@dataclass
class KubeCluster:
    """A datastore, kubeadm's PKI, a running kube-apiserver on the datastore and kubectl as admin."""

    bin: Path
    base: Path
    datastore: ShimDatastore | EtcdDatastore
    pki: KubePki
    port: int
    apiserver: KubeApiserver | None = None
    kubectl: Kubectl | None = None
    starts: int = field(default=0)

    def start_apiserver(self, extra: dict[str, str] | None = None) -> KubeApiserver:
        """Start kube-apiserver (a log file per start) and wait for /readyz."""
        self.starts += 1
        self.apiserver = KubeApiserver(self.bin / "kube-apiserver", self.pki, self.datastore, self.port,
                                       self.base / f"kube-apiserver.{self.starts}.log", extra)
        return self.apiserver.start()

    def restart_apiserver(self, extra: dict[str, str] | None = None) -> KubeApiserver:
        self.apiserver.stop()
        return self.start_apiserver(extra)

    def controller_manager(self) -> ControllerManager:
        return ControllerManager(self.bin / "kube-controller-manager", self.pki,
                                 self.base / "kube-controller-manager.log")

    def logs(self) -> str:
        """The ends of kube-apiserver's and the datastore's logs, for failure messages."""
        return (f"--- kube-apiserver ---\n{self.apiserver.log_tail() if self.apiserver else ''}\n"
                f"--- {self.datastore.kind} ---\n{self.datastore.log_tail()}")

    def stop(self) -> None:
        if self.apiserver:
            self.apiserver.stop()
        self.datastore.stop()


@pytest.fixture(scope="module", params=["shim", "etcd"])
def cluster(request, kube_bin) -> KubeCluster:
    """kube-apiserver with kubeadm's flags on the k8s-sql shim (``shim``) or on etcd 3.4
    (``etcd``, the reference: the same assertions must hold there)."""
    # not under pytest's basetemp: a concurrent pytest run on the machine may prune it while etcd
    # and kube-apiserver still use their files
    base = Path(tempfile.mkdtemp(prefix=f"k8s-sql-kube-{request.param}-"))
    datastore = ShimDatastore() if request.param == "shim" else EtcdDatastore(base / "etcd")
    port = free_port()
    c = KubeCluster(kube_bin, base, datastore, KubePki(str(base / "pki"), "", ""), port)
    try:
        datastore.start()
        c.pki = make_kube_pki(base / "pki", f"https://127.0.0.1:{port}", advertise_address=ADVERTISE_ADDRESS)
        c.kubectl = Kubectl(kube_bin / "kubectl", c.pki.admin_conf, base / "kubectl-cache")
        c.start_apiserver()
        yield c
    finally:
        c.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test that used ``cluster`` gets the ends of kube-apiserver's and the datastore's logs."""
    outcome = yield
    report = outcome.get_result()
    c = getattr(item, "funcargs", {}).get("cluster")
    if report.failed and isinstance(c, KubeCluster):
        report.sections.append(("kube-apiserver and datastore logs", c.logs()))
