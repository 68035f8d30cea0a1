"""Phase ``post``: the admin kubeconfig for the user (in a ``~/.kube`` the user owns), the
control-plane taint of a single-node cluster, and a final health check: the API server's
``/readyz``, no etcd pod, and the node's Ready condition (waited for; a node still NotReady
— no pod network yet — is a warning that says what to do, since the control plane works)."""

from __future__ import annotations

import json
import posixpath
import time

from rich.markup import escape

from k8s_sql.errors import K8sSqlError
from k8s_sql.phases.base import Action, Change, Context, Phase, file_change, pending
from k8s_sql.state import missing_dirs

TAINT_KEY = "node-role.kubernetes.io/control-plane"
#: The taint kubeadm <= 1.23 sets instead (1.24 sets both, 1.25 and later only :data:`TAINT_KEY`).
LEGACY_TAINT_KEY = "node-role.kubernetes.io/master"
TAINT_KEYS = (TAINT_KEY, LEGACY_TAINT_KEY)


def home_of(ctx: Context, user: str) -> str:
    """Home directory of ``user`` on the host (``getent passwd``).

    Raises:
        K8sSqlError: no such user.
    """
    res = ctx.host.run(["getent", "passwd", user], check=False)
    fields = res.stdout.strip().split(":")
    if not res.ok or len(fields) < 6:
        raise K8sSqlError(f"user {user!r} not found", where=ctx.host.name, hint="unset SUDO_USER or create the user")
    return fields[5]


def kubectl(ctx: Context, *args: str, check: bool = True):
    """Run ``kubectl --kubeconfig <paths.kubeconfig> ...`` on the host."""
    return ctx.host.run(["kubectl", "--kubeconfig", ctx.config.paths.kubeconfig, *args], check=check)


def control_plane_taints(ctx: Context) -> list[str]:
    """The control-plane ``NoSchedule`` taints (keys of :data:`TAINT_KEYS`) this node has,
    as kubeadm set them for its version (kubectl get node -o json).

    Raises:
        K8sSqlError: kubectl cannot read the node.
    """
    res = kubectl(ctx, "get", "node", ctx.config.node.name, "-o", "json", check=False)
    if not res.ok:
        raise K8sSqlError(f"cannot read node {ctx.config.node.name}: {(res.stderr or res.stdout).strip()}",
                          where=ctx.host.name, hint="check `kubectl get nodes` and node.name in the configuration")
    taints = (json.loads(res.stdout).get("spec") or {}).get("taints") or []
    return [k for k in TAINT_KEYS if any(t.get("key") == k and t.get("effect") == "NoSchedule" for t in taints)]


def own_dir_action(path: str, user: str, *, create: bool) -> Action:
    """Create ``path`` (0700) if ``create``, and give it to ``user`` and the user's primary
    group: ``~/.kube`` belongs to the user it is for, not to root who runs k8s-sql (kubectl
    writes its cache there). A directory created is recorded in ``ctx.state``."""

    def apply(ctx: Context) -> None:
        host = ctx.host
        new = missing_dirs(host, path + "/.") if create else []
        if create:
            host.makedirs(path, 0o700)
        res = host.run(["id", "-g", user], check=False)
        host.chown(path, user, res.stdout.strip() if res.ok and res.stdout.strip() else None)
        if ctx.state is not None and new:
            ctx.state.record_dirs(host, new)

    return Action(f"create {path} (0700) owned by {user}" if create else f"give {path} to {user}", apply,
                  argvs=[["id", "-g", user], ["chown", "-h", user, path]])


