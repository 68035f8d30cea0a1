"""Phase ``prereqs``: what kubeadm expects of a fresh Debian/Ubuntu node.

- kernel modules ``overlay`` and ``br_netfilter``: loaded now, and listed in
  ``/etc/modules-load.d/k8s-sql.conf`` for the next boot;
- sysctls ``net.ipv4.ip_forward``, ``net.bridge.bridge-nf-call-iptables`` and
  ``-ip6tables`` = 1 in ``/etc/sysctl.d/99-k8s-sql.conf``, applied now;
- swap off now (``swapoff -a``) and for the next boot (swap lines of ``/etc/fstab``
  commented out, the old fstab kept in ``paths.backupDir``);
- packages from apt: kubeadm, kubelet and kubectl of ``kubernetes.version`` from the
  community repository ``https://pkgs.k8s.io/core:/stable:/v1.<minor>/deb/`` (one per minor
  version), held with ``apt-mark hold``; the container runtime: CRI-O of the same minor from
  its community repository on download.opensuse.org (``isv:cri-o``), or the distribution's
  containerd (``kubernetes.containerRuntime: containerd``, set to the systemd cgroup driver);
  PostgreSQL from the distribution, or from apt.postgresql.org when ``postgres.version``
  asks for another major (only its client with ``postgres.mode: external`` and on a joining
  control-plane node; nothing on a worker); cri-tools (crictl); podman, netavark and
  iptables where the ``shim`` phase builds the shim image. Each repository's key is fetched with curl
  into a file, converted with ``gpg --dearmor`` into ``/etc/apt/keyrings/`` and named by
  ``signed-by=`` in its sources line; nothing is piped into a shell.

- a single node (``kubernetes.singleNode``) without a CNI configuration gets a bridge
  network for the pod subnet (:data:`CNI_FILE`), so that it becomes Ready.

apt never waits for input and waits for the dpkg lock (:data:`APT_OPTIONS`).
The tools the phase runs itself are installed first when missing: kmod (``modprobe``),
procps (``sysctl``), and ca-certificates, curl and gpg when a repository key is fetched;
a minimal VM may lack any of them. Packages installed at the wanted version are left
alone (``dpkg-query``). With ``k8s-sql init phase prereqs --root DIR`` the phase acts on a
:class:`~k8s_sql.host.ScratchHost`: the files are read and written under DIR
(``DIR/etc/os-release``, ``DIR/proc/swaps``, ``DIR/var/lib/dpkg/status`` …) and the commands
that change the running system are listed but not run (the host decides that, not this phase).
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

from k8s_sql import osinfo
from k8s_sql.errors import K8sSqlError
from k8s_sql.phases.base import Action, Change, Context, Phase, WriteFile, file_change

MODULES_FILE = "/etc/modules-load.d/k8s-sql.conf"
SYSCTL_FILE = "/etc/sysctl.d/99-k8s-sql.conf"
MODULES = ("overlay", "br_netfilter")
SYSCTLS = {
    "net.ipv4.ip_forward": "1",
    "net.bridge.bridge-nf-call-iptables": "1",
    "net.bridge.bridge-nf-call-ip6tables": "1",
}
KEYRINGS_DIR = "/etc/apt/keyrings"
KUBE_PACKAGES = ("kubelet", "kubeadm", "kubectl")
CONTAINERD_CONFIG = "/etc/containerd/config.toml"
# containerd 1.6/1.7 of the distributions: runc with the systemd cgroup driver, as kubelet's.
# runtime_type too: a file that names runtimes.runc replaces containerd's default entry for
# it, and without a type every pod sandbox fails ("container.Runtime.Name must be set").
CONTAINERD_TOML = """\
# written by k8s-sql: the kubelet uses the systemd cgroup driver, so runc must as well
version = 2

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
  SystemdCgroup = true
