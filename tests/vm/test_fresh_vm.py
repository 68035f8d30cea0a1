"""``k8s-sql init`` and ``reset`` against a fresh Debian 12 VM, over SSH, for real.

Why a VM: every phase is tested elsewhere, but against this machine, where apt, dpkg,
systemd and PostgreSQL are already set up or replaced. Here a plain Debian 12 (debootstrap of
Debian's packages, booted by qemu: KVM when the host runs a stock kernel on it, else TCG)
gets the phases that can run for real in it — preflight, prereqs, pki, postgres — through
``k8s-sql init --host root@127.0.0.1 --ssh-port N`` as a user would run them: real apt-get
and dpkg (with ``DEBIAN_FRONTEND=noninteractive`` and no terminal, as k8s-sql runs them),
Debian's containerd and PostgreSQL 15 under systemd, real modprobe/sysctl, curl and gpg.

Stand-ins, at the edge only: pkgs.k8s.io is a signed apt repository built by the test and
served from the host (tests/vm/aptrepo.py: same package names, versions, dependencies,
conffiles — /etc/default/kubelet included — as the real ones; programs that only print
their version); the VM finds it under its real name through /etc/hosts and the test's CA.
The container runtime is Debian's containerd (``kubernetes.containerRuntime: containerd``):
CRI-O's repository is not stood in for. Not covered here: the shim, kubeadm-config,
kubeadm-init and post phases (no real kubeadm/kubelet), ``vagrant/provision.sh``.

Marked ``vm`` (``-m vm`` runs only these; ``-m 'not vm'`` leaves them out): it boots a VM and
installs packages from Debian's mirror, minutes of wall time (see the timings line at the
end of the run). It is not skipped when KVM is missing (TCG is used), and a missing host
package fails it with the apt-get command to run.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

from k8s_sql.pki import files

pytestmark = [pytest.mark.vm, pytest.mark.timeout(3600)]

PKI_DIR = "/etc/kubernetes/pki/k8s-sql"
STATE_FILE = "/var/lib/k8s-sql/state.json"
BACKUP_DIR = "/var/lib/k8s-sql/backup"
#: The pki phase creates it as the parent of PKI_DIR on a node without kubeadm state; reset
#: never removes it (kubeadm's directory, k8s_sql.paths.is_system_path), so it stays, empty.
KUBEADM_PKI = "/etc/kubernetes/pki"
CONFIG = """\
apiVersion: k8s-sql.io/v1alpha1
kind: Cluster
kubernetes:
  containerRuntime: containerd
"""
#: The phases that run for real in the VM (the others need kubeadm and a kubelet).
LATER = "shim,kubeadm-config,kubeadm-init,post"
PHASES = ("preflight", "prereqs", "pki", "postgres")
#: What the snapshots cover: the whole configuration, k8s-sql's own state, the packages,
#: the enabled units, PostgreSQL's roles and databases.
SNAPSHOT = r"""
set -e
find /etc /var/lib/k8s-sql /usr/local -xdev -printf '%y %m %u:%g %p -> %l\n' 2>/dev/null | sort
find /etc /var/lib/k8s-sql /usr/local -xdev -type f -exec sha256sum {} + 2>/dev/null | sort -k2
dpkg-query -W -f '${db:Status-Abbrev} ${Package} ${Version}\n' | sort
systemctl list-unit-files --state=enabled --no-legend | sort
if command -v psql >/dev/null; then
  runuser -u postgres -- psql -X -A -t -c "SELECT 'role ' || rolname FROM pg_roles ORDER BY 1" \
    -c "SELECT 'database ' || datname FROM pg_database ORDER BY 1"
