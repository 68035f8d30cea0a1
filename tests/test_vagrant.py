"""The Vagrant playground: ``vagrant validate --ignore-provider`` and the machines it
defines, with Debian's vagrant package.

Why ``--ignore-provider``: CI machines (and this one) have no hypervisor, so neither
VirtualBox nor libvirt is installed, and without a usable provider Vagrant refuses both
``validate`` and ``status`` ("No usable default provider could be found for your
system"). ``--ignore-provider`` validates everything but the ``config.vm.provider`` blocks
and names each machine it validates (``==> cp: Ignoring provider config for
validation...``), which is how the machines are counted here. The provider blocks are
only exercised by ``vagrant up`` on a machine with VirtualBox or libvirt. No VM is started;
Vagrant's data directory is redirected to a temp dir so the checkout stays clean."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

VAGRANT_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "vagrant")

pytestmark = pytest.mark.skipif(shutil.which("vagrant") is None, reason="vagrant is not installed "
                                "(apt-get install vagrant)")


def vagrant(tmp_path, *args, **env) -> subprocess.CompletedProcess:
    full = {**os.environ, "VAGRANT_DOTFILE_PATH": str(tmp_path / "dot"), "VAGRANT_CHECKPOINT_DISABLE": "1",
            **env}
    return subprocess.run(["vagrant", *args], cwd=VAGRANT_DIR, env=full, capture_output=True, text=True,
                          timeout=120)


def validate(tmp_path, **env) -> subprocess.CompletedProcess:
    return vagrant(tmp_path, "validate", "--ignore-provider", **env)


@pytest.mark.parametrize("workers", ["0", "2"])
def test_vagrantfile_validates_and_defines_cp_and_workers(tmp_path, workers):
    r = validate(tmp_path, K8S_SQL_WORKERS=workers)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "validated successfully" in r.stdout
    machines = [line.split()[1].rstrip(":") for line in r.stdout.splitlines()
                if line.startswith("==> ") and "Ignoring provider config" in line]
    assert machines == ["cp"] + [f"worker{i}" for i in range(1, int(workers) + 1)]
    assert not os.path.exists(os.path.join(VAGRANT_DIR, ".playground")), "validate must not make keys"


def test_bad_worker_count_is_refused(tmp_path):
    r = validate(tmp_path, K8S_SQL_WORKERS="two")
    assert r.returncode != 0
    assert 'K8S_SQL_WORKERS must be a number from 0 to 20, got "two"' in r.stdout + r.stderr


def test_provisioner_is_valid_sh_and_checks_its_arguments():
    script = os.path.join(VAGRANT_DIR, "provision.sh")
    assert subprocess.run(["sh", "-n", script]).returncode == 0
    for args in ([], ["master", "192.168.56.10", "v1.34.2"], ["worker", "192.168.56.11", "v1.34.2"],
                 ["control-plane", "192.168.56.10", "v1.34.2", "two"]):
        r = subprocess.run(["sh", script, *args], capture_output=True, text=True)
        assert r.returncode == 2 and "usage: provision.sh" in r.stderr
