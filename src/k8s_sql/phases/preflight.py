"""Phase ``preflight``: checks that must pass before init changes anything (like kubeadm's
preflight, whose check names and ``--ignore-preflight-errors`` it borrows).

Checks, by name: ``IsPrivilegedUser`` (root), ``OperatingSystem`` (Debian 12/13, Ubuntu
24.04 from /etc/os-release), ``FileExisting-<binary>``, ``Port-<n>`` (free, unless
it is our own service from an earlier init: PostgreSQL on ``postgres.port`` — its Unix
socket is there — or the shim and kube-apiserver once the kube-apiserver manifest carries
the k8s-sql sidecar), ``Swap`` (off), ``KernelModule-<name>`` (overlay, br_netfilter) and
``Sysctl-<name>`` (net.ipv4.ip_forward, net.bridge.bridge-nf-call-iptables = 1).

curl and gpg are not checked: only prereqs runs them, and it installs them first when it
needs them. Swap, modules, sysctls and the tools prereqs installs itself (``modprobe`` from kmod,
``sysctl`` from procps) are what the prereqs phase fixes: when prereqs
runs later in the same ``init`` they are only warnings. Everything is read through the Host (``/proc``,
``/etc``), so the checks work over SSH and against a scratch root. Preflight plans no
changes: it raises one K8sSqlError listing every failure, each with the command that
fixes it.

``ctx.options`` (:class:`~k8s_sql.phases.base.RunOptions`): ``ignore_preflight_errors``,
and ``phases`` (``None`` for ``init phase preflight``).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from k8s_sql import osinfo
from k8s_sql.errors import K8sSqlError
from k8s_sql.phases.base import Change, Context, Phase

#: Binaries the prereqs phase needs before it can install anything else.
BASE_BINARIES = ("apt-get", "dpkg-query", "systemctl", "modprobe", "sysctl", "ip", "getent", "runuser")
#: Binaries prereqs installs; checked only when prereqs is not part of the run.
INSTALLED_BINARIES = ("kubeadm", "kubelet", "kubectl", "crictl")
MODULES = ("overlay", "br_netfilter")
SYSCTLS = ("net.ipv4.ip_forward", "net.bridge.bridge-nf-call-iptables")
APISERVER_PORT = 6443
#: Binary -> the Debian package that has it, for the fix of FileExisting-<binary>.
PACKAGES = {"ip": "iproute2", "modprobe": "kmod", "sysctl": "procps", "systemctl": "systemd"}
#: Checks the prereqs phase fixes (name prefixes); it installs these tools before it uses them.
FIXED_BY_PREREQS = ("Swap", "KernelModule-", "Sysctl-", "FileExisting-modprobe", "FileExisting-sysctl")


@dataclass(frozen=True)
class Failure:
    """A failed check: kubeadm-style ``name``, what is wrong, and the command that fixes it."""

    name: str
    what: str
    fix: str

    def line(self, level: str = "ERROR") -> str:
        return f"[{level} {self.name}]: {self.what} — fix: {self.fix}"


def listening_ports(host) -> set[int]:
    """TCP ports in LISTEN state (``/proc/net/tcp`` and ``tcp6``, state ``0A``)."""
    ports: set[int] = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in (host.read_text(name) or "").splitlines()[1:]:
            f = line.split()
            if len(f) > 3 and f[3] == "0A" and ":" in f[1]:
                ports.add(int(f[1].rsplit(":", 1)[1], 16))
    return ports


def _ours_after_init(ctx: Context) -> bool:
    manifest = ctx.host.read_text(posixpath.join(ctx.config.paths.manifests_dir, "kube-apiserver.yaml")) or ""
    return "k8s-sql" in manifest


def run_checks(ctx: Context) -> list[Failure]:
    """Every check against ``ctx.host``; the failures, in check order."""
    host, cfg = ctx.host, ctx.config
    out: list[Failure] = []
    if not host.is_root():
        out.append(Failure("IsPrivilegedUser", "k8s-sql init must run as root", "sudo k8s-sql init …"))
    try:
        osinfo.detect(host.read_text(osinfo.OS_RELEASE))
    except K8sSqlError as e:
        out.append(Failure("OperatingSystem", e.what, e.hint or "use a supported release"))
    binaries = list(BASE_BINARIES)
    phases = ctx.options.phases
    if phases is not None and "prereqs" not in phases:
        binaries += INSTALLED_BINARIES
        binaries.append("psql")  # the postgres phase administers PostgreSQL with it, locally or not
    for binary in binaries:
        if host.which(binary) is None:
            pkg = PACKAGES.get(binary)
            fix = f"apt-get install -y {pkg}" if pkg else ("k8s-sql init phase prereqs"
                                                           if binary in (*INSTALLED_BINARIES, "psql")
                                                           else f"install the package that provides {binary}")
            out.append(Failure(f"FileExisting-{binary}", f"{binary} not found in PATH", fix))
    listening = listening_ports(host)
    ports = {cfg.shim.port: "the shim's etcd endpoint", cfg.shim.metrics_port: "the shim's metrics endpoint",
             APISERVER_PORT: "kube-apiserver"}
    ours = _ours_after_init(ctx) if listening & set(ports) else False
    if cfg.postgres.mode == "local":
        ports[cfg.postgres.port] = "PostgreSQL"
    for port, user in sorted(ports.items()):
        if port not in listening:
            continue
        if user == "PostgreSQL" and host.exists(posixpath.join(cfg.postgres.socket_dir, f".s.PGSQL.{port}")):
            continue  # the local PostgreSQL this init configures
        if user != "PostgreSQL" and ours:
            continue  # our own shim/kube-apiserver from an earlier init
        out.append(Failure(f"Port-{port}", f"port {port} (for {user}) is in use",
                           f"find the process with `ss -ltnp 'sport = :{port}'` and stop it"))
    if (host.read_text("/proc/swaps") or "").strip().splitlines()[1:]:
        out.append(Failure("Swap", "swap is on (the kubelet refuses to start)",
                           "swapoff -a, and comment out the swap lines of /etc/fstab (prereqs does both)"))
    loaded = {line.split()[0] for line in (host.read_text("/proc/modules") or "").splitlines() if line.strip()}
    for module in MODULES:
        if module not in loaded and not host.exists(f"/sys/module/{module}"):
            out.append(Failure(f"KernelModule-{module}", f"kernel module {module} is not loaded",
                               f"modprobe {module} (prereqs also lists it in /etc/modules-load.d)"))
    for key in SYSCTLS:
        value = (host.read_text("/proc/sys/" + key.replace(".", "/")) or "").strip()
        if value != "1":
            pre = "modprobe br_netfilter && " if "bridge" in key and not value else ""
            out.append(Failure(f"Sysctl-{key}", f"{key} is {value or 'missing'}, must be 1",
                               f"{pre}sysctl -w {key}=1 (prereqs persists it in /etc/sysctl.d)"))
    return out


class Preflight(Phase):
    """Runs :func:`run_checks`; plans no changes."""

    name = "preflight"
    title = "check the node before changing anything"

    def plan(self, ctx: Context) -> list[Change]:
        """Raises:
            K8sSqlError: one or more checks failed and are not ignored (lists them all).
        """
        ignore = {s.lower() for s in ctx.options.ignore_preflight_errors}
        prereqs_later = ctx.options.runs("prereqs")
        errors = []
        for failure in run_checks(ctx):
            if "all" in ignore or failure.name.lower() in ignore:
                ctx.console.print("  " + failure.line("WARNING"), markup=False)
            elif prereqs_later and failure.name.startswith(FIXED_BY_PREREQS):
                ctx.console.print("  " + failure.line("WARNING") + " (prereqs runs next and fixes it)", markup=False)
            else:
                errors.append(failure)
        if errors:
            raise K8sSqlError(f"{len(errors)} preflight check(s) failed:\n  " + "\n  ".join(f.line() for f in errors),
                              where=ctx.host.name, hint="fix them, or skip checks with --ignore-preflight-errors="
                              + ",".join(f.name for f in errors) + " (or =all)")
        return []