fi
"""


def snapshot(vm) -> list[str]:
    return vm.ssh(SNAPSHOT, timeout=300).stdout.splitlines()


def diff(before: list[str], after: list[str]) -> list[str]:
    b, a = set(before), set(after)
    return [f"- {x}" for x in sorted(b - a)] + [f"+ {x}" for x in sorted(a - b)]


class Cli:
    """``k8s-sql`` (this checkout's, with the test's Python) against the VM; every run's
    output is kept in the VM's directory."""

    def __init__(self, booted, workdir):
        self.booted = booted
        self.workdir = workdir
        self.config = workdir / "k8s-sql.yaml"
        self.config.write_text(CONFIG)
        self.runs = 0

    def ssh_args(self) -> list[str]:
        b = self.booted
        return ["--host", "root@127.0.0.1", "--ssh-port", str(b.port), "--ssh-key", str(b.key),
                "--ssh-known-hosts", str(b.known_hosts)]

    def __call__(self, *args: str, timeout: float = 2400) -> tuple[subprocess.CompletedProcess, float]:
        self.runs += 1
        argv = [sys.executable, "-m", "k8s_sql", *args, "--config", str(self.config), *self.ssh_args()]
        start = time.monotonic()
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                             env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}, stdin=subprocess.DEVNULL)
        seconds = time.monotonic() - start
        log = self.workdir / f"k8s-sql.{self.runs}.log"
        log.write_text(f"$ {' '.join(argv)}\nexit {res.returncode} after {seconds:.1f} s\n--- stdout\n"
                       f"{res.stdout}\n--- stderr\n{res.stderr}\n")
        return res, seconds


def ok(res: subprocess.CompletedProcess, what: str) -> str:
    assert res.returncode == 0, f"{what} exited {res.returncode}\n--- stdout (end)\n" + "\n".join(
        res.stdout.splitlines()[-60:]) + f"\n--- stderr\n{res.stderr}"
    return res.stdout


def phase_blocks(out: str) -> dict[str, str]:
    """``[name] title`` headers of run_phases -> the lines under each."""
    blocks: dict[str, str] = {}
    name = None
    for line in out.splitlines():
        m = re.match(r"^\[([a-z-]+)\] ", line)
        if m and m.group(1) in PHASES:
            name = m.group(1)
            blocks[name] = ""
        elif name:
            blocks[name] += line + "\n"
    return blocks


@pytest.fixture(scope="module")
def cli(booted_vm, tmp_path_factory):
    return Cli(booted_vm, booted_vm.vm.workdir)


@pytest.fixture(scope="module")
def after_prereqs(cli, booted_vm, vm_timings):
    """``init`` of preflight and prereqs on the fresh VM; its output, the snapshot after it
    (what reset must come back to) and the paths k8s-sql recorded as created by then."""
    res, seconds = cli("init", "--skip-phases", f"pki,postgres,{LATER}")
    vm_timings.add("init preflight+prereqs (fresh VM, apt)", seconds)
    out = ok(res, "k8s-sql init (preflight, prereqs)")
    record = json.loads(booted_vm.vm.ssh(f"cat {STATE_FILE}").stdout)
    created = {e["path"] for e in record["entries"]}
    return out, snapshot(booted_vm.vm), created


@pytest.fixture(scope="module")
def after_init(cli, booted_vm, after_prereqs, vm_timings):
    """``init`` of preflight, prereqs, pki and postgres; its output and the snapshot after."""
    res, seconds = cli("init", "--skip-phases", LATER)
    vm_timings.add("init preflight..postgres", seconds)
    return ok(res, "k8s-sql init (preflight..postgres)"), snapshot(booted_vm.vm)


def test_prereqs_installs_from_the_repositories(after_prereqs, booted_vm, kube_repo):
    """prereqs on a fresh Debian 12: the stand-in pkgs.k8s.io packages through the real
    key/curl/gpg/signed-by path, held; Debian's containerd and PostgreSQL 15 installed and
    running; kubelet enabled; modules and sysctls in place; /etc/default/kubelet is the
    package's conffile, untouched."""
    vm = booted_vm.vm
    out, _, _ = after_prereqs
    assert "[prereqs]" in out
    status = vm.ssh("dpkg-query -W -f '${Package} ${Version} ${db:Status-Abbrev}\\n' kubeadm kubelet kubectl "
                    "kubernetes-cni containerd postgresql-15").stdout
    got = {line.split()[0]: line.split()[1:] for line in status.splitlines()}
    for name in ("kubeadm", "kubelet", "kubectl"):
        assert got[name][0] == "1.34.2-1.1", status
        assert got[name][1] == "hi", f"{name} is not held: {status}"  # hold, installed
    assert got["containerd"][1] == "ii" and got["postgresql-15"][1] == "ii", status
    assert vm.ssh("apt-cache policy kubelet").stdout.count("https://pkgs.k8s.io/core:/stable:/v1.34/deb") >= 1
    fetched = "\n".join(kube_repo.server.requests())
    assert "Release.key" in fetched and "InRelease" in fetched and "kubelet_1.34.2-1.1_amd64.deb" in fetched
    key = vm.ssh("gpg --show-keys /etc/apt/keyrings/kubernetes-apt-keyring.gpg").stdout
    assert "k8s-sql VM tests repository" in key
    conffiles = vm.ssh("dpkg-query -W -f '${Conffiles}' kubelet").stdout
    assert "/etc/default/kubelet" in conffiles
    assert vm.ssh("cat /etc/default/kubelet").stdout == "KUBELET_EXTRA_ARGS=\n"
    assert vm.ssh("systemctl is-active containerd").stdout.strip() == "active"
    assert vm.ssh("systemctl is-enabled kubelet").stdout.strip() == "enabled"
    assert "SystemdCgroup = true" in vm.ssh("cat /etc/containerd/config.toml").stdout
    assert vm.ssh("cat /proc/sys/net/ipv4/ip_forward /proc/sys/net/bridge/bridge-nf-call-iptables").stdout.split() \
        == ["1", "1"]
    assert vm.ssh("systemctl is-active postgresql@15-main").stdout.strip() == "active"