"""
APT_ENV = {"DEBIAN_FRONTEND": "noninteractive"}
#: apt-get options of every install: wait up to 10 minutes for the dpkg lock (unattended-upgrades
#: holds it on a fresh VM's first boot), and never ask about a configuration file. Without
#: them dpkg prompts when a conffile of a package being installed is already on disk (the
#: kubelet package ships /etc/default/kubelet as one; a provisioner may have written it) and,
#: with stdin on /dev/null, fails: "end of file on stdin at conffile prompt". ``confdef``
#: takes dpkg's default where there is one, ``confold`` keeps the file on disk otherwise.
APT_OPTIONS = ("-o", "DPkg::Lock::Timeout=600", "-o", "Dpkg::Options::=--force-confdef",
               "-o", "Dpkg::Options::=--force-confold")
#: What builds the shim image on the node (the ``shim`` phase): podman, with a network
#: backend for the build's ``RUN`` step (podman's containers-common needs one; with
#: --no-install-recommends apt would pick any), the iptables that netavark configures, and
#: dbus: podman's systemd cgroup manager reaches systemd over the system bus (crun: "cannot
#: open sd-bus"), and dbus is only a Recommends of systemd and podman (a minimal system
#: has none; seen in tests/vm/test_fresh_vm.py).
SHIM_BUILD_PACKAGES = ("podman", "netavark", "iptables", "dbus")
#: Single node: a bridge CNI configuration for the pod subnet, so that the node becomes
#: Ready without a pod network add-on (neither runtime package enables one: CRI-O ships its
#: bridge configuration as ``*.disabled``). Skipped when /etc/cni/net.d has another one.
CNI_DIR = "/etc/cni/net.d"
CNI_FILE = f"{CNI_DIR}/99-k8s-sql-bridge.conflist"  # last: any add-on's own configuration comes first


@dataclass(frozen=True)
class AptRepo:
    """One apt repository: where its key comes from and goes, and its sources line."""

    name: str
    key_url: str
    keyring: str
    list_file: str
    uri: str
    suite: str
    components: str = ""

    @property
    def line(self) -> str:
        """The one-line-style sources entry with ``signed-by=``."""
        tail = f" {self.components}" if self.components else ""
        return f"deb [signed-by={self.keyring}] {self.uri} {self.suite}{tail}"


def kubernetes_repo(minor: int) -> AptRepo:
    """pkgs.k8s.io, the community repository for Kubernetes 1.<minor> (flat repository ``/``)."""
    base = f"https://pkgs.k8s.io/core:/stable:/v1.{minor}/deb/"
    return AptRepo("kubernetes", base + "Release.key", f"{KEYRINGS_DIR}/kubernetes-apt-keyring.gpg",
                   "/etc/apt/sources.list.d/kubernetes.list", base, "/")


def crio_repo(minor: int) -> AptRepo:
    """CRI-O 1.<minor> from its community repository (openSUSE Build Service, ``isv:cri-o``)."""
    base = f"https://download.opensuse.org/repositories/isv:/cri-o:/stable:/v1.{minor}/deb/"
    return AptRepo("cri-o", base + "Release.key", f"{KEYRINGS_DIR}/cri-o-apt-keyring.gpg",
                   "/etc/apt/sources.list.d/cri-o.list", base, "/")


def pgdg_repo(codename: str) -> AptRepo:
    """The PostgreSQL project's repository apt.postgresql.org for a distribution codename."""
    return AptRepo("apt.postgresql.org", "https://www.postgresql.org/media/keys/ACCC4CF8.asc",
                   f"{KEYRINGS_DIR}/apt.postgresql.org.gpg", "/etc/apt/sources.list.d/pgdg.list",
                   "https://apt.postgresql.org/pub/repos/apt", f"{codename}-pgdg", "main")


def kube_version_pattern(version: str) -> str:
    """``v1.34.2`` -> ``1.34.2-*`` (any package revision); ``v1.34`` -> ``1.34.*``."""
    v = version.lstrip("v")
    return f"{v}-*" if v.count(".") == 2 else f"{v}.*"


def postgres_package(cfg, osi: osinfo.OsInfo) -> tuple[str, bool]:
    """(package, needs apt.postgresql.org) for ``postgres.version`` on this release.

    Raises:
        K8sSqlError: the version is not a supported major (13-18).
    """
    want = cfg.postgres.version.strip()
    if not want:
        return "postgresql", False
    if not re.fullmatch(r"\d+", want) or not 13 <= int(want) <= 18:
        raise K8sSqlError(f"postgres.version {want!r} is not a supported PostgreSQL major version",
                          hint="use 13 to 18, or leave it empty for the distribution's version")
    return f"postgresql-{want}", int(want) != osi.default_postgres


