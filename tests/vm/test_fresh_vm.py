"""The main job on a fresh Debian 12 VM, for real: README's first command, verbatim, as root
in the checkout; then ``k8s-sql init`` again and ``k8s-sql reset`` from the host over SSH
(``--host root@127.0.0.1 --ssh-port N``).

Why a VM: every phase is tested elsewhere, but against this machine, where apt, dpkg,
systemd and PostgreSQL are already set up or replaced. Here a plain Debian 12 (debootstrap
of Debian's packages with systemd and sshd, tests/vm/build-image.sh, booted by qemu: KVM
when the host runs a stock kernel on it, else TCG) runs what a user runs:
``apt-get install python3-venv``, a venv, ``pip install .``, ``k8s-sql init`` with the
defaults (CRI-O), every phase.

Real: apt-get and dpkg from Debian's mirror (``DEBIAN_FRONTEND`` unset and no terminal, as
over SSH), systemd units, modprobe and sysctl, curl/gpg/signed-by for the Kubernetes and
CRI-O repositories, Debian's PostgreSQL 15 with TLS and the certificate-only role, podman
with netavark building the shim image from shim/Containerfile and this checkout's wheel
(its ``pip install`` fetches the shim's dependencies from PyPI), CRI-O's ``pinned_images``
drop-in, the kubelet package's ``/etc/default/kubelet`` conffile.

Stand-ins, at the edge (tests/vm/standins.py), served from the host under their real names
(``/etc/hosts`` in the VM and the test's CA):
- pkgs.k8s.io and CRI-O's repository: signed apt repositories of packages with the real
  names, versions, dependencies and conffiles; ``kubeadm`` writes the kube-apiserver
  manifest with k8s-sql's patch merged (k8s-sql's strategic merge, not kubeadm's), a CA
  and admin.conf, and undoes them at ``reset``; ``kubectl`` answers ``/readyz`` and reports
  the node Ready without an API server; ``crio`` is a service that runs no container;
- docker.io: a registry of static files serving the Python base image
  (``python:3.11-slim-bookworm``) made from a debootstrap root (tests/vm/images.py);
- PyPI, for README's ``pip install .`` only: a wheelhouse (``pip wheel`` of this checkout)
  with ``no-index`` in the VM's /etc/pip.conf.
Not covered: a real kubeadm, kubelet, kube-apiserver or CRI-O (tests/vm/test_vm_kubelet.py
runs the static pod under a real kubelet on containerd; opt-in).

Marked ``vm``: about 20 minutes of emulated CPU (TCG), which mainjob.py starts in the
background, at the lowest priority, as soon as pytest has collected the suite; timings at the
end of the run. It is not skipped without KVM, and a missing host package fails it with the
apt-get command to run.
"""

from __future__ import annotations

import json

import pytest

import standins
from checks import ALL_PHASES, Cli, diff, ok, phase_blocks, snapshot
from mainjob import PYTHON_REPOSITORY, PYTHON_TAG, MainJob
from vm import VmError

from k8s_sql import __version__
from k8s_sql.config import Cluster
from k8s_sql.kubeadm import sidecar
from k8s_sql.paths import is_system_path
from k8s_sql.pki import files

pytestmark = [pytest.mark.vm, pytest.mark.timeout(7200)]

PKI_DIR = "/etc/kubernetes/pki/k8s-sql"
BACKUP_DIR = "/var/lib/k8s-sql/backup"
#: kubeadm's directory: the pki phase creates it as the parent of PKI_DIR; reset never
#: removes it (k8s_sql.paths.is_system_path), so it stays, empty.
KUBEADM_PKI = "/etc/kubernetes/pki"


@pytest.fixture(scope="module")
def job(request, tmp_path_factory, vm_timings):
    """The fresh VM after README's first command (tests/vm/mainjob.py), started by
    conftest.py once the tests were collected, or now when it was not."""
    job = getattr(request.config, "k8s_sql_main_job", None)
    if job is None:
        job = request.config.k8s_sql_main_job = MainJob(tmp_path_factory.mktemp("main-job")).start()
    try:
        result = job.result()
    except VmError as e:
        pytest.fail(str(e), pytrace=False)
    finally:
        for name, seconds in job.timings:
            vm_timings.add(name, seconds)
    yield result
    job.stop()


@pytest.fixture(scope="module")
def readme(job):
    return {"res": job.res, "before": job.before, "after": job.after, "created": job.created}


@pytest.fixture(scope="module")
def fresh_vm(job):
    return job.booted


@pytest.fixture(scope="module")
def edge(job):
    job.server.python_layer = job.python_layer
    return job.server


@pytest.fixture(scope="module")
def cli(fresh_vm):
    return Cli(fresh_vm, fresh_vm.vm.workdir)