def test_init_sets_up_postgres_under_systemd_with_tls(after_init, booted_vm):
    """After pki and postgres: PostgreSQL runs as systemd's postgresql@15-main (its
    postmaster is the unit's main process), and the shim's role logs in from the VM only
    over TLS with verify-full and its client certificate."""
    vm = booted_vm.vm
    out, _ = after_init
    blocks = phase_blocks(out)
    assert set(PHASES) <= set(blocks), out
    assert "verified:" in blocks["postgres"] and "sslmode=verify-full" in blocks["postgres"], blocks["postgres"]
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


def test_second_init_changes_nothing(after_init, cli, booted_vm):
    """init again: every phase is up to date, no file, package, unit, role or database
    differs, and PostgreSQL was neither restarted nor reloaded."""
    vm = booted_vm.vm
    _, before = after_init
    times = "SELECT pg_postmaster_start_time(), pg_conf_load_time()"
    pg_before = vm.ssh(f"runuser -u postgres -- psql -X -A -t -c '{times}'").stdout
    res, _ = cli("init", "--skip-phases", LATER)
    blocks = phase_blocks(ok(res, "second k8s-sql init"))
    for name in PHASES:
        assert "up to date" in blocks.get(name, ""), f"[{name}] planned changes:\n{blocks.get(name)}"
    assert diff(before, snapshot(vm)) == []
    assert vm.ssh(f"runuser -u postgres -- psql -X -A -t -c '{times}'").stdout == pg_before


def test_reset_restores_the_node(after_prereqs, after_init, cli, booted_vm):
    """reset --delete-data, compared with the node right after prereqs: the certificates,
    the conf.d file, the pg_hba block, the role, the database are gone and every other file,
    package and enabled unit is as it was; PostgreSQL still runs under systemd. The only
    other differences are what reset documents: the files prereqs created are removed too
    (reset removes every file k8s-sql created; the packages stay), k8s-sql's backups stay,
    and /etc/kubernetes/pki stays, empty (see KUBEADM_PKI). A second reset finds nothing
    to do."""
    vm = booted_vm.vm
    _, before, created_by_prereqs = after_prereqs
    res, _ = cli("reset", "--yes", "--delete-data")
    ok(res, "k8s-sql reset")
    explained = created_by_prereqs | {STATE_FILE}

    def expected(line: str) -> bool:
        paths = [t for t in line.split() if t.startswith("/")]
        if any(p.startswith(BACKUP_DIR + "/") or p == BACKUP_DIR for p in paths):
            return True
        if line.startswith("+ d ") and paths == [KUBEADM_PKI]:
            return True  # created by the pki phase, kept by reset: see KUBEADM_PKI
        return line.startswith("- ") and any(p in explained for p in paths)

    changed = diff(before, snapshot(vm))
    assert [d for d in changed if not expected(d)] == []
    assert vm.ssh(f"ls -A {KUBEADM_PKI} 2>/dev/null || true").stdout == ""
    assert vm.ssh("systemctl is-active postgresql@15-main").stdout.strip() == "active"
    again, _ = cli("reset", "--yes", "--delete-data")
    assert "up to date" in ok(again, "second k8s-sql reset")
