"""Fixtures for the VM tests: the cached Debian 12 image, the stand-in pkgs.k8s.io
repository on the host, and a booted VM reached over SSH on 127.0.0.1.

Nothing here skips: a missing host package, an image that does not build or a VM that does
not boot fails the test with the reason (they are opt-in: `-m vm`, see pyproject.toml).
The VM directory (console log, qemu command line, k8s-sql output) is kept under pytest's
basetemp for a look after a failure; timings go to ``timings.txt`` there and to the report.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import aptrepo  # noqa: E402
from vm import BootedVm, Image, Vm, VmError, accelerator, build_image, missing_host_packages  # noqa: E402

#: The address in the VM that qemu forwards to the host's repository server, and its port.
REPO_GUEST_IP = "10.0.2.100"
REPO_GUEST_PORT = 443
VM_CA_FILE = "/usr/local/share/ca-certificates/k8s-sql-vm-tests.crt"


def pytest_collection_finish(session):
    """Start test_fresh_vm.py's slow part (tests/vm/mainjob.py) now, in the background, when
    it is selected: the VM then runs beside the rest of the suite."""
    if session.config.option.collectonly or getattr(session.config, "k8s_sql_main_job", None):
        return
    if any(item.path.name == "test_fresh_vm.py" for item in session.items):
        from mainjob import MainJob

        workdir = session.config._tmp_path_factory.mktemp("main-job")  # pytest's tmp_path_factory
        session.config.k8s_sql_main_job = MainJob(workdir).start()


def pytest_sessionfinish(session):
    job = getattr(session.config, "k8s_sql_main_job", None)
    if job is not None:
        job.stop()


def pytest_configure(config):
    config.addinivalue_line("markers", "vm: boots a Debian 12 VM with qemu (select with -m vm, leave out with "
                            "-m 'not vm'); minutes with TCG, see tests/vm/test_fresh_vm.py")
    config.addinivalue_line("markers", "vm_slow: a VM test beyond CI's budget without KVM; opt-in (-m vm)")


class Timings:
    """Named durations in seconds, written to a file and printed at the end of the run."""

    def __init__(self, path: Path):
        self.path = path
        self.items: list[tuple[str, float]] = []

    def add(self, name: str, seconds: float) -> None:
        self.items.append((name, seconds))
        with open(self.path, "a") as f:
            f.write(f"{name}\t{seconds:.1f}\n")


@pytest.fixture(scope="session")
def vm_timings(tmp_path_factory, request) -> Timings:
    t = Timings(tmp_path_factory.getbasetemp() / "vm-timings.txt")
    yield t
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter and t.items:
        reporter.write_line("VM test timings: " + ", ".join(f"{n} {s:.0f} s" for n, s in t.items))


@pytest.fixture(scope="session")
def vm_image(tmp_path_factory, vm_timings) -> Image:
    """The Debian 12 image, built by tests/vm/build-image.sh unless cached."""
    missing = missing_host_packages()
    if missing:
        pytest.fail(f"the VM tests need the host packages {', '.join(missing)}: "
                    f"apt-get install --no-install-recommends {' '.join(missing)}", pytrace=False)
    try:
        image, seconds = build_image(tmp_path_factory.getbasetemp() / "build-image.log")
    except VmError as e:
        pytest.fail(str(e), pytrace=False)
    vm_timings.add("image (build or cache)", seconds)
    return image


@pytest.fixture(scope="module")
def kube_repo(tmp_path_factory) -> aptrepo.KubeRepo:
    """The stand-in pkgs.k8s.io repository for Kubernetes 1.34.2 (the default
    kubernetes.version), served over HTTPS on the host's loopback while the module runs."""
    out = tmp_path_factory.mktemp("kube-repo")
    repo = aptrepo.build_kube_repo(out, "1.34.2")
    repo.server = aptrepo.RepoServer(repo.root, repo.tls, out / "requests.log")
    yield repo
    repo.server.stop()


@pytest.fixture(scope="module")
def vm_drives() -> list[Path]:
    """Files to attach to the VM as read-only raw disks (/dev/vdb…); a module overrides it."""
    return []


@pytest.fixture(scope="module")
def booted_vm(vm_image, kube_repo, tmp_path_factory, vm_timings, vm_drives) -> BootedVm:
    """A fresh VM (copy-on-write overlay of the image) whose ``pkgs.k8s.io`` is the
    ``kube_repo`` server: an /etc/hosts entry to the forwarded address and the test CA in
    the trust store (taken up by update-ca-certificates now if ca-certificates is installed,
    else when prereqs installs it). Powered off at the end."""
    workdir = tmp_path_factory.mktemp("vm")
    vm = Vm(vm_image, workdir, guestfwd=[(REPO_GUEST_IP, REPO_GUEST_PORT, kube_repo.server.port)],
            drives=list(vm_drives))
    start = time.monotonic()
    try:
        accel_name, _ = accelerator(vm_image.kernel)
        vm_timings.add(f"accelerator probe ({accel_name})", time.monotonic() - start)
        vm.start()
    except VmError as e:
        pytest.fail(str(e), pytrace=False)
    vm_timings.add("boot to SSH", vm.boot_seconds)
    try:
        vm.ssh(f"echo '{REPO_GUEST_IP} {aptrepo.HOSTNAME}' >> /etc/hosts")
        vm.put(VM_CA_FILE, kube_repo.tls.ca_pem)
        vm.ssh("if command -v update-ca-certificates >/dev/null; then update-ca-certificates >/dev/null; fi")
        yield BootedVm(vm.ssh_port, vm.key, vm.known_hosts, vm)
    finally:
        start = time.monotonic()
        vm.stop()
        vm_timings.add("shutdown", time.monotonic() - start)