def test_readme_first_command_builds_the_control_plane(readme, fresh_vm, edge):
    """README's first command on a fresh VM exits 0 after every phase; kubeadm init ran
    once with k8s-sql's configuration; root's kubeconfig reaches /readyz; kubeadm,
    kubelet and kubectl are held; /etc/default/kubelet is the package's (no conffile
    prompt); nothing is half-configured."""
    vm = fresh_vm.vm
    assert standins.readme_first_command() == (
        "apt-get update && apt-get install -y python3-venv && python3 -m venv /opt/k8s-sql && "
        "/opt/k8s-sql/bin/pip install . && /opt/k8s-sql/bin/k8s-sql init")
    res = readme["res"]
    out = ok(res, "README's first command")
    blocks = phase_blocks(out)
    assert list(blocks) == list(ALL_PHASES), out[-3000:]
    inits = [c[:3] for c in standins.kubeadm_calls(vm) if c[:1] == ["init"]]
    assert inits == [["init", "--config", "/etc/k8s-sql/kubeadm.yaml"]], inits
    assert vm.ssh("kubectl --kubeconfig /root/.kube/config get --raw /readyz").stdout.strip() == "ok"
    status = vm.ssh("dpkg-query -W -f '${Package} ${db:Status-Abbrev}\\n' kubeadm kubelet kubectl cri-o podman "
                    "postgresql-15").stdout
    got = dict(line.split()[:2] for line in status.splitlines())
    assert got == {"kubeadm": "hi", "kubelet": "hi", "kubectl": "hi", "cri-o": "ii", "podman": "ii",
                   "postgresql-15": "ii"}, status
    assert vm.ssh("dpkg --audit").stdout == ""
    assert vm.ssh("cat /etc/default/kubelet").stdout == "KUBELET_EXTRA_ARGS=\n"
    assert vm.ssh("systemctl is-active crio postgresql@15-main", check=False).stdout.split() == ["active", "active"]
    fetched = "\n".join(edge.requests())
    assert "kubelet_1.34.2-1.1_amd64.deb" in fetched and "cri-o_" in fetched


def test_shim_image_built_on_the_node_and_pinned(readme, fresh_vm, edge):
    """The shim phase built ``localhost/k8s-sql-shim:<version>`` with podman on the Python
    base image it pulled (its first layer is the base's), as uid 65532, without the
    installer's own dependencies; CRI-O's drop-in pins it; the kube-apiserver manifest
    kubeadm wrote runs it as the sidecar."""
    vm = fresh_vm.vm
    ok(readme["res"], "README's first command")
    ref = Cluster().shim_image
    assert ref == f"localhost/k8s-sql-shim:{__version__}"
    image = json.loads(vm.ssh(f"podman image inspect {ref}").stdout)[0]
    assert image["RootFS"]["Layers"][0] == edge.python_layer, image["RootFS"]
    assert image["Config"]["User"] == "65532:65532"
    fetched = "\n".join(edge.requests())
    assert f"/v2/{PYTHON_REPOSITORY}/manifests/{PYTHON_TAG}" in fetched
    probe = ("import importlib.util as u; print([m for m in ('grpc', 'psycopg', 'kubernetes_validate', 'fabric') "
             "if u.find_spec(m)])")
    mods = vm.ssh(f"podman run --rm --network none --entrypoint /opt/k8s-sql/bin/python3 {ref} -c \"{probe}\"",
                  timeout=900).stdout.strip()
    assert mods == "['grpc', 'psycopg']", mods
    assert f'pinned_images = ["{ref}"]' in vm.ssh("cat /etc/crio/crio.conf.d/10-k8s-sql-pinned-images.conf").stdout
    manifest = vm.ssh("cat /etc/kubernetes/manifests/kube-apiserver.yaml").stdout
    assert f"name: {sidecar.CONTAINER_NAME}" in manifest and f"image: {ref}" in manifest, manifest