class Post(Phase):
    """Copies ``paths.kubeconfig`` to ``~<user>/.kube/config`` (0600, owned by the user who
    ran sudo, root otherwise); on a single-node cluster removes the control-plane taint if
    present (``…/control-plane``, or ``…/master`` as kubeadm <= 1.23 sets it). Verify: ``/readyz`` answers ``ok`` and kube-system has no etcd pod.

    Before kubeadm-init has written admin.conf, both are one pending step, planned the same
    way in a dry run and a real one; applying it raises when admin.conf is still missing.

    Raises:
        K8sSqlError: admin.conf missing when applied (kubeadm-init not run), kubectl
            failures, an etcd pod.
    """

    name = "post"
    title = "admin kubeconfig, single-node taint, health check"

    def plan(self, ctx: Context) -> list[Change]:
        cfg = ctx.config
        if ctx.host.read_bytes(cfg.paths.kubeconfig) is None:
            what = f"copy {cfg.paths.kubeconfig} to ~{ctx.options.invoking_user}/.kube/config"
            if cfg.kubernetes.single_node:
                what += f", remove the control-plane NoSchedule taint from node {cfg.node.name} (single node)"
            return [pending(what, "kubeadm-init writes it", self._plan_with_admin,
                            argvs=[["getent", "passwd", ctx.options.invoking_user], ["kubectl", "get", "node"],
                                   ["kubectl", "taint", "nodes"]])]
        return self._plan_with_admin(ctx)

    def _plan_with_admin(self, ctx: Context) -> list[Change]:
        """The changes once admin.conf exists.

        Raises:
            K8sSqlError: admin.conf is missing.
        """
        host, cfg = ctx.host, ctx.config
        admin = host.read_bytes(cfg.paths.kubeconfig)
        if admin is None:
            raise K8sSqlError("the admin kubeconfig is missing", where=cfg.paths.kubeconfig,
                              hint="run `k8s-sql init phase kubeadm-init` first")
        user = ctx.options.invoking_user
        kube_dir = posixpath.join(home_of(ctx, user), ".kube")
        target = posixpath.join(kube_dir, "config")
        changes: list[Change] = []
        info = host.stat(kube_dir)
        if info is None or info.owner != user:
            changes.append(own_dir_action(kube_dir, user, create=info is None))
        write = file_change(host, target, admin, 0o600, owner=user)
        if write:
            changes.append(write)
        for key in control_plane_taints(ctx) if cfg.kubernetes.single_node else []:
            node = cfg.node.name
            changes.append(Action(f"remove the {key}:NoSchedule taint from node {node} (single node)",
                                  lambda c, key=key: kubectl(c, "taint", "nodes", node, f"{key}:NoSchedule-"),
                                  argvs=[["kubectl", "taint", "nodes", node, f"{key}:NoSchedule-"]]))
        return changes

    def verify(self, ctx: Context) -> None:
        res = kubectl(ctx, "get", "--raw", "/readyz", check=False)
        if not res.ok or res.stdout.strip() != "ok":
            raise K8sSqlError(f"the API server is not ready: {(res.stdout or res.stderr).strip()[:300]}",
                              where=ctx.host.name,
                              hint="see `kubectl get --raw '/readyz?verbose'` and the etcd-shim container's logs")
        res = kubectl(ctx, "get", "pods", "-n", "kube-system", "-l", "component=etcd", "-o", "name")
        if res.stdout.strip():
            raise K8sSqlError(f"kube-system runs an etcd pod ({res.stdout.strip()}); the state should be in PostgreSQL",
                              where=ctx.host.name, hint="the kubeadm configuration must use etcd.external")
        self._wait_ready(ctx)

    #: How long verify waits for the node to become Ready (seconds), and between looks.
    ready_timeout = 120.0
    ready_interval = 5.0

    def _wait_ready(self, ctx: Context) -> None:
        """Wait up to :attr:`ready_timeout` for the node's Ready condition; if it stays
        NotReady, say why (the kubelet's message) and what to do — a warning, not an error:
        the API server and the datastore work, and a pod network may come after init."""
        cfg = ctx.config
        deadline = time.monotonic() + self.ready_timeout
        while True:
            status, message = node_ready(ctx)
            if status == "True":
                ctx.console.print(f"  node {cfg.node.name} is Ready", markup=False, highlight=False)
                return
            if time.monotonic() >= deadline:
                break
            time.sleep(self.ready_interval)
        if cfg.kubernetes.single_node:
            what = ("prereqs wrote a bridge network for the pods unless /etc/cni/net.d had one; check that "
                    "directory and the plugins in /opt/cni/bin, then `journalctl -u kubelet`")
        else:
            what = (f"install a pod network add-on for podSubnet {cfg.kubernetes.pod_subnet} (e.g. flannel, "
                    "see README), then the node becomes Ready")
        ctx.console.print(f"  [yellow]warning:[/yellow] node {escape(cfg.node.name)} is not Ready "
                          f"({escape(message or status or 'no Ready condition')}) after {self.ready_timeout:.0f} s: "
                          f"{escape(what)}")


def node_ready(ctx: Context) -> tuple[str, str]:
    """``(status, message)`` of this node's ``Ready`` condition (``"True"``, ``"False"``,
    ``"Unknown"``; ``""`` when the node or the condition is not there yet)."""
    res = kubectl(ctx, "get", "node", ctx.config.node.name, "-o", "json", check=False)
    if not res.ok:
        return "", (res.stderr or res.stdout).strip()[:200]
    for cond in (json.loads(res.stdout).get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return str(cond.get("status", "")), str(cond.get("message", ""))
    return "", ""
