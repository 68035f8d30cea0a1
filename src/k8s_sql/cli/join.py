"""``k8s-sql join``: add a worker, or another control-plane node, to a k8s-sql cluster.

The node that joins is ``--host`` (over SSH) or this machine; the first control-plane node
is ``--control-plane-host`` (over SSH) or this machine. Steps, as phases on the joining node:

1. ``prereqs`` (container runtime, kubeadm/kubelet/kubectl, …), and for a control-plane
   node also ``shim`` (the shim's image on that node);
2. ``join``: for a control-plane node, the k8s-sql pki directory and the patches directory
   (the shim sidecar patch) are copied from the first node with their modes and owners, so
   its kube-apiserver runs its own shim against the same PostgreSQL; then, at apply time
   (a dry run creates no token), a fresh join command from the first node
   (``kubeadm token create --print-join-command``; for a control plane also
   ``kubeadm init phase upload-certs --upload-certs`` for the certificate key) is run there
   with ``kubeadm join`` (plus ``--control-plane --certificate-key … --patches DIR``).
   Tokens and keys are never printed. A node that has ``kubelet.conf`` is already joined.
"""

from __future__ import annotations

import posixpath
import re
import shlex
from typing import Annotated, Optional

import typer

from k8s_sql.cli import common
from k8s_sql.errors import K8sSqlError
from k8s_sql.host import Host
from k8s_sql.phases.base import Action, Change, Context, Phase, file_change
from k8s_sql.phases.runner import load_phase, run_phases

app = typer.Typer(name="join", help="Join a worker (or, with --control-plane, another control-plane node running "
                  "its own shim against the same PostgreSQL) to the cluster of the first control-plane node.")


def kubelet_conf(ctx: Context) -> str:
    """``kubelet.conf`` beside ``paths.kubeconfig`` (kubeadm writes both in /etc/kubernetes)."""
    return posixpath.join(posixpath.dirname(ctx.config.paths.kubeconfig), "kubelet.conf")


def join_command(cp: Host, control_plane: bool) -> list[str]:
    """A fresh ``kubeadm join`` argv from the first node (token TTL 15 minutes); for a
    control plane with ``--control-plane --certificate-key KEY``.

    Raises:
        K8sSqlError: kubeadm on the first node fails or prints something unexpected.
    """
    res = cp.run(["kubeadm", "token", "create", "--print-join-command", "--ttl", "15m"], check=False)
    lines = [ln for ln in res.stdout.splitlines() if ln.strip().startswith("kubeadm join ")]
    if not res.ok or not lines:
        raise K8sSqlError(f"`kubeadm token create --print-join-command` failed: {(res.stderr or res.stdout).strip()}",
                          where=cp.name, hint="check that the first node's API server is up (`k8s-sql status`)")
    argv = shlex.split(lines[-1])
    if control_plane:
        res = cp.run(["kubeadm", "init", "phase", "upload-certs", "--upload-certs"], check=False)
        keys = re.findall(r"^([0-9a-f]{64})$", res.stdout, re.M)
        if not res.ok or not keys:
            raise K8sSqlError("`kubeadm init phase upload-certs --upload-certs` gave no certificate key",
                              where=cp.name, hint=(res.stderr or res.stdout).strip()[-300:] or None)
        argv += ["--control-plane", "--certificate-key", keys[-1]]
    return argv


def masked(argv: list[str]) -> str:
    """The command line with the token and certificate key replaced by ``***``."""
    out, hide = [], False
    for a in argv:
        out.append("***" if hide else a)
        hide = a in ("--token", "--certificate-key")
    return " ".join(out)