def test_postgres_runs_under_systemd_with_tls(readme, fresh_vm):
    """PostgreSQL runs as systemd's postgresql@15-main (its postmaster is the unit's main
    process), and the shim's role logs in only over TLS with verify-full and its client
    certificate."""
    vm = fresh_vm.vm
    out = ok(readme["res"], "README's first command")
    assert "sslmode=verify-full" in phase_blocks(out)["postgres"]
    main_pid = vm.ssh("systemctl show -p MainPID --value postgresql@15-main").stdout.strip()
    postmaster = vm.ssh("head -n1 /var/lib/postgresql/15/main/postmaster.pid").stdout.strip()
    assert main_pid == postmaster and main_pid != "0", (main_pid, postmaster)
    ca, cert, key = (files.path(PKI_DIR, n) for n in (files.CA_CERT, files.SHIM_PG_CLIENT_CERT,
                                                        files.SHIM_PG_CLIENT_KEY))
    base = f"host=localhost hostaddr=127.0.0.1 port=5432 dbname=kubernetes user=k8s_sql sslrootcert={ca}"
    sql = "SELECT current_user, ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
    good = vm.ssh(f"psql -X -A -t -d '{base} sslmode=verify-full sslcert={cert} sslkey={key}' -c '{sql}'")
    user, ssl_on, version = good.stdout.strip().split("|")
    assert (user, ssl_on) == ("k8s_sql", "t") and version.startswith("TLSv1."), good.stdout
    no_cert = vm.ssh(f"PGCONNECT_TIMEOUT=10 psql -X -d '{base} sslmode=verify-full sslcert=/nonexistent "
                     "sslkey=/nonexistent' -c 'SELECT 1'", check=False)
    assert no_cert.returncode != 0, "the role logged in without a client certificate"
    plain = vm.ssh(f"PGPASSWORD=x psql -X -d '{base} sslmode=disable' -c 'SELECT 1'", check=False)
    assert plain.returncode != 0 and "reject" in plain.stderr, plain.stderr
    assert vm.ssh(f"stat -c '%a' {files.path(PKI_DIR, files.SHIM_PG_CLIENT_KEY)}").stdout.strip() == "600"


def test_second_init_over_ssh_changes_nothing(readme, cli, fresh_vm, vm_timings):
    """``k8s-sql init --host root@127.0.0.1 --ssh-port N`` from the host, defaults as in
    README: every phase is up to date, no file, package, unit, role or database differs,
    PostgreSQL was neither restarted nor reloaded, kubeadm init did not run again."""
    vm = fresh_vm.vm
    ok(readme["res"], "README's first command")
    times = "SELECT pg_postmaster_start_time(), pg_conf_load_time()"
    pg_before = vm.ssh(f"runuser -u postgres -- psql -X -A -t -c '{times}'").stdout
    res, seconds = cli("init")
    vm_timings.add("second init over SSH", seconds)
    blocks = phase_blocks(ok(res, "second k8s-sql init"))
    for name in ALL_PHASES:
        if name != "post":  # post checks the cluster every time and changes nothing here
            assert "up to date" in blocks.get(name, ""), f"[{name}] planned changes:\n{blocks.get(name)}"
    assert diff(readme["after"], snapshot(vm)) == []
    assert vm.ssh(f"runuser -u postgres -- psql -X -A -t -c '{times}'").stdout == pg_before
    assert len([c for c in standins.kubeadm_calls(vm) if c[:1] == ["init"]]) == 1


def test_reset_over_ssh_leaves_the_node_as_it_was(readme, cli, fresh_vm, vm_timings):
    """``k8s-sql reset --yes --delete-data`` over SSH: kubeadm reset ran; every path k8s-sql
    recorded is gone, and nothing k8s-sql made is left that was not on the fresh VM before
    README's command (what stays, as reset documents: the packages and what they brought,
    k8s-sql's backups, system directories such as /etc/kubernetes/pki, empty); the role and the database are gone,
    PostgreSQL still runs under systemd. A second reset finds nothing to do."""
    vm = fresh_vm.vm
    ok(readme["res"], "README's first command")
    res, seconds = cli("reset", "--yes", "--delete-data")
    vm_timings.add("reset over SSH", seconds)
    ok(res, "k8s-sql reset")
    assert any(c[:2] == ["reset", "-f"] for c in standins.kubeadm_calls(vm))
    created = sorted(readme["created"])
    assert created, "k8s-sql recorded nothing it created"
    left = vm.ssh("for p in " + " ".join(created) + "; do test -e \"$p\" && echo \"$p\"; done; true").stdout.split()
    # kept by rule: system directories (k8s_sql.paths, /etc/kubernetes/pki among them), backups
    assert [p for p in left if not is_system_path(p) and not p.startswith(BACKUP_DIR)] == []
    after = snapshot(vm)
    new = [d for d in diff(readme["before"], after) if d.startswith("+ ")]
    ours = [d for d in new if ("k8s-sql" in d or "k8s_sql" in d) and BACKUP_DIR not in d
            and "k8s-sql-vm-tests" not in d]  # the test's own CA, linked by ca-certificates
    if vm.ssh(f"test -d {BACKUP_DIR}", check=False).returncode == 0:  # /var/lib/k8s-sql stays for them
        ours = [d for d in ours if not d.startswith("+ d ") or " /var/lib/k8s-sql -> " not in d]
    assert ours == [], ours
    assert not [d for d in new if d.startswith(("+ role k8s_sql", "+ database kubernetes"))]
    assert vm.ssh(f"ls -A {KUBEADM_PKI} 2>/dev/null || true").stdout == ""
    assert vm.ssh("systemctl is-active postgresql@15-main").stdout.strip() == "active"
    again, _ = cli("reset", "--yes", "--delete-data")
    assert "up to date" in ok(again, "second k8s-sql reset")
