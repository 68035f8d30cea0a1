"""Phase ``post``: the admin kubeconfig for the user, the control-plane taint of a
single-node cluster, and a final health check of the API server."""

from __future__ import annotations

import json
import os
import posixpath

from k8s_sql.errors import K8sSqlError
from k8s_sql.phases.base import Action, Change, Context, Phase, file_change

TAINT_KEY = "node-role.kubernetes.io/control-plane"


def invoking_user() -> str:
    """The user who ran ``sudo k8s-sql`` (``SUDO_USER``), else ``root``."""
    user = os.environ.get("SUDO_USER", "")
    return user if user and user != "root" else "root"


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


def has_taint(ctx: Context) -> bool:
    """Whether this node has the control-plane ``NoSchedule`` taint (kubectl get node -o json).

    Raises:
        K8sSqlError: kubectl cannot read the node.
    """
    res = kubectl(ctx, "get", "node", ctx.config.node.name, "-o", "json", check=False)
    if not res.ok:
        raise K8sSqlError(f"cannot read node {ctx.config.node.name}: {(res.stderr or res.stdout).strip()}",
                          where=ctx.host.name, hint="check `kubectl get nodes` and node.name in the configuration")
    taints = (json.loads(res.stdout).get("spec") or {}).get("taints") or []
    return any(t.get("key") == TAINT_KEY and t.get("effect") == "NoSchedule" for t in taints)


class Post(Phase):
    """Copies ``paths.kubeconfig`` to ``~<user>/.kube/config`` (0600, owned by the user who
    ran sudo, root otherwise); on a single-node cluster removes the control-plane taint if
    present. Verify: ``/readyz`` answers ``ok`` and kube-system has no etcd pod.

    Raises:
        K8sSqlError: admin.conf missing (kubeadm-init not run), kubectl failures, an etcd pod.
    """

    name = "post"
    title = "admin kubeconfig, single-node taint, health check"

    def plan(self, ctx: Context) -> list[Change]:
        host, cfg = ctx.host, ctx.config
        admin = host.read_bytes(cfg.paths.kubeconfig)
        if admin is None:
            if not ctx.dry_run:
                raise K8sSqlError("the admin kubeconfig is missing", where=cfg.paths.kubeconfig,
                                  hint="run `k8s-sql init phase kubeadm-init` first")
            return [Action(f"copy {cfg.paths.kubeconfig} to the user's ~/.kube/config once kubeadm wrote it",
                           lambda c: None)]
        user = ctx.facts.get("invoking_user") or invoking_user()
        target = posixpath.join(home_of(ctx, user), ".kube", "config")
        changes: list[Change] = []
        write = file_change(host, target, admin, 0o600, owner=user)
        if write:
            changes.append(write)
        if cfg.kubernetes.single_node and has_taint(ctx):
            node = cfg.node.name
            changes.append(Action(f"remove the {TAINT_KEY}:NoSchedule taint from node {node} (single node)",
                                  lambda c: kubectl(c, "taint", "nodes", node, f"{TAINT_KEY}:NoSchedule-")))
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