class Join(Phase):
    """The ``join`` step (see the module doc). ``cp`` is the first control-plane node."""

    name = "join"
    title = "kubeadm join with a fresh token from the first control-plane node"

    def __init__(self, cp: Host, control_plane: bool = False):
        self.cp = cp
        self.control_plane = control_plane

    def plan(self, ctx: Context) -> list[Change]:
        cfg, cp = ctx.config, self.cp
        if not cp.exists(cfg.paths.kubeconfig):
            raise K8sSqlError("the first control-plane node has no admin kubeconfig: it is not initialised",
                              where=f"{cp.name}:{cfg.paths.kubeconfig}",
                              hint="run `k8s-sql init` there first, or point --control-plane-host at it")
        if ctx.host.exists(kubelet_conf(ctx)):
            ctx.console.print(f"  {ctx.host.name} is already part of a cluster ({kubelet_conf(ctx)} exists)",
                              markup=False, highlight=False)
            return []
        changes: list[Change] = []
        if self.control_plane:
            for d in (cfg.paths.pki_dir, cfg.paths.patches_dir):
                names = cp.listdir(d)
                if not names:
                    raise K8sSqlError("nothing to copy to the new control-plane node", where=f"{cp.name}:{d}",
                                      hint="run `k8s-sql init` on the first node")
                for name in names:
                    path = posixpath.join(d, name)
                    info, data = cp.stat(path), cp.read_bytes(path)
                    if info is None or data is None:
                        continue
                    change = file_change(ctx.host, path, data, info.mode, owner=info.owner, group=info.group,
                                         secret=name.endswith(".key"))
                    if change:
                        changes.append(change)
        extra = ["--patches", cfg.paths.patches_dir] if self.control_plane else []
        kind = "control-plane node" if self.control_plane else "worker"
        changes.append(Action(
            f"kubeadm join as a {kind} (token from {cp.name})", lambda c: self._join(c, extra),
            detail="kubeadm token create --print-join-command"
            + (" and kubeadm init phase upload-certs --upload-certs" if self.control_plane else "")
            + f" on {cp.name}, then kubeadm join … {' '.join(extra)} on {ctx.host.name}"))
        return changes

    def _join(self, ctx: Context, extra: list[str]) -> None:
        argv = join_command(self.cp, self.control_plane) + extra
        ctx.console.print(f"  {masked(argv)}", markup=False, highlight=False)
        res = ctx.host.run(argv, stream=True, check=False, timeout=1800)
        if not res.ok:
            raise K8sSqlError(f"kubeadm join failed (exit {res.returncode})", where=ctx.host.name,
                              hint="see kubeadm's output above; `kubeadm reset -f` on the node before trying again")

    def verify(self, ctx: Context) -> None:
        if not ctx.host.exists(kubelet_conf(ctx)):
            raise K8sSqlError("kubeadm join finished but kubelet.conf is missing", where=ctx.host.name,
                              hint="see `journalctl -u kubelet` on the node")


@app.callback(invoke_without_command=True)
def join(
    config: common.ConfigOpt = None,
    dry_run: common.DryRunOpt = False,
    control_plane: Annotated[bool, typer.Option(
        "--control-plane", help="Join as another control-plane node with its own shim sidecar.")] = False,
    control_plane_host: Annotated[Optional[str], typer.Option(
        "--control-plane-host", help="The first control-plane node, user@address over SSH (default: this machine).",
        show_default=False)] = None,
    control_plane_ssh_port: Annotated[Optional[int], typer.Option(
        "--control-plane-ssh-port", help="SSH port of --control-plane-host (default: 22).", show_default=False)] = None,
    skip_phases: Annotated[Optional[list[str]], typer.Option(
        "--skip-phases", help="Phases to skip on the joining node: prereqs, shim.", show_default=False)] = None,
    host: common.SshHostOpt = None,
    ssh_key: common.SshKeyOpt = None,
    ssh_port: common.SshPortOpt = None,
    ssh_known_hosts: common.SshKnownHostsOpt = None,
) -> None:
    """Join --host (or this machine) to the cluster of --control-plane-host (or this machine).
    --ssh-key and --ssh-known-hosts apply to both SSH connections."""
    if host is None and control_plane_host is None:
        raise typer.BadParameter("give the node to join (--host) or the first control-plane node "
                                 "(--control-plane-host); they cannot both be this machine", param_hint="--host")
    skipped = {s.strip() for item in (skip_phases or []) for s in item.split(",") if s.strip()}
    if skipped - {"prereqs", "shim"}:
        raise typer.BadParameter("only prereqs and shim can be skipped", param_hint="--skip-phases")
    cfg = common.load_config(config)
    if control_plane_host is not None:
        cp = common.target_host(control_plane_host, ssh_key, control_plane_ssh_port, ssh_known_hosts)
    else:
        cp = common.target_host(None)
    target = common.target_host(host, ssh_key if host else None, ssh_port, ssh_known_hosts if host else None)
    phases: list[Phase] = []
    if "prereqs" not in skipped:
        phases.append(load_phase("prereqs"))
    if control_plane and "shim" not in skipped:
        phases.append(load_phase("shim"))
    phases.append(Join(cp, control_plane))
    run_phases(phases, common.make_context(cfg, dry_run=dry_run, host=target))