def wanted_packages(cfg, osi: osinfo.OsInfo, postgres: str = "server") -> tuple[dict[str, str], list[AptRepo]]:
    """Package name -> version pattern (fnmatch, also valid for ``apt-get install pkg=PATTERN``;
    ``*`` = any), and the extra repositories they need. ``postgres``: ``server`` (the node
    runs PostgreSQL), ``client`` (only psql: external mode, or a joining control-plane
    node) or ``none`` (a worker)."""
    minor = cfg.kubernetes_minor
    kube = kube_version_pattern(cfg.kubernetes.version)
    packages = {name: kube for name in KUBE_PACKAGES}
    packages["cri-tools"] = "*"  # crictl: kubeadm's preflight wants it, and it is how containers are inspected
    repos = [kubernetes_repo(minor)]
    if cfg.kubernetes.container_runtime == "crio":
        packages["cri-o"] = f"1.{minor}.*"
        repos.append(crio_repo(minor))
    else:
        packages["containerd"] = "*"
    if builds_shim(cfg, postgres):
        packages.update(dict.fromkeys(SHIM_BUILD_PACKAGES, "*"))
    if postgres == "none":
        return packages, repos
    if postgres == "client" or cfg.postgres.mode == "external":  # only verified from here, with psql
        packages["postgresql-client"] = "*"
        return packages, repos
    pg, pgdg = postgres_package(cfg, osi)
    packages[pg] = "*"
    if cfg.postgres.ha.enabled:  # pg_auto_failover for the same major (README "HA")
        major = cfg.postgres.version.strip() or str(osi.default_postgres)
        packages["pg-auto-failover-cli"] = "*"
        packages[f"postgresql-{major}-auto-failover"] = "*"
    if pgdg:
        repos.append(pgdg_repo(osi.codename))
    return packages, repos


def builds_shim(cfg, postgres: str = "server") -> bool:
    """Whether the ``shim`` phase builds the shim image on this node: a control-plane node
    (``postgres`` is not ``none``) running k8s-sql's own shim with no ``shim.image``."""
    return postgres != "none" and cfg.shim.kind == "k8s-sql" and not cfg.shim.image


def cni_conflist(subnet: str) -> str:
    """A bridge network (CNI spec 1.0.0: bridge with host-local IPAM on ``subnet``, portmap)
    for the pods of a single node; the plugins come from /opt/cni/bin."""
    import json

    doc = {"cniVersion": "1.0.0", "name": "k8s-sql-bridge", "plugins": [
        {"type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": True, "hairpinMode": True,
         "ipam": {"type": "host-local", "routes": [{"dst": "0.0.0.0/0"}], "ranges": [[{"subnet": subnet}]]}},
        {"type": "portmap", "capabilities": {"portMappings": True}}]}
    return "# written by k8s-sql for a single node (kubernetes.singleNode)\n" + json.dumps(doc, indent=2) + "\n"


def installed_packages(ctx: Context, names: list[str]) -> dict[str, tuple[str, str]]:
    """name -> (dpkg status abbreviation like ``ii``/``hi``, version) of installed packages
    (``dpkg-query -W`` on the host)."""
    res = ctx.host.run(["dpkg-query", "-W", "-f=${Package}\\t${db:Status-Abbrev}\\t${Version}\\n", *names], check=False)
    out: dict[str, tuple[str, str]] = {}
    for line in res.stdout.splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[1].strip()[1:2] == "i":
            out[parts[0]] = (parts[1].strip(), parts[2])
    return out


def commands(description: str, argvs: list[list[str]], *, env: dict[str, str] | None = None,
             detail: str = "") -> Action:
    """An Action running ``argvs`` in order on the host (output streamed)."""
    shown = "\n".join(" ".join(a) for a in argvs)

    def run(ctx: Context) -> None:
        for argv in argvs:
            ctx.host.run(argv, env=env, stream=True, timeout=1800)

    return Action(description, run, detail=(detail + "\n" if detail else "") + shown, argvs=argvs)


def fstab_without_swap(text: str) -> str:
    """``/etc/fstab`` with every active swap entry (type ``swap``) commented out."""
    out = []
    for line in text.splitlines(keepends=True):
        fields = line.split()
        if fields and not fields[0].startswith("#") and len(fields) >= 3 and fields[2] == "swap":
            line = "# disabled by k8s-sql (kubelet needs swap off): " + line
        out.append(line)
    return "".join(out)


