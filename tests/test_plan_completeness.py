"""Plan completeness: on a pristine node, every program a step of ``init`` (or ``join``) runs
is in the base system or installed by an earlier step — so ``--dry-run`` never assumes a
tool it does not plan to install, and a fresh VM does not stop half-way for a missing one.

The node is a :class:`~k8s_sql.host.ScratchHost` tree of a fresh Debian 12 / Ubuntu 24.04:
its os-release, an empty dpkg database (``dpkg-query`` finds nothing installed, so every
package k8s-sql wants is planned), and the base programs below as executables (``which``
answers from the tree). The whole plan is made as ``k8s-sql init --dry-run`` makes it
(file writes replayed into a :class:`~k8s_sql.host.DryRunHost`). Every :class:`Action`
carries the commands it runs as data (``argvs``, also for pending steps); the test walks
the plan in order, adds the packages of each ``apt-get install`` to what is installed, and
checks each program against the base system and what the installed packages provide.
"""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from k8s_sql.config import Cluster
from k8s_sql.host import DryRunHost, LocalHost, ScratchHost
from k8s_sql.phases.base import Action, Context, RunOptions
from k8s_sql.phases.join import Join
from k8s_sql.phases.prereqs import Prereqs
from k8s_sql.phases.runner import PHASES, load_phase
from k8s_sql.phases.shim import ShimImage
from k8s_sql.pki import files

#: Programs of the base system of a fresh Debian 12 / Ubuntu 24.04 VM, conservatively: the
#: packages of a debootstrap ``--variant=minbase`` (Essential: yes and Priority: required —
#: coreutils, dash, util-linux, mount, libc-bin, findutils, dpkg, apt), plus systemd and
#: iproute2 (Priority: important; present on every booted cloud image, and preflight checks
#: them). Not counted although cloud images usually have them: curl, gpg, kmod, procps,
#: ca-certificates, iptables (prereqs installs them when it uses them).
BASE = {
    "coreutils": {"install", "chmod", "chown", "rm", "id", "test", "mkdir", "mv", "cat", "base64", "stat", "mktemp",
                  "sync", "env"},
    "dash": {"sh"},
    "util-linux": {"runuser"},
    "mount": {"swapoff", "mount"},
    "libc-bin": {"getent"},
    "findutils": {"find"},
    "dpkg": {"dpkg", "dpkg-query"},
    "apt": {"apt-get", "apt-mark"},
    "systemd": {"systemctl"},
    "iproute2": {"ip"},
}
BASE_PROGRAMS = set().union(*BASE.values())
#: Programs each package gives (with what it depends on: postgresql -> postgresql-NN ->
#: postgresql-client-NN and postgresql-common; file lists of the Debian/pkgs.k8s.io packages).
PROVIDES = {
    "kmod": {"modprobe"}, "procps": {"sysctl"}, "curl": {"curl"}, "gpg": {"gpg"}, "ca-certificates": set(),
    "kubeadm": {"kubeadm"}, "kubelet": {"kubelet"}, "kubectl": {"kubectl"}, "cri-tools": {"crictl"},
    "cri-o": {"crio"}, "containerd": {"containerd", "ctr"}, "podman": {"podman"}, "buildah": {"buildah"},
    "netavark": {"netavark"}, "iptables": {"iptables"}, "dbus": {"dbus-daemon"},
    "postgresql": {"psql", "pg_lsclusters", "pg_ctlcluster"}, "postgresql-client": {"psql"},
    **{f"postgresql-{v}": {"psql", "pg_lsclusters", "pg_ctlcluster"} for v in range(13, 19)},
}
#: What a program needs besides itself: kubeadm's preflight requires crictl
#: (FileExisting-crictl, mandatory); ``podman build`` runs the Containerfile's RUN step in a
#: network namespace set up by a network backend, in a cgroup that its systemd cgroup
#: manager asks systemd for over D-Bus (crun fails with "cannot open sd-bus" without it).
NEEDS = {"kubeadm": [{"crictl"}], "podman": [{"netavark", "containernetworking-plugins"}, {"dbus-daemon"}]}

OS_RELEASES = {
    "debian-12": ('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n'
                  'VERSION_CODENAME=bookworm\n'),
    "ubuntu-24.04": 'PRETTY_NAME="Ubuntu 24.04.3 LTS"\nID=ubuntu\nVERSION_ID="24.04"\nVERSION_CODENAME=noble\n',
}


def pristine(root, release: str) -> str:
    (root / "etc").mkdir(parents=True)
    (root / "etc/os-release").write_text(OS_RELEASES[release])
    (root / "etc/fstab").write_text("UUID=1 / ext4 defaults 0 1\n")
    (root / "proc").mkdir()
    (root / "proc/swaps").write_text("Filename\tType\tSize\tUsed\tPriority\n")
    for d in ("var/lib/dpkg/info", "var/lib/dpkg/updates", "usr/bin"):
        (root / d).mkdir(parents=True)
    (root / "var/lib/dpkg/status").write_text("")
    for program in BASE_PROGRAMS:
        (root / "usr/bin" / program).write_text("")
        (root / "usr/bin" / program).chmod(0o755)
    return str(root)


def config(runtime: str, **shim) -> Cluster:
    cfg = Cluster()
    cfg.node.name, cfg.node.advertise_address = "cp1", "192.0.2.10"
    cfg.kubernetes.container_runtime = runtime
    for k, v in shim.items():
        setattr(cfg.shim, k, v)
    return cfg


