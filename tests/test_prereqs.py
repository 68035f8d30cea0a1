"""The prereqs phase against a scratch node tree (``k8s-sql init phase prereqs --root DIR``).

The test writes the facts a node would have under DIR: ``etc/os-release`` of each supported
release, ``proc/swaps``, ``etc/fstab``, ``proc/sys/...`` values, ``sys/module/<name>`` for
loaded modules and a dpkg status file (read by the real ``dpkg-query --admindir``). The
files the phase writes land under DIR; the commands that would change this machine
(modprobe, sysctl, swapoff, curl/gpg, apt-get, apt-mark, systemctl) are planned, shown and,
by design of --root, not run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
from typer.testing import CliRunner

from k8s_sql.cli import app

OS_RELEASES = {
    "debian-12": ('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\nVERSION_ID="12"\n'
                  'VERSION_CODENAME=bookworm\nID=debian\n', "bookworm", 15),
    "debian-13": ('PRETTY_NAME="Debian GNU/Linux 13 (trixie)"\nVERSION_ID="13"\nVERSION_CODENAME=trixie\n'
                  'ID=debian\n', "trixie", 17),
    "ubuntu-24.04": ('PRETTY_NAME="Ubuntu 24.04.3 LTS"\nNAME="Ubuntu"\nVERSION_ID="24.04"\n'
                     'VERSION_CODENAME=noble\nID=ubuntu\nID_LIKE=debian\n', "noble", 16),
}
FSTAB = ("# /etc/fstab\nUUID=1111 / ext4 errors=remount-ro 0 1\n"
         "/swap.img none swap sw 0 0\n#/old.img none swap sw 0 0\n")
K8S_KEYRING = "/etc/apt/keyrings/kubernetes-apt-keyring.gpg"
CRIO_KEYRING = "/etc/apt/keyrings/cri-o-apt-keyring.gpg"
PG_KEYRING = "/etc/apt/keyrings/apt.postgresql.org.gpg"

runner = CliRunner()


def node(tmp_path, release: str, *, swap: bool = True) -> str:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/os-release").write_text(OS_RELEASES[release][0])
    (root / "etc/fstab").write_text(FSTAB)
    (root / "proc").mkdir()
    (root / "proc/swaps").write_text("Filename\tType\tSize\tUsed\tPriority\n"
                                     + ("/swap.img\tfile\t2097148\t0\t-2\n" if swap else ""))
    for key in ("net/ipv4/ip_forward",):
        (root / "proc/sys" / key).parent.mkdir(parents=True, exist_ok=True)
        (root / "proc/sys" / key).write_text("0\n")
    return str(root)


def config(tmp_path, body: str = "", kubernetes: str = "{version: v1.34.2}") -> str:
    path = tmp_path / "cluster.yaml"
    path.write_text(f"apiVersion: k8s-sql.io/v1alpha1\nkind: Cluster\nkubernetes: {kubernetes}\n" + body)
    return str(path)


def prereqs(root: str, cfg: str, *extra: str):
    r = runner.invoke(app, ["init", "phase", "prereqs", "--root", root, "-c", cfg, *extra],
                      env={"COLUMNS": "300"})
    return r


@pytest.mark.parametrize("release", list(OS_RELEASES))
def test_dry_run_shows_exact_sources_keys_and_packages(tmp_path, release):
    root = node(tmp_path, release)
    r = prereqs(root, config(tmp_path), "--dry-run")
    assert r.exit_code == 0, r.output
    out = r.output
    codename = OS_RELEASES[release][1]
    assert codename in out.splitlines()[1]
    assert (f"+deb [signed-by={K8S_KEYRING}] https://pkgs.k8s.io/core:/stable:/v1.34/deb/ /") in out
    assert (f"+deb [signed-by={CRIO_KEYRING}] "
            "https://download.opensuse.org/repositories/isv:/cri-o:/stable:/v1.34/deb/ /") in out
    assert "curl -fsSL --proto =https -o /etc/apt/keyrings/kubernetes-apt-keyring.gpg.download " \
           "https://pkgs.k8s.io/core:/stable:/v1.34/deb/Release.key" in out
    assert f"gpg --batch --yes --dearmor -o {K8S_KEYRING} {K8S_KEYRING}.download" in out
    assert "https://download.opensuse.org/repositories/isv:/cri-o:/stable:/v1.34/deb/Release.key" in out
    assert ("apt-get -o DPkg::Lock::Timeout=600 -o Dpkg::Options::=--force-confdef "
            "-o Dpkg::Options::=--force-confold install -y --no-install-recommends --allow-change-held-packages "
            "kubelet=1.34.2-* kubeadm=1.34.2-* kubectl=1.34.2-* cri-tools cri-o=1.34.* podman netavark iptables dbus "
            "postgresql\n") in out
    assert "apt-mark hold kubelet kubeadm kubectl" in out
    assert "modprobe -a overlay br_netfilter" in out and "swapoff -a" in out
    assert "sysctl -p /etc/sysctl.d/99-k8s-sql.conf" in out
    assert "+# disabled by k8s-sql (kubelet needs swap off): /swap.img none swap sw 0 0" in out
    assert "systemctl enable --now crio" in out and "systemctl enable kubelet" in out
    assert "pgdg" not in out and "apt.postgresql.org" not in out
    # nothing written
    assert not os.path.exists(os.path.join(root, "etc/apt"))
    assert open(os.path.join(root, "etc/fstab")).read() == FSTAB


@pytest.mark.parametrize("release", ["debian-12", "ubuntu-24.04"])
def test_newer_postgres_comes_from_apt_postgresql_org(tmp_path, release):
    root = node(tmp_path, release)
    codename, distro_pg = OS_RELEASES[release][1:]
    r = prereqs(root, config(tmp_path, "postgres: {version: '18'}\n"), "--dry-run")
    assert r.exit_code == 0, r.output
    assert (f"+deb [signed-by={PG_KEYRING}] https://apt.postgresql.org/pub/repos/apt {codename}-pgdg main") in r.output
    assert "https://www.postgresql.org/media/keys/ACCC4CF8.asc" in r.output
    assert " postgresql-18" in r.output
    # the distribution's own major needs no extra repository
    r = prereqs(root, config(tmp_path, f"postgres: {{version: '{distro_pg}'}}\n"), "--dry-run")
    assert "pgdg" not in r.output and f" postgresql-{distro_pg}" in r.output


def test_containerd_from_the_distribution_with_systemd_cgroups(tmp_path):
    root = node(tmp_path, "debian-13")
    r = prereqs(root, config(tmp_path, kubernetes="{version: v1.33, containerRuntime: containerd}"), "--dry-run")
    assert r.exit_code == 0, r.output
    assert "cri-o" not in r.output
    assert "kubelet=1.33.* kubeadm=1.33.* kubectl=1.33.* cri-tools containerd podman netavark iptables dbus postgresql" \
        in r.output
    assert "+  SystemdCgroup = true" in r.output and "systemctl enable --now containerd" in r.output
    assert "https://pkgs.k8s.io/core:/stable:/v1.33/deb/ /" in r.output


def test_dbus_system_bus_started_with_podman(tmp_path):
    """podman needs the system bus, and dbus's package leaves it stopped until the next
    boot: prereqs starts dbus.socket when it is not active (crun: "cannot open sd-bus",
    seen in tests/vm/test_fresh_vm.py), and not when it is."""
    root = node(tmp_path, "debian-12")
    os.makedirs(os.path.join(root, "usr/bin"))
    open(os.path.join(root, "usr/bin/systemctl"), "w").close()
    os.chmod(os.path.join(root, "usr/bin/systemctl"), 0o755)
    r = prereqs(root, config(tmp_path), "--dry-run")
    assert r.exit_code == 0, r.output
    assert "systemctl start dbus.socket" in r.output
    wants = os.path.join(root, "etc/systemd/system/multi-user.target.wants")
    os.makedirs(wants)
    open(os.path.join(wants, "dbus.socket"), "w").close()  # --root's model of an active unit
    assert "dbus.socket" not in prereqs(root, config(tmp_path), "--dry-run").output


def test_containerd_config_names_the_runc_runtime_type():
    """The runc entry k8s-sql writes is complete: containerd (1.6, 1.7) replaces its default
    ``runtimes.runc`` with the file's, so without ``runtime_type`` every pod sandbox failed
    with "container.Runtime.Name must be set" (seen with a real kubelet on Debian 12's
    containerd 1.6.20, tests/vm/test_vm_kubelet.py)."""
    import tomllib

    from k8s_sql.phases.prereqs import CONTAINERD_TOML

    cri = tomllib.loads(CONTAINERD_TOML)["plugins"]["io.containerd.grpc.v1.cri"]
    runc = cri["containerd"]["runtimes"]["runc"]
    assert runc["runtime_type"] == "io.containerd.runc.v2"
    assert runc["options"] == {"SystemdCgroup": True}


def write_dpkg_status(root: str, packages: dict[str, tuple[str, str]]) -> None:
    """A dpkg status database with ``name -> (Status, Version)``."""
    d = os.path.join(root, "var/lib/dpkg")
    os.makedirs(os.path.join(d, "info"), exist_ok=True)
    os.makedirs(os.path.join(d, "updates"), exist_ok=True)
    with open(os.path.join(d, "status"), "w") as f:
        for name, (status, version) in packages.items():
            f.write(f"Package: {name}\nStatus: {status}\nPriority: optional\nSection: admin\n"
                    f"Maintainer: test <t@example.org>\nArchitecture: amd64\nVersion: {version}\n"
                    f"Description: {name}\n\n")


def settle(root: str) -> None:
    """What the skipped commands would have left on a real node: modules loaded, sysctls
    applied, swap off, keys fetched, services enabled (systemd is there, as on every
    supported release)."""
    for m in ("overlay", "br_netfilter"):
        os.makedirs(os.path.join(root, "sys/module", m), exist_ok=True)
    for key in ("net/ipv4/ip_forward", "net/bridge/bridge-nf-call-iptables", "net/bridge/bridge-nf-call-ip6tables"):
        p = os.path.join(root, "proc/sys", key)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        open(p, "w").write("1\n")
    open(os.path.join(root, "proc/swaps"), "w").write("Filename\tType\tSize\tUsed\tPriority\n")
    os.makedirs(os.path.join(root, "etc/apt/keyrings"), exist_ok=True)
    for k in (K8S_KEYRING, CRIO_KEYRING):
        open(os.path.join(root, k.lstrip("/")), "wb").write(b"\x99key")
    os.makedirs(os.path.join(root, "usr/bin"), exist_ok=True)
    open(os.path.join(root, "usr/bin/systemctl"), "w").close()
    os.chmod(os.path.join(root, "usr/bin/systemctl"), 0o755)
    wants = os.path.join(root, "etc/systemd/system/multi-user.target.wants")
    os.makedirs(wants, exist_ok=True)
    for unit in ("crio.service", "kubelet.service", "dbus.socket"):
        open(os.path.join(wants, unit), "w").write("")


def test_apply_under_root_then_nothing_left_to_do(tmp_path):
    root = node(tmp_path, "ubuntu-24.04")
    cfg = config(tmp_path)
    r = prereqs(root, cfg)
    assert r.exit_code == 0, r.output
    assert "skipped under --root: modprobe -a overlay br_netfilter" in r.output
    assert open(os.path.join(root, "etc/modules-load.d/k8s-sql.conf")).read().splitlines()[1:] == [
        "overlay", "br_netfilter"]
    sysctl = open(os.path.join(root, "etc/sysctl.d/99-k8s-sql.conf")).read()
    for line in ("net.ipv4.ip_forward = 1", "net.bridge.bridge-nf-call-iptables = 1",
                 "net.bridge.bridge-nf-call-ip6tables = 1"):
        assert line in sysctl.splitlines()
    fstab = open(os.path.join(root, "etc/fstab")).read()
    assert "\n/swap.img" not in fstab and "UUID=1111 / ext4" in fstab and "#/old.img none swap" in fstab
    backups = os.listdir(os.path.join(root, "var/lib/k8s-sql/backup"))
    assert len(backups) == 1 and backups[0].startswith("fstab.")
    assert open(os.path.join(root, "var/lib/k8s-sql/backup", backups[0])).read() == FSTAB
    assert open(os.path.join(root, "etc/apt/sources.list.d/kubernetes.list")).read() == (
        f"deb [signed-by={K8S_KEYRING}] https://pkgs.k8s.io/core:/stable:/v1.34/deb/ /\n")

    # a node where the commands ran and the packages are there: nothing to do
    settle(root)
    status = {"kubelet": ("hold ok installed", "1.34.2-1.1"), "kubeadm": ("hold ok installed", "1.34.2-1.1"),
              "kubectl": ("hold ok installed", "1.34.2-1.1"), "cri-o": ("install ok installed", "1.34.1-1.1"),
              "postgresql": ("install ok installed", "16+257build1"), "curl": ("install ok installed", "8.5.0"),
              "cri-tools": ("install ok installed", "1.34.0-1.1"), "podman": ("install ok installed", "4.9.3"),
              "netavark": ("install ok installed", "1.4.0"), "iptables": ("install ok installed", "1.8.10"),
              "dbus": ("install ok installed", "1.14.10")}
    write_dpkg_status(root, status)
    r = prereqs(root, cfg)
    assert r.exit_code == 0, r.output
    assert "up to date" in r.output, r.output

    # an older kubeadm, not held: only it is upgraded, and the hold is put back
    status["kubeadm"] = ("install ok installed", "1.33.5-1.1")
    write_dpkg_status(root, status)
    r = prereqs(root, cfg, "--dry-run")
    assert "--allow-change-held-packages kubeadm=1.34.2-*\n" in r.output
    assert "apt-mark hold kubeadm\n" in r.output
    assert "apt-get -o DPkg::Lock::Timeout=600 update" in r.output and "modprobe" not in r.output \
        and "curl -fsSL" not in r.output


def test_unsupported_release_is_refused(tmp_path):
    root = node(tmp_path, "debian-12")
    open(os.path.join(root, "etc/os-release"), "w").write('PRETTY_NAME="Debian GNU/Linux 11 (bullseye)"\n'
                                                          'ID=debian\nVERSION_ID="11"\n')
    r = prereqs(root, config(tmp_path), "--dry-run")
    assert r.exit_code == 1
    assert "Debian GNU/Linux 11 (bullseye) is not supported" in str(r.exception)
    assert "Ubuntu 24.04" in str(r.exception)


def test_ubuntu_22_04_is_refused_with_the_reason(tmp_path):
    """Ubuntu 22.04 has Python 3.10 (pyproject requires 3.11) and libpq 14, which does not
    match an IP address SAN under verify-full (the shim's connection to 127.0.0.1)."""
    root = node(tmp_path, "debian-12")
    open(os.path.join(root, "etc/os-release"), "w").write('PRETTY_NAME="Ubuntu 22.04.5 LTS"\nID=ubuntu\n'
                                                          'VERSION_ID="22.04"\nVERSION_CODENAME=jammy\n')
    r = prereqs(root, config(tmp_path), "--dry-run")
    assert r.exit_code == 1
    message = str(r.exception)
    assert "Ubuntu 22.04.5 LTS is not supported" in message and "Python is 3.10" in message and "libpq 14" in message
    assert "Debian 12, Debian 13, Ubuntu 24.04" in message and "22.04" not in message.split("use one of")[-1]


def test_root_is_for_prereqs_only(tmp_path):
    r = runner.invoke(app, ["init", "phase", "pki", "--root", str(tmp_path), "--dry-run"])
    assert r.exit_code == 2 and "prereqs phase only" in r.output


def test_external_postgres_installs_only_the_client(tmp_path):
    root = node(tmp_path, "debian-12")
    r = prereqs(root, config(tmp_path, "postgres: {mode: external, uri: 'postgresql://db.example:5432/kubernetes'}\n"),
                "--dry-run")
    assert r.exit_code == 0, r.output
    assert "cri-o=1.34.* podman netavark iptables dbus postgresql-client\n" in r.output and " postgresql\n" not in r.output


def test_joining_nodes_get_no_postgresql_server():
    """A worker needs no PostgreSQL at all, a further control-plane node only psql (its
    shim uses the first node's server; join checks the login with psql)."""
    from k8s_sql.config import load
    from k8s_sql.osinfo import detect
    from k8s_sql.phases.prereqs import wanted_packages

    cfg, osi = load(None), detect(OS_RELEASES["debian-12"][0])
    assert "postgresql" in wanted_packages(cfg, osi)[0]
    worker = wanted_packages(cfg, osi, "none")[0]
    assert not [p for p in worker if p.startswith("postgresql")] and "kubelet" in worker
    cp = wanted_packages(cfg, osi, "client")[0]
    assert [p for p in cp if p.startswith("postgresql")] == ["postgresql-client"]


def test_a_minimal_node_gets_the_tools_the_phase_runs(tmp_path):
    """A minimal VM may lack kmod (modprobe) and procps (sysctl); curl and gpg are needed
    only to fetch repository keys. prereqs installs the missing ones first, and only those
    its planned commands use."""
    root = node(tmp_path, "debian-12")
    write_dpkg_status(root, {"procps": ("install ok installed", "2:4.0.2-3")})
    r = prereqs(root, config(tmp_path), "--dry-run")
    assert r.exit_code == 0, r.output
    lines = [line.strip() for line in r.output.splitlines()]
    first = lines.index("would install kmod ca-certificates curl gpg (tools this phase runs)")
    assert lines[first + 1:first + 3] == [
        "apt-get -o DPkg::Lock::Timeout=600 update",
        "apt-get -o DPkg::Lock::Timeout=600 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "
        "install -y --no-install-recommends kmod ca-certificates curl gpg"]
    assert first < lines.index("modprobe -a overlay br_netfilter") and "procps" not in r.output
    # modules loaded, keys there: no modprobe, no key fetch, so none of these tools
    settle(root)
    r = prereqs(root, config(tmp_path), "--dry-run")
    assert r.exit_code == 0, r.output
    assert "tools this phase runs" not in r.output and "modprobe" not in r.output


def test_root_is_a_scratch_host_that_runs_no_system_command(tmp_path):
    """--root acts on a ScratchHost: what is installed is read from the tree (dpkg status,
    systemd links, binaries), and a command that would change this machine is recorded
    and printed, never run."""
    from k8s_sql.host import ScratchHost

    root = node(tmp_path, "debian-12")
    host = ScratchHost(root)
    marker = tmp_path / "ran"
    assert host.run(["touch", str(marker)]).ok and not marker.exists()
    assert host.skipped == [["touch", str(marker)]] and not host.live
    assert host.which("sh") is None  # the tree has no /bin/sh; this machine's does not count
    assert not host.run(["systemctl", "is-enabled", "--quiet", "kubelet"], check=False).ok
    write_dpkg_status(root, {"kmod": ("install ok installed", "30+20221128-1")})
    out = host.run(["dpkg-query", "-W", "-f=${Package} ${Version}\\n", "kmod"], check=False).stdout
    assert out == "kmod 30+20221128-1\n"
    settle(root)
    assert host.which("systemctl") == "/usr/bin/systemctl"
    assert host.run(["systemctl", "is-enabled", "--quiet", "kubelet"], check=False).ok


def dpkg_options() -> list[str]:
    """The dpkg options prereqs passes through apt-get (``-o Dpkg::Options::=X`` -> X)."""
    from k8s_sql.phases.prereqs import APT_OPTIONS

    return [o.split("=", 1)[1] for o in APT_OPTIONS if o.startswith("Dpkg::Options::=")]


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("dpkg-deb"), reason="dpkg --root needs root and dpkg-deb")
def test_a_conffile_written_before_the_package_is_kept_without_a_prompt(tmp_path):
    """The kubelet package of pkgs.k8s.io ships /etc/default/kubelet as a dpkg conffile, and a
    provisioner writes that file (--node-ip) before prereqs installs kubelet. Real dpkg,
    with a real .deb of the same name and conffile built here, installed into a scratch
    root (``dpkg --root``) with stdin on /dev/null as k8s-sql's hosts run commands: plain
    ``dpkg -i`` stops at the conffile prompt; with prereqs' options the file is kept."""
    pkg = tmp_path / "pkg"
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "DEBIAN/control").write_text("Package: kubelet\nVersion: 1.34.2-1.1\nArchitecture: all\n"
                                        "Maintainer: test <t@example.org>\nDescription: stand-in with the conffile\n")
    (pkg / "DEBIAN/conffiles").write_text("/etc/default/kubelet\n")
    (pkg / "etc/default").mkdir(parents=True)
    (pkg / "etc/default/kubelet").write_text("KUBELET_EXTRA_ARGS=\n")
    deb = tmp_path / "kubelet.deb"
    subprocess.run(["dpkg-deb", "-Zgzip", "--root-owner-group", "-b", str(pkg), str(deb)], check=True,
                   capture_output=True)

    def install(name: str, options: list[str]) -> tuple[subprocess.CompletedProcess, str]:
        root = tmp_path / name
        for d in ("var/lib/dpkg/info", "var/lib/dpkg/updates", "etc/default"):
            (root / d).mkdir(parents=True)
        (root / "var/lib/dpkg/status").write_text("")
        (root / "etc/default/kubelet").write_text("KUBELET_EXTRA_ARGS=--node-ip=192.168.56.10\n")
        r = subprocess.run(["dpkg", f"--root={root}", *options, "-i", str(deb)], stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        return r, (root / "etc/default/kubelet").read_text()

    r, _ = install("before", [])
    assert r.returncode != 0 and "end of file on stdin at conffile prompt" in r.stderr
    r, content = install("after", dpkg_options())
    assert r.returncode == 0, r.stdout + r.stderr
    assert content == "KUBELET_EXTRA_ARGS=--node-ip=192.168.56.10\n"


def planned_install(output: str) -> list[str]:
    """The packages of the main ``apt-get … install`` line of a dry run."""
    line = next(ln for ln in output.splitlines() if "--allow-change-held-packages" in ln)
    return line.split("--allow-change-held-packages", 1)[1].split()


@pytest.mark.parametrize("body,runtime,podman", [
    ("", "crio", True),
    ("", "containerd", True),
    ("shim: {image: registry.example/k8s-sql-shim:1.0}\n", "crio", False),
    ("shim: {kind: kine}\n", "containerd", False),
])
def test_podman_is_installed_where_the_shim_image_is_built(tmp_path, body, runtime, podman):
    """The shim phase builds localhost/k8s-sql-shim with podman; a fresh VM has none. A
    published image (shim.image) or Kine is pulled by the kubelet: no podman then."""
    root = node(tmp_path, "ubuntu-24.04")
    r = prereqs(root, config(tmp_path, body, kubernetes=f"{{version: v1.34.2, containerRuntime: {runtime}}}"),
                "--dry-run")
    assert r.exit_code == 0, r.output
    packages = planned_install(r.output)
    assert ("podman" in packages and "netavark" in packages and "iptables" in packages) == podman
    assert "cri-tools" in packages  # crictl, which kubeadm's preflight requires


def test_a_worker_installs_no_podman():
    from k8s_sql.config import load
    from k8s_sql.osinfo import detect
    from k8s_sql.phases.prereqs import wanted_packages

    cfg, osi = load(None), detect(OS_RELEASES["debian-12"][0])
    assert "podman" not in wanted_packages(cfg, osi, "none")[0]
    assert "podman" in wanted_packages(cfg, osi, "client")[0]  # a further control plane builds its shim


def test_containerd_is_restarted_after_its_configuration_even_when_just_installed(tmp_path):
    """apt starts a newly installed containerd with its defaults (cgroupfs): the config with
    SystemdCgroup = true takes effect only after a restart, which comes after the write."""
    root = node(tmp_path, "debian-12")
    r = prereqs(root, config(tmp_path, kubernetes="{version: v1.34.2, containerRuntime: containerd}"), "--dry-run")
    assert r.exit_code == 0, r.output
    lines = [ln.strip() for ln in r.output.splitlines()]
    install = next(i for i, ln in enumerate(lines) if "--allow-change-held-packages" in ln and "containerd" in ln)
    write = lines.index("would write /etc/containerd/config.toml (0644)")
    restart = lines.index("systemctl restart containerd")
    assert install < write < restart


def test_a_single_node_gets_a_bridge_network_for_its_pods(tmp_path):
    """CRI-O ships its bridge configuration disabled and containerd none, so a single node
    without a pod network stays NotReady. prereqs writes a bridge conflist on the pod
    subnet; not for a multi-node cluster, nor when a CNI configuration is there."""
    root = node(tmp_path, "debian-12")
    cfg = config(tmp_path, kubernetes="{version: v1.34.2, podSubnet: 10.32.0.0/16}")
    r = prereqs(root, cfg)
    assert r.exit_code == 0, r.output
    conf = json.loads("".join(ln for ln in open(os.path.join(root, "etc/cni/net.d/99-k8s-sql-bridge.conflist"))
                              if not ln.startswith("#")))
    bridge = conf["plugins"][0]
    assert bridge["type"] == "bridge" and bridge["ipam"]["ranges"] == [[{"subnet": "10.32.0.0/16"}]]
    assert bridge["isGateway"] and bridge["ipMasq"]

    root = node(tmp_path / "multi", "debian-12")
    r = prereqs(root, config(tmp_path, kubernetes="{version: v1.34.2, singleNode: false}"), "--dry-run")
    assert r.exit_code == 0 and "net.d" not in r.output

    root = node(tmp_path / "flannel", "debian-12")
    os.makedirs(os.path.join(root, "etc/cni/net.d"))
    open(os.path.join(root, "etc/cni/net.d/10-flannel.conflist"), "w").write("{}")
    r = prereqs(root, config(tmp_path), "--dry-run")
    assert r.exit_code == 0 and "99-k8s-sql-bridge" not in r.output and "10-flannel.conflist" in r.output