class Prereqs(Phase):
    """Kernel modules, sysctls, swap, apt repositories and packages (see the module doc).

    Raises (from plan):
        K8sSqlError: unsupported OS release, unsupported ``postgres.version``.
    Raises (from verify):
        K8sSqlError: a module is not loaded, a sysctl is not 1, swap is still on, or a
            package is not at the wanted version.
    """

    name = "prereqs"
    title = "kernel modules, sysctls, swap, container runtime, kubeadm/kubelet/kubectl, PostgreSQL"

    def __init__(self, postgres: str = "server"):
        """``postgres``: which PostgreSQL packages this node needs (see :func:`wanted_packages`)."""
        self.postgres = postgres
        if postgres != "server":
            self.title = self.title.replace("PostgreSQL", "psql" if postgres == "client" else "no PostgreSQL")

    def plan(self, ctx: Context) -> list[Change]:
        host, cfg = ctx.host, ctx.config
        osi = osinfo.detect(host.read_text(osinfo.OS_RELEASE))
        label = osi.pretty if osi.codename in osi.pretty else f"{osi.pretty} ({osi.codename})"
        ctx.console.print(f"  {label}", markup=False, highlight=False)
        changes: list[Change | None] = []
        tools: list[str] = []  # packages of the commands planned below (a minimal VM may lack them)

        # kernel modules
        modules_text = "# k8s-sql: needed by the container runtime and kube-proxy\n" + "\n".join(MODULES) + "\n"
        changes.append(file_change(host, MODULES_FILE, modules_text.encode(), 0o644))
        missing = [m for m in MODULES if not host.exists(f"/sys/module/{m}")]
        if missing:
            tools.append("kmod")
            # -a: without it, modprobe takes the names after the first as module parameters
            changes.append(commands(f"load kernel modules {', '.join(missing)}", [["modprobe", "-a", *missing]]))

        # sysctls
        sysctl_text = "# k8s-sql: packet forwarding and bridged traffic through iptables\n" + "".join(
            f"{k} = {v}\n" for k, v in SYSCTLS.items())
        sysctl_write = file_change(host, SYSCTL_FILE, sysctl_text.encode(), 0o644)
        changes.append(sysctl_write)
        current = {k: (host.read_text("/proc/sys/" + k.replace(".", "/")) or "").strip() for k in SYSCTLS}
        wrong = [k for k, v in SYSCTLS.items() if current[k] != v]
        if sysctl_write or wrong:
            tools.append("procps")
            changes.append(commands(f"apply sysctls {', '.join(wrong or SYSCTLS)}", [["sysctl", "-p", SYSCTL_FILE]]))

        # swap
        swaps = (host.read_text("/proc/swaps") or "").strip().splitlines()[1:]
        if swaps:
            changes.append(commands(f"turn swap off now ({', '.join(s.split()[0] for s in swaps)})", [["swapoff", "-a"]]))
        fstab = host.read_text("/etc/fstab")
        if fstab is not None and fstab_without_swap(fstab) != fstab:
            info = host.stat("/etc/fstab")
            changes.append(WriteFile("/etc/fstab", fstab_without_swap(fstab).encode(), info.mode if info else 0o644,
                                     backup=True, backup_dir=cfg.paths.backup_dir))

        # apt repositories and packages
        packages, repos = wanted_packages(cfg, osi, self.postgres)
        installed = installed_packages(ctx, list(packages))
        install = [f"{p}={v}" if v != "*" else p for p, v in packages.items()
                   if p not in installed or not fnmatch.fnmatchcase(installed[p][1], v)]
        fetch = [r for r in repos if not host.exists(r.keyring)]
        sources = [file_change(host, r.list_file, (r.line + "\n").encode(), 0o644) for r in repos]
        if fetch:
            tools += ["ca-certificates", "curl", "gpg"]
        for r in fetch:
            tmp = r.keyring + ".download"
            changes.append(commands(
                f"fetch the {r.name} repository key {r.key_url} into {r.keyring}",
                [["install", "-d", "-m", "0755", KEYRINGS_DIR],
                 ["curl", "-fsSL", "--proto", "=https", "-o", tmp, r.key_url],
                 ["gpg", "--batch", "--yes", "--dearmor", "-o", r.keyring, tmp],
                 ["chmod", "0644", r.keyring], ["rm", "-f", tmp]]))
        changes.extend(sources)
        if install:
            changes.append(commands(
                f"install {' '.join(install)}",
                [["apt-get", *APT_OPTIONS[:2], "update"],
                 ["apt-get", *APT_OPTIONS, "install", "-y", "--no-install-recommends", "--allow-change-held-packages",
                  *install]],
                env=APT_ENV, detail="repositories: " + "; ".join(r.line for r in repos)))
        unheld = [p for p in KUBE_PACKAGES if p in install or installed.get(p, ("",))[0][:1] != "h"]
        if unheld:
            changes.append(commands(f"hold {' '.join(unheld)} at their version", [["apt-mark", "hold", *unheld]]))
        changes.append(self._cni_change(ctx))

        # container runtime configuration and services
        service = "crio" if cfg.kubernetes.container_runtime == "crio" else "containerd"
        if service == "containerd":
            toml = file_change(host, CONTAINERD_CONFIG, CONTAINERD_TOML.encode(), 0o644)
            if toml:
                toml.backup, toml.backup_dir = True, cfg.paths.backup_dir
                changes.append(toml)
                # also right after apt installed it: the package starts containerd with its defaults
                changes.append(commands("restart containerd for the new configuration",
                                        [["systemctl", "restart", "containerd"]]))
        for unit, now in ((service, True), ("kubelet", False)):
            if not self._enabled(ctx, unit, now):
                argv = ["systemctl", "enable", *(["--now"] if now else []), unit]
                changes.append(commands(f"enable {unit}" + (" and start it" if now else ""), [argv]))
        # dbus's package does not start the system bus (sockets.target does, at the next boot)
        if "dbus" in packages and not self._active(ctx, "dbus.socket"):
            changes.append(commands("start the D-Bus system bus (podman's systemd cgroup manager needs it)",
                                    [["systemctl", "start", "dbus.socket"]]))

        have = installed_packages(ctx, tools) if tools else {}
        need = [t for t in tools if t not in have]
        if need:
            changes.insert(0, commands(f"install {' '.join(need)} (tools this phase runs)",
                                       [["apt-get", *APT_OPTIONS[:2], "update"],
                                        ["apt-get", *APT_OPTIONS, "install", "-y", "--no-install-recommends", *need]],
                                       env=APT_ENV))
        return [c for c in changes if c is not None]

    def _cni_change(self, ctx: Context) -> WriteFile | None:
        """The single-node bridge CNI configuration (see :data:`CNI_FILE`), unless the node
        joins others or already has a CNI configuration of its own."""
        cfg = ctx.config
        if not cfg.kubernetes.single_node or self.postgres != "server":
            return None
        name = CNI_FILE.rsplit("/", 1)[1]
        others = [n for n in ctx.host.listdir(CNI_DIR) if n != name and n.endswith((".conf", ".conflist", ".json"))]
        if others:
            ctx.console.print(f"  {CNI_DIR} has {', '.join(others)}: no bridge network written", markup=False)
            return None
        return file_change(ctx.host, CNI_FILE, cni_conflist(cfg.kubernetes.pod_subnet).encode(), 0o644)

    @staticmethod
    def _active(ctx: Context, unit: str) -> bool:
        """Whether systemd runs ``unit`` (``systemctl is-active``); False without systemctl."""
        return ctx.host.which("systemctl") is not None and \
            ctx.host.run(["systemctl", "is-active", "--quiet", unit], check=False).ok

    @staticmethod
    def _enabled(ctx: Context, unit: str, active: bool) -> bool:
        """Whether ``unit`` is enabled (and, if ``active``, running), asked with systemctl."""
        if ctx.host.which("systemctl") is None:
            return False
        if ctx.host.run(["systemctl", "is-enabled", "--quiet", unit], check=False).returncode != 0:
            return False
        return not active or ctx.host.run(["systemctl", "is-active", "--quiet", unit], check=False).ok

    def verify(self, ctx: Context) -> None:
        host, cfg = ctx.host, ctx.config
        for path in (MODULES_FILE, SYSCTL_FILE):
            if not host.exists(path):
                raise K8sSqlError("the file was not written", where=path)
        if not host.live:
            return  # a file tree (--root): its commands were recorded, not run, by design
        where = host.name
        for m in MODULES:
            if not host.exists(f"/sys/module/{m}"):
                raise K8sSqlError(f"kernel module {m} is not loaded", where=where,
                                  hint=f"run `modprobe {m}`; in a container, load it on the machine that runs it")
        for k, v in SYSCTLS.items():
            got = (host.read_text("/proc/sys/" + k.replace(".", "/")) or "").strip()
            if got != v:
                raise K8sSqlError(f"sysctl {k} is {got or 'missing'}, want {v}", where=where,
                                  hint=f"run `sysctl -p {SYSCTL_FILE}` and look for a file in /etc/sysctl.d "
                                  "that overrides it")
        if (host.read_text("/proc/swaps") or "").strip().splitlines()[1:]:
            raise K8sSqlError("swap is still on", where=where, hint="run `swapoff -a` and check /etc/fstab")
        packages, _ = wanted_packages(cfg, osinfo.detect(host.read_text(osinfo.OS_RELEASE)), self.postgres)
        installed = installed_packages(ctx, list(packages))
        for p, v in packages.items():
            if p not in installed or not fnmatch.fnmatchcase(installed[p][1], v):
                raise K8sSqlError(f"package {p} is not installed at version {v}", where=where,
                                  hint=f"see `apt-cache policy {p}`")