def dry_context(root: str, cfg: Cluster, phases=None) -> Context:
    return Context(host=DryRunHost(ScratchHost(root)), config=cfg, console=Console(file=io.StringIO()), dry_run=True,
                   options=RunOptions(phases=phases))


def plan(phases, ctx: Context) -> list[tuple[str, object]]:
    """(phase name, change) of every phase in order, as ``--dry-run`` plans them."""
    out = []
    for phase in phases:
        for change in phase.plan(ctx):
            out.append((phase.name, change))
            if change.replay_in_dry_run:
                change.apply(ctx)
    return out


def program(argv: list[str]) -> str:
    """The program an argv runs (through ``runuser -u USER --`` too)."""
    if argv[0] == "runuser" and "--" in argv:
        return argv[argv.index("--") + 1]
    return argv[0]


def missing_programs(steps) -> list[str]:
    """Each program run before anything installed it, as ``phase: step: program``."""
    installed: set[str] = set()
    problems = []
    for phase, change in steps:
        if not isinstance(change, Action):
            continue
        if not change.argvs:
            problems.append(f"{phase}: {change.describe()}: runs commands it does not list (argvs)")
        for argv in change.argvs:
            have = BASE_PROGRAMS.union(*(PROVIDES.get(p, set()) for p in installed))
            prog = program(argv)
            if prog not in have:
                problems.append(f"{phase}: {change.describe()}: {prog}")
            for alternatives in NEEDS.get(prog, []):
                if not alternatives & (have | installed):
                    problems.append(f"{phase}: {change.describe()}: {prog} needs one of {sorted(alternatives)}")
            if prog == "apt-get" and "install" in argv:
                installed |= {a.split("=")[0] for a in argv[argv.index("install") + 1:] if not a.startswith("-")}
    return problems


@pytest.mark.parametrize("release", list(OS_RELEASES))
@pytest.mark.parametrize("runtime,shim", [("crio", {}), ("containerd", {}), ("crio", {"kind": "kine"}),
                                          ("containerd", {"image": "registry.example/k8s-sql-shim:1.0"})])
def test_init_plan_installs_every_program_it_runs(tmp_path, release, runtime, shim):
    root = pristine(tmp_path / "node", release)
    ctx = dry_context(root, config(runtime, **shim), phases=tuple(PHASES))
    steps = plan([load_phase(name) for name in PHASES], ctx)
    assert missing_programs(steps) == []
    ran = {program(a) for _, c in steps if isinstance(c, Action) for a in c.argvs}
    # the plan is the whole init: packages, the datastore, kubeadm, the kubeconfig
    assert {"apt-get", "psql", "kubeadm", "kubectl"} <= ran
    assert ("podman" in ran) == (not shim)


@pytest.mark.parametrize("control_plane", [False, True])
def test_join_plan_installs_every_program_it_runs(tmp_path, control_plane):
    """The joining node is pristine; the first node (a tree with what init left there: its
    admin kubeconfig and datastore certificates) is the one join reads from."""
    cfg = config("crio")
    first = tmp_path / "first"
    for name in ("admin.conf",):
        (first / "etc/kubernetes").mkdir(parents=True, exist_ok=True)
        (first / "etc/kubernetes" / name).write_text("kind: Config\n")
    pki = first / cfg.paths.pki_dir.lstrip("/")
    pki.mkdir(parents=True)
    for name in (files.CA_CERT, files.SHIM_SERVER_CERT, files.SHIM_SERVER_KEY, files.SHIM_PG_CLIENT_CERT,
                 files.SHIM_PG_CLIENT_KEY, files.APISERVER_CLIENT_CERT, files.APISERVER_CLIENT_KEY):
        (pki / name).write_text("pem\n")
    cp = Context(host=LocalHost(root=str(first)), config=cfg, console=Console(file=io.StringIO()))
    node = dry_context(pristine(tmp_path / "node", "ubuntu-24.04"), config("crio"))
    phases = [Prereqs(postgres="client" if control_plane else "none")]
    if control_plane:
        phases.append(ShimImage())
    phases.append(Join(cp, control_plane, "192.0.2.10" if control_plane else None))
    steps = plan(phases, node)
    assert missing_programs(steps) == []
    ran = {program(a) for _, c in steps if isinstance(c, Action) for a in c.argvs}
    assert "kubeadm" in ran and ("psql" in ran) == control_plane and ("podman" in ran) == control_plane


def test_a_tool_nothing_installs_is_found(tmp_path):
    """The check itself: with podman left out of prereqs (as before), the shim build is
    reported; the program walk is not vacuous."""
    root = pristine(tmp_path / "node", "debian-12")
    ctx = dry_context(root, config("crio"), phases=tuple(PHASES))
    steps = plan([load_phase(name) for name in PHASES], ctx)
    for _, change in steps:
        if isinstance(change, Action):
            for argv in change.argvs:
                if argv[:1] == ["apt-get"] and "install" in argv:
                    argv[:] = [a for a in argv if a not in ("podman", "cri-tools")]
    problems = missing_programs(steps)
    assert any(p.startswith("shim: build the shim image") and p.endswith(": podman") for p in problems), problems
    assert any("kubeadm needs one of ['crictl']" in p for p in problems), problems
