"""The Vagrant provisioner's shell parts that run before k8s-sql does: apt on a fresh VM,
and the worker's wait for the control plane.

``wait-control-plane.sh`` runs for real against a real sshd on 127.0.0.1 (tests/sshd.py)
with real ssh and ssh-keyscan. The API server cannot run here, so ``kubectl`` in the SSH
session is a stand-in (a shell script first on the session's PATH) that answers ``get --raw
/readyz`` from a file, as kube-apiserver would while it starts (an error) and once it is ready (``ok``)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess

import pytest

from k8s_sql.phases.prereqs import APT_OPTIONS

VAGRANT_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "vagrant")
PROVISION = os.path.join(VAGRANT_DIR, "provision.sh")
WAIT = os.path.join(VAGRANT_DIR, "wait-control-plane.sh")


def test_provision_apt_waits_for_the_lock_and_never_prompts():
    """unattended-upgrades holds the dpkg lock on first boot; the kubelet conffile must not
    prompt: every apt-get in provision.sh uses the same options as k8s-sql's prereqs."""
    text = open(PROVISION).read()
    options = re.search(r'^APT_OPTIONS="([^"]*)"', text, re.M)
    assert options and tuple(shlex.split(options.group(1))) == APT_OPTIONS
    calls = [ln.strip() for ln in text.splitlines() if re.match(r"\s*apt-get\b", ln)]
    assert calls and all(c.startswith("apt-get $APT_OPTIONS ") for c in calls), calls


def test_worker_waits_with_the_wait_script():
    text = open(PROVISION).read()
    assert 'sh /vagrant/vagrant/wait-control-plane.sh "$cp_ip" "$KEY" "$KNOWN_HOSTS"' in text
    assert "test -f /etc/kubernetes/admin.conf" not in text
    assert subprocess.run(["sh", "-n", WAIT]).returncode == 0


@pytest.fixture
def sshd(tmp_path):
    import sys

    sys.path.insert(0, os.path.dirname(__file__))
    from sshd import Sshd

    bindir = tmp_path / "bin"
    bindir.mkdir()
    os.chmod(tmp_path, 0o755)
    answer = tmp_path / "readyz"
    kubectl = bindir / "kubectl"
    kubectl.write_text("#!/bin/sh\n"
                       f'echo "$@" >>{tmp_path}/kubectl.calls\n'
                       f'a=$(cat {answer}); [ "$a" = ok ] || {{ echo "$a" >&2; exit 1; }}; echo ok\n')
    kubectl.chmod(0o755)
    server = Sshd(path=f"{bindir}:/usr/bin:/bin").start()
    try:
        yield server, answer, tmp_path
    finally:
        server.stop()


def wait(server, tmp_path, tries: int) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", WAIT, "127.0.0.1", server.client_key, str(tmp_path / "known_hosts"), "root",
                           str(server.port), str(tries), "0"], capture_output=True, text=True, timeout=120)


def test_wait_needs_readyz_ok_not_only_admin_conf(sshd):
    """While the API server starts (admin.conf already written, /readyz refused) the worker
    keeps waiting and gives up after its bound; once /readyz says ok it goes on, trusting
    the host key it scanned."""
    server, answer, tmp_path = sshd
    answer.write_text("The connection to the server 192.168.56.10:6443 was refused")
    r = wait(server, tmp_path, tries=2)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "did not become ready (/readyz)" in r.stderr
    assert not (tmp_path / "known_hosts").exists() and not (tmp_path / "known_hosts.new").exists()
    calls = (tmp_path / "kubectl.calls").read_text().splitlines()
    assert len(calls) == 2 and all("get --raw /readyz" in c and "/root/.kube/config" in c for c in calls)

    answer.write_text("ok")
    r = wait(server, tmp_path, tries=2)
    assert r.returncode == 0, r.stdout + r.stderr
    host_key = open(server.known_hosts).read().split()[1:3]
    assert any(line.split()[1:3] == host_key for line in (tmp_path / "known_hosts").read_text().splitlines())


def test_vagrant_readme_points_etcdctl_at_files_k8s_sql_writes():
    """With an external etcd kubeadm writes no apiserver-etcd-client.*: the etcdctl line of
    vagrant/README.md must name the CA and kube-apiserver's client pair in paths.pkiDir."""
    from k8s_sql.config import Cluster
    from k8s_sql.pki import files

    text = open(os.path.join(VAGRANT_DIR, "README.md")).read()
    line = next(ln for ln in text.splitlines() if "etcdctl --endpoints" in ln)
    args = shlex.split(line.split("'", 1)[1].rsplit("'", 1)[0])
    pki = Cluster().paths.pki_dir
    got = {flag: args[args.index(flag) + 1] for flag in ("--cacert", "--cert", "--key")}
    assert got == {"--cacert": files.path(pki, files.CA_CERT), "--cert": files.path(pki, files.APISERVER_CLIENT_CERT),
                   "--key": files.path(pki, files.APISERVER_CLIENT_KEY)}
    assert "apiserver-etcd-client" not in line
