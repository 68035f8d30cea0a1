"""``k8s-sql upgrade``: kubeadm's upgrade procedure, with the etcd shim kept in the
kube-apiserver static pod.

kubeadm keeps no patches directory in the cluster: ``kubeadm upgrade apply`` and ``kubeadm
upgrade node`` apply patches only from ``--patches`` or (kubeadm.k8s.io/v1beta4, kubeadm
>= 1.31) ``UpgradeConfiguration.apply.patches.directory`` / ``node.patches.directory``. A
plain upgrade writes kube-apiserver.yaml without the shim, and kube-apiserver loses its
datastore. So the phases here follow kubeadm's documented procedure ("Upgrading kubeadm
clusters") and always hand kubeadm the patches directory:

1. ``upgrade-preflight``: the target is at most one minor version ahead; the shim schema
   migrations between the database and the new shim can run while other shims run
   (:data:`OFFLINE_MIGRATIONS`);
2. ``upgrade-kubeadm``: the pkgs.k8s.io repository of the target minor version, then
   ``apt-mark unhold kubeadm``, install the target version, ``apt-mark hold kubeadm``;
3. ``shim`` (control plane, our shim): the shim image of this k8s-sql release, so a new
   shim version rolls out with the manifest kubeadm writes next;
4. ``upgrade-files`` (control plane): the sidecar patch (``apply``: rendered from the
   configuration; ``node``: the node's own patch with the new image, its datastore address
   kept) and, for v1beta4, the UpgradeConfiguration;
5. ``upgrade-kubeadm-run``: ``kubeadm upgrade apply <version>`` (first control plane) or
   ``kubeadm upgrade node``, with the patches;
6. ``upgrade-shim-check`` (control plane): the new kube-apiserver.yaml still runs the shim,
   else it is repaired with ``patch-manifest``'s logic (backup kept);
7. ``upgrade-kubelet``: drain, unhold/install/hold kubelet and kubectl, daemon-reload,
   restart the kubelet, uncordon;
8. ``upgrade-verify``: ``/readyz`` answers ``ok``.
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import posixpath
import re
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from k8s_sql.errors import K8sSqlError
from k8s_sql.kubeadm import config as kconfig
from k8s_sql.kubeadm import manifest, sidecar, yamlio
from k8s_sql.phases import prereqs
from k8s_sql.phases.base import Action, Change, Context, Phase, WriteFile, file_change, pending
from k8s_sql import config as configmod
from k8s_sql.phases.kubeadm_init import init_config_path, shim_problem
from k8s_sql.phases.runner import load_phase
from k8s_sql.shim.storage.schema import offline_migrations as schema_offline_migrations

#: Shim schema migrations (numbers of :data:`k8s_sql.shim.storage.schema.MIGRATIONS`) that a
#: shim of the schema before them cannot run beside, derived from each migration's declared
#: ``min_compatible`` (:data:`k8s_sql.shim.storage.schema.MIN_COMPATIBLE`; so far migration 3,
#: which drops ``kv``'s primary key on the whole key that a schema-2 shim's ``INSERT … ON
#: CONFLICT (key)`` needs). Crossing one of these needs every other shim stopped first.
OFFLINE_MIGRATIONS = schema_offline_migrations()
#: The packages kubeadm's procedure upgrades, in its order.
KUBEADM_PACKAGE = "kubeadm"
NODE_PACKAGES = ("kubelet", "kubectl")


@dataclass(frozen=True)
class UpgradeOptions:
    """What ``k8s-sql upgrade`` was asked: ``mode`` ``apply`` (the first control plane) or
    ``node`` (every other node); ``target`` the Kubernetes version (``v1.35.0``);
    ``all_shims_stopped``: the user has stopped the shims of the other control planes, so
    an offline migration may run (see :data:`OFFLINE_MIGRATIONS`)."""

    mode: str
    target: str
    all_shims_stopped: bool = False


def apiserver_manifest(ctx: Context) -> str:
    return posixpath.join(ctx.config.paths.manifests_dir, "kube-apiserver.yaml")


def is_control_plane(ctx: Context) -> bool:
    """Whether the node runs a kube-apiserver static pod (kubeadm's manifest is there)."""
    return ctx.host.exists(apiserver_manifest(ctx))


def parse_version(text: str) -> tuple[int, int, int] | None:
    """``v1.34.2`` / ``1.34.2-1.1`` / ``registry.k8s.io/kube-apiserver:v1.34.2`` -> ``(1, 34, 2)``."""
    m = re.search(r"v?(\d+)\.(\d+)\.(\d+)", text or "")
    return tuple(int(g) for g in m.groups()) if m else None  # type: ignore[return-value]


def node_version(ctx: Context) -> str | None:
    """The Kubernetes version the node runs now: the kube-apiserver image's tag on a control
    plane, else ``kubelet --version``; ``None`` when neither tells."""
    text = ctx.host.read_text(apiserver_manifest(ctx))
    if text is not None:
        m = re.search(r"image:\s*\S*kube-apiserver:(v[0-9][^\s\"']*)", text)
        if m:
            return m.group(1)
    if ctx.host.which("kubelet"):
        res = ctx.host.run(["kubelet", "--version"], check=False)
        v = parse_version(res.stdout)
        if res.ok and v:
            return "v%d.%d.%d" % v
    return None


def database_schema_version(ctx: Context) -> int | None:
    """The shim schema version in the datastore (``max(version)`` of ``schema_version``), read
    on the node with psql as the shim logs in (client certificate, verify-full); ``None``
    when it cannot be read (no psql, the server unreachable from here, no table yet)."""
    from k8s_sql.pg import connect

    cfg = ctx.config
    try:
        conninfo = connect.local_conninfo(cfg) if cfg.postgres.mode == "local" else \
            connect.external_conninfo(cfg.postgres.uri)[0]
    except K8sSqlError:
        return None
    if ctx.host.which("psql") is None:
        return None
    res = ctx.host.run(["psql", "-X", "-A", "-t", "-q", "-d", conninfo, "-c",
                        "SELECT coalesce(max(version), 0) FROM schema_version"], check=False, timeout=60,
                       env={"PGCONNECT_TIMEOUT": "10"})
    out = res.stdout.strip()
    return int(out) if res.ok and out.isdigit() else None


def offline_migrations(found: int, target: int) -> list[int]:
    """The migrations of :data:`OFFLINE_MIGRATIONS` that bringing a database at schema
    ``found`` to ``target`` runs (none from 0: no shim has used that database yet)."""
    if found == 0:
        return []
    return sorted(m for m in OFFLINE_MIGRATIONS if found < m <= target)


class UpgradePreflight(Phase):
    """Checks only (plans nothing): the target version is known, not older than the node's,
    at most one minor version ahead (kubeadm's skew policy), and ``apply`` runs on a control
    plane; a shim schema migration that needs all shims stopped is not crossed while others
    may run.

    Raises (from plan):
        K8sSqlError: as described, each with what to do.
    """

    name = "upgrade-preflight"
    title = "target version and shim schema"

    def __init__(self, opts: UpgradeOptions):
        self.opts = opts

    def plan(self, ctx: Context) -> list[Change]:
        target = parse_version(self.opts.target)
        if target is None:
            raise K8sSqlError(f"{self.opts.target!r} is not a Kubernetes version",
                              hint="give it as v1.MINOR.PATCH, e.g. --kubernetes-version v1.34.2")
        kconfig.api_version(self.opts.target)
        control_plane = is_control_plane(ctx)
        if self.opts.mode == "apply" and not control_plane:
            raise K8sSqlError("`upgrade apply` runs on the first control-plane node, and this node has no "
                              "kube-apiserver manifest", where=f"{ctx.host.name}:{apiserver_manifest(ctx)}",
                              hint="run `k8s-sql upgrade node` on workers")
        now = node_version(ctx)
        current = parse_version(now or "")
        ctx.console.print(f"  {ctx.host.name}: Kubernetes {now or 'unknown'} -> {self.opts.target}"
                          f" ({'control plane' if control_plane else 'worker'})", markup=False, highlight=False)
        if current:
            if target < current:
                raise K8sSqlError(f"the node runs Kubernetes {now}, newer than {self.opts.target}",
                                  where=ctx.host.name, hint="kubeadm does not downgrade; give a newer version")
            if target[1] > current[1] + 1:
                raise K8sSqlError(f"{now} -> {self.opts.target} skips a minor version", where=ctx.host.name,
                                  hint=f"upgrade one minor version at a time: first to v1.{current[1] + 1}.x")
        if control_plane:
            self._schema(ctx)
        return []

    def _schema(self, ctx: Context) -> None:
        from k8s_sql.shim.storage.schema import SCHEMA_VERSION

        if ctx.config.shim.kind != "k8s-sql":
            return
        found = database_schema_version(ctx)
        if found is None:
            ctx.console.print(f"  note: could not read the shim schema version from the datastore; migrations "
                              f"{', '.join(map(str, sorted(OFFLINE_MIGRATIONS)))} need every other shim stopped "
                              "(README, upgrade)", markup=False, highlight=False)
            return
        offline = offline_migrations(found, SCHEMA_VERSION)
        ctx.console.print(f"  shim schema {found} -> {SCHEMA_VERSION}" + (
            f" (offline migration {', '.join(map(str, offline))})" if offline else " (online)"),
            markup=False, highlight=False)
        if offline and not self.opts.all_shims_stopped:
            raise K8sSqlError(
                f"the new shim migrates the datastore schema from {found} to {SCHEMA_VERSION}, and migration "
                f"{', '.join(map(str, offline))} breaks shims of the old schema still running on other "
                "control-plane nodes", where=ctx.host.name,
                hint="on every other control-plane node move kube-apiserver.yaml out of the manifests directory "
                     "(its shim stops), then run again with --all-shims-stopped; `k8s-sql upgrade node` there "
                     "brings them back")


class KubeadmPackage(Phase):
    """The pkgs.k8s.io repository of the target minor version and the kubeadm package of the
    target version (``apt-mark unhold``, install, ``apt-mark hold``), as kubeadm's
    procedure does first on every node. No change when kubeadm is already at the version."""

    name = "upgrade-kubeadm"
    title = "kubeadm of the target version"

    def __init__(self, opts: UpgradeOptions, packages: tuple[str, ...] = (KUBEADM_PACKAGE,)):
        self.opts, self.packages = opts, packages

    def plan(self, ctx: Context) -> list[Change]:
        minor = kconfig.minor(self.opts.target)
        repo = prereqs.kubernetes_repo(minor)
        changes: list[Change | None] = []
        source = file_change(ctx.host, repo.list_file, (repo.line + "\n").encode(), 0o644)
        if source is not None:
            source.backup, source.backup_dir = True, ctx.config.paths.backup_dir
        changes.append(source)
        pattern = prereqs.kube_version_pattern(self.opts.target)
        installed = prereqs.installed_packages(ctx, list(self.packages))
        todo = [p for p in self.packages if p not in installed or not fnmatch.fnmatchcase(installed[p][1], pattern)]
        if todo:
            changes.append(install_held(todo, pattern, repo.line))
        return [c for c in changes if c is not None]


def install_held(packages: list[str], pattern: str, repo_line: str) -> Action:
    """``apt-mark unhold``, ``apt-get update``, ``apt-get install PKG=PATTERN…``, ``apt-mark hold``."""
    return prereqs.commands(
        f"install {' '.join(f'{p}={pattern}' for p in packages)} (unhold, install, hold)",
        [["apt-mark", "unhold", *packages],
         ["apt-get", *prereqs.APT_OPTIONS[:2], "update"],
         ["apt-get", *prereqs.APT_OPTIONS, "install", "-y", "--no-install-recommends",
          "--allow-change-held-packages", *(f"{p}={pattern}" for p in packages)],
         ["apt-mark", "hold", *packages]],
        env=prereqs.APT_ENV, detail=f"repository: {repo_line}")


def node_patch(text: str, cfg, source: str) -> str:
    """A joined control plane's own sidecar patch with the configured shim image (its
    datastore address, rendered by ``join``, is kept).

    Raises:
        K8sSqlError: the patch is not YAML or has no etcd-shim container.
    """
    doc = yamlio.load(text, source)
    containers = ((doc or {}).get("spec") or {}).get("containers") or []
    side = next((c for c in containers if isinstance(c, dict) and c.get("name") == sidecar.CONTAINER_NAME), None)
    if side is None:
        raise K8sSqlError(f"the sidecar patch has no {sidecar.CONTAINER_NAME} container", where=source,
                          hint="run `k8s-sql join --control-plane` for this node again, or restore the patch")
    side["image"] = cfg.shim_image
    head = "".join(line + "\n" for line in text.splitlines() if line.startswith("#"))
    return head + yamlio.dump(doc)


class UpgradeFiles(Phase):
    """The sidecar patch in ``paths.patchesDir``; for v1beta4 targets kubeadm's
    UpgradeConfiguration (:func:`k8s_sql.kubeadm.config.upgrade_config_path`); on the first
    control plane (``apply``) the recorded configuration ``join`` reads, with the new version.
    All 0600."""

    name = "upgrade-files"
    title = "the shim patch and kubeadm's UpgradeConfiguration"

    def __init__(self, opts: UpgradeOptions):
        self.opts = opts

    def plan(self, ctx: Context) -> list[Change]:
        cfg = ctx.config
        patch_path = posixpath.join(cfg.paths.patches_dir, sidecar.PATCH_FILE)
        old = ctx.host.read_text(patch_path)
        if self.opts.mode == "node" and old is not None:
            text = node_patch(old, cfg, patch_path)
        else:
            text = sidecar.patch_text(cfg)
        changes = [file_change(ctx.host, patch_path, text.encode(), 0o600, owner="root", group="root")]
        record = init_config_path(cfg)
        if self.opts.mode == "apply" and ctx.host.exists(record):  # what `join` installs on new nodes
            changes.append(file_change(ctx.host, record, configmod.dump(cfg).encode(), 0o600, owner="root",
                                       group="root"))
        upgrade = kconfig.render_upgrade(cfg, self.opts.target)
        if upgrade is not None:
            changes.append(file_change(ctx.host, kconfig.upgrade_config_path(cfg), upgrade.encode(), 0o600,
                                       owner="root", group="root"))
        return [c for c in changes if c is not None]


def kubeadm_upgrade_argv(ctx: Context, opts: UpgradeOptions, control_plane: bool = True) -> list[str]:
    """``kubeadm upgrade apply <version> …`` or ``kubeadm upgrade node …``, with the patches:
    ``--config <UpgradeConfiguration>`` for v1beta4 targets (>= 1.31), ``--patches <dir>``
    for 1.22–1.30 (a worker has no patches). ``apply`` gets ``--yes`` only without
    ``--config``: kubeadm refuses ``--yes`` beside ``--config`` (ValidateMixedArguments), so
    there its confirmation is answered on stdin (:func:`kubeadm_upgrade_input`)."""
    cfg = ctx.config
    argv = ["kubeadm", "upgrade", opts.mode] + ([opts.target] if opts.mode == "apply" else [])
    if control_plane:
        if kconfig.render_upgrade(cfg, opts.target) is not None:
            argv += ["--config", kconfig.upgrade_config_path(cfg)]
        else:
            argv += ["--patches", cfg.paths.patches_dir]
    if opts.mode == "apply" and "--config" not in argv:
        argv.append("--yes")
    return argv


def kubeadm_upgrade_input(argv: list[str]) -> str | None:
    """What ``kubeadm upgrade apply --config …`` reads from stdin: "y" to its "Are you sure you
    want to proceed?" (the only way to confirm with a configuration file); ``None`` otherwise."""
    return "y\n" if argv[:3] == ["kubeadm", "upgrade", "apply"] and "--config" in argv else None


def kubeadm_needed(ctx: Context, opts: UpgradeOptions) -> bool:
    """Whether ``kubeadm upgrade`` has to run: the node is not at the target version yet, or
    (control plane) its manifest runs another shim image than the configured one — a new
    k8s-sql release rolls its shim with kubeadm's next manifest write, even at the same
    Kubernetes version. A manifest at the target without the shim at all is repaired
    without kubeadm (:class:`ShimCheck`)."""
    if node_version(ctx) != opts.target:
        return True
    text = ctx.host.read_text(apiserver_manifest(ctx))
    if text is None:
        return False
    try:
        pod = yamlio.plain(yamlio.load(text, apiserver_manifest(ctx)))
        containers = pod["spec"]["containers"]
    except (K8sSqlError, KeyError, TypeError):
        return False
    side = next((c for c in containers if isinstance(c, dict) and c.get("name") == sidecar.CONTAINER_NAME), None)
    return side is not None and side.get("image") != ctx.config.shim_image


class KubeadmUpgrade(Phase):
    """``kubeadm upgrade apply|node`` (:func:`kubeadm_upgrade_argv`), output streamed, when
    :func:`kubeadm_needed`.

    Raises (from apply):
        K8sSqlError: kubeadm fails (its output is above; kubeadm rolls the manifests back).
    """

    name = "upgrade-kubeadm-run"
    title = "kubeadm upgrade with the shim patch"

    def __init__(self, opts: UpgradeOptions):
        self.opts = opts

    def plan(self, ctx: Context) -> list[Change]:
        control_plane = is_control_plane(ctx)
        if not kubeadm_needed(ctx, self.opts):
            return []
        argv = kubeadm_upgrade_argv(ctx, self.opts, control_plane)
        detail = ("kubeadm rewrites the control-plane static pods; the patches directory makes it merge the etcd "
                  "shim sidecar into kube-apiserver.yaml" if control_plane else
                  "kubeadm upgrades the kubelet configuration of this worker")
        return [Action(" ".join(argv), lambda c: self._run(c, argv), detail=detail, argvs=[argv])]

    def _run(self, ctx: Context, argv: list[str]) -> None:
        res = ctx.host.run(argv, stream=True, check=False, timeout=3600, input=kubeadm_upgrade_input(argv))
        if not res.ok:
            raise K8sSqlError(f"{' '.join(argv[:3])} failed (exit {res.returncode})", where=ctx.host.name,
                              hint="see kubeadm's output above (kubeadm rolls its manifests back on failure); "
                                   "fix the cause and run `k8s-sql upgrade` again. Do not run `kubeadm reset`: it "
                                   "empties /etc/kubernetes/pki, the datastore certificates with it")


def repair(ctx: Context) -> list[Change]:
    """A rewrite of kube-apiserver.yaml with the shim put back (``patch-manifest``'s logic,
    the old manifest kept in ``paths.backupDir``), or ``[]`` when it runs the shim.

    Raises:
        K8sSqlError: the manifest is missing or cannot be patched; ``patch-manifest``'s
            safety checks refuse (datastore certificates missing, an etcd static pod).
    """
    cfg, path = ctx.config, apiserver_manifest(ctx)
    text = ctx.host.read_text(path)
    if text is None:
        raise K8sSqlError("kube-apiserver.yaml is missing after kubeadm upgrade", where=path,
                          hint="see kubeadm's output above")
    problem = shim_problem(text, cfg)
    if problem is None:
        return []
    api = manifest.apiserver_container(manifest.load_pod(text, path), path)
    notes = manifest.check_safe(ctx.host, cfg, path, api, allow_empty_datastore=False)  # pki there, no etcd pod
    for note in notes:
        ctx.console.print(f"  note: {note}", markup=False, highlight=False)
    new, version = manifest.patch_text(text, cfg, path)
    info = ctx.host.stat(path)
    tmp_dir = posixpath.join(posixpath.dirname(posixpath.dirname(path.rstrip("/"))) or "/", "tmp")
    return [WriteFile(path, new.encode(), info.mode if info else 0o600, backup=True, backup_dir=cfg.paths.backup_dir,
                      tmp_dir=tmp_dir, note=f"put the etcd shim back: {problem}; valid for Kubernetes {version}")]


class ShimCheck(Phase):
    """After kubeadm wrote kube-apiserver.yaml: it must still run the configured shim; if
    not (kubeadm ran without the patches, or a patch did not apply) it is repaired at once
    (:func:`repair`). Control planes only.

    Raises (from verify):
        K8sSqlError: the manifest still does not run the shim.
    """

    name = "upgrade-shim-check"
    title = "kube-apiserver.yaml still runs the etcd shim"

    def __init__(self, opts: UpgradeOptions):
        self.opts = opts

    def plan(self, ctx: Context) -> list[Change]:
        if not is_control_plane(ctx):
            return []
        if not kubeadm_needed(ctx, self.opts):
            return repair(self._own(ctx))
        return [pending("check that kube-apiserver.yaml runs the etcd shim, repair it (patch-manifest) if not",
                        "kubeadm upgrade writes it", lambda c: repair(self._own(c)))]

    def _own(self, ctx: Context) -> Context:
        """``upgrade node``: the node's shim reaches the datastore where its own patch says
        (``join`` rendered it with the first node's address); ``apply``: as configured."""
        if self.opts.mode != "node":
            return ctx
        return dataclasses.replace(ctx, config=patch_datastore_config(ctx))

    def verify(self, ctx: Context) -> None:
        if not is_control_plane(ctx):
            return
        own = self._own(ctx)
        problem = shim_problem(own.host.read_text(apiserver_manifest(own)) or "", own.config)
        if problem:
            raise K8sSqlError(f"kube-apiserver.yaml does not run the etcd shim: {problem}",
                              where=apiserver_manifest(ctx), hint="run `k8s-sql patch-manifest`")


def patch_datastore_config(ctx: Context):
    """``ctx.config`` with ``postgres.host``/``port`` as the node's sidecar patch has them
    (``--datastore``/``--endpoint`` of the etcd-shim container), for ``postgres.mode: local``;
    the configuration itself when the patch is missing or agrees."""
    cfg = ctx.config
    path = posixpath.join(cfg.paths.patches_dir, sidecar.PATCH_FILE)
    text = ctx.host.read_text(path)
    if text is None or cfg.postgres.mode != "local":
        return cfg
    try:
        doc = yamlio.plain(yamlio.load(text, path))
        containers = doc["spec"]["containers"]
    except (K8sSqlError, KeyError, TypeError):
        return cfg
    for c in containers:
        if not isinstance(c, dict) or c.get("name") != sidecar.CONTAINER_NAME:
            continue
        for arg in c.get("args") or []:
            name, _, value = str(arg).partition("=")
            if name in ("--datastore", "--endpoint"):
                u = urlsplit(value)
                if u.hostname and (u.hostname, u.port or 5432) != (cfg.postgres.host, cfg.postgres.port):
                    own = copy.deepcopy(cfg)
                    own.postgres.host, own.postgres.port = u.hostname, u.port or 5432
                    return own
    return cfg


def kubectl_argv(ctx: Context, *args: str) -> list[str]:
    return ["kubectl", "--kubeconfig", ctx.config.paths.kubeconfig, *args]


class KubeletUpgrade(Phase):
    """kubeadm's procedure for the kubelet: drain the node, unhold/install/hold kubelet and
    kubectl of the target version, ``systemctl daemon-reload``, restart the kubelet,
    uncordon. Drain and uncordon need the admin kubeconfig: on a worker (none there) they are
    left to the user, said so. No change when both packages are at the version."""

    name = "upgrade-kubelet"
    title = "drain, kubelet and kubectl of the target version, uncordon"

    def __init__(self, opts: UpgradeOptions):
        self.opts = opts

    def plan(self, ctx: Context) -> list[Change]:
        pattern = prereqs.kube_version_pattern(self.opts.target)
        installed = prereqs.installed_packages(ctx, list(NODE_PACKAGES))
        todo = [p for p in NODE_PACKAGES if p not in installed or not fnmatch.fnmatchcase(installed[p][1], pattern)]
        if not todo:
            return []
        node = ctx.config.node.name
        admin = ctx.host.exists(ctx.config.paths.kubeconfig)
        changes: list[Change] = []
        if admin:
            drain = kubectl_argv(ctx, "drain", node, "--ignore-daemonsets")
            changes.append(prereqs.commands(f"drain node {node}", [drain]))
        else:
            ctx.console.print(f"  note: no admin kubeconfig here: drain {node} from a control-plane node first "
                              f"(kubectl drain {node} --ignore-daemonsets) and uncordon it after", markup=False,
                              highlight=False)
        changes.append(install_held(todo, pattern, prereqs.kubernetes_repo(kconfig.minor(self.opts.target)).line))
        changes.append(prereqs.commands("restart the kubelet", [["systemctl", "daemon-reload"],
                                                                ["systemctl", "restart", "kubelet"]]))
        if admin:
            changes.append(prereqs.commands(f"uncordon node {node}", [kubectl_argv(ctx, "uncordon", node)]))
        return changes


class UpgradeVerify(Phase):
    """Plans nothing; verify: the API server's ``/readyz`` answers ``ok`` (waited for up to
    :attr:`timeout` seconds: the kubelet restarts the static pods). Skipped without the admin
    kubeconfig (a worker).

    Raises (from verify):
        K8sSqlError: ``/readyz`` does not answer ``ok`` in time.
    """

    name = "upgrade-verify"
    title = "the API server answers /readyz"
    timeout = 180.0
    interval = 3.0

    def plan(self, ctx: Context) -> list[Change]:
        return []

    def verify(self, ctx: Context) -> None:
        if not ctx.host.exists(ctx.config.paths.kubeconfig):
            return
        deadline = time.monotonic() + self.timeout
        while True:
            res = ctx.host.run(kubectl_argv(ctx, "get", "--raw", "/readyz"), check=False, timeout=30)
            if res.ok and res.stdout.strip() == "ok":
                ctx.console.print("  /readyz: ok", markup=False, highlight=False)
                return
            if time.monotonic() >= deadline:
                raise K8sSqlError(f"the API server is not ready after the upgrade: "
                                  f"{(res.stdout or res.stderr).strip()[:300]}", where=ctx.host.name,
                                  hint="see `kubectl get --raw '/readyz?verbose'` and `crictl logs` of the etcd-shim "
                                       "container")
            time.sleep(self.interval)


#: Phase names of ``k8s-sql upgrade`` in order (``--skip-phases`` takes these).
PHASE_NAMES = ("upgrade-preflight", "upgrade-kubeadm", "shim", "upgrade-files", "upgrade-kubeadm-run",
               "upgrade-shim-check", "upgrade-kubelet", "upgrade-verify")


def phases(ctx: Context, opts: UpgradeOptions, skip: frozenset[str] = frozenset()) -> list[Phase]:
    """The phases of ``upgrade apply``/``upgrade node`` for the node of ``ctx`` (a worker has
    no shim, patch or manifest check)."""
    control_plane = is_control_plane(ctx)
    out: list[Phase] = [UpgradePreflight(opts), KubeadmPackage(opts)]
    if control_plane:
        if ctx.config.shim.kind == "k8s-sql":
            out.append(load_phase("shim"))
        out.append(UpgradeFiles(opts))
    out.append(KubeadmUpgrade(opts))
    if control_plane:
        out.append(ShimCheck(opts))
    out += [KubeletUpgrade(opts), UpgradeVerify()]
    return [p for p in out if p.name not in skip]


def kubeadm_plan(ctx: Context, opts: UpgradeOptions) -> str:
    """What kubeadm would upgrade: the output of the node's ``kubeadm upgrade plan <version>``
    (read-only), or why it could not run."""
    if ctx.host.which("kubeadm") is None:
        return "kubeadm is not installed on this node"
    res = ctx.host.run(["kubeadm", "upgrade", "plan", opts.target], check=False, timeout=600)
    text = (res.stdout + ("\n" + res.stderr if res.stderr.strip() else "")).strip()
    return text if res.ok else f"kubeadm upgrade plan failed (exit {res.returncode}):\n{text}"
