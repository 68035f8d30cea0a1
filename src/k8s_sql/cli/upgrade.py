"""``k8s-sql upgrade plan|apply|node``: kubeadm's upgrade procedure with the etcd shim kept
(the steps are in :mod:`k8s_sql.phases.upgrade`)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from k8s_sql.cli import common
from k8s_sql.phases import upgrade as up
from k8s_sql.phases.runner import run_phases

app = typer.Typer(
    name="upgrade",
    help="Upgrade Kubernetes (and the etcd shim) the way kubeadm documents it, always giving kubeadm the "
    "directory of the shim patch, so the new kube-apiserver manifest keeps the shim; then check that it does "
    "(repairing it if not) and that /readyz answers.\n\n"
    "Order: `upgrade plan`, `upgrade apply` on the first control-plane node, then `upgrade node` on each other "
    "control-plane node, then on each worker.",
    no_args_is_help=True,
)

TargetOpt = Annotated[Optional[str], typer.Option(
    "--kubernetes-version", help="Version to upgrade to, e.g. v1.35.0 \\[default: kubernetes.version of the "
    "configuration].", show_default=False)]
SkipOpt = Annotated[Optional[list[str]], typer.Option(
    "--skip-phases", help="Phases to skip (repeat the flag, or separate with commas): "
    + ", ".join(up.PHASE_NAMES) + ".", show_default=False)]
StoppedOpt = Annotated[bool, typer.Option(
    "--all-shims-stopped", help="The shims of every other control-plane node are stopped (their "
    "kube-apiserver.yaml moved out of the manifests directory): allows a shim schema migration that old "
    "shims cannot run beside (README, upgrade).")]


def _run(mode: str, config, dry_run: bool, target: str | None, skip_phases, all_shims_stopped: bool, host, ssh_key,
         ssh_port, ssh_known_hosts) -> None:
    cfg = common.load_config(config, kubernetes_version=target)
    skipped = {s.strip() for item in (skip_phases or []) for s in item.split(",") if s.strip()}
    unknown = skipped - set(up.PHASE_NAMES)
    if unknown:
        raise typer.BadParameter(f"unknown phase(s) {', '.join(sorted(unknown))}; phases: "
                                 f"{', '.join(up.PHASE_NAMES)}", param_hint="--skip-phases")
    opts = up.UpgradeOptions(mode=mode if mode != "plan" else "apply", target=cfg.kubernetes.version,
                             all_shims_stopped=all_shims_stopped)
    node = common.target_host(host, ssh_key, ssh_port, ssh_known_hosts)
    ctx = common.make_context(cfg, dry_run=dry_run or mode == "plan", host=node)
    plan = up.phases(ctx, opts, frozenset(skipped))
    run_phases(plan, ctx)
    if mode == "plan":
        common.console.print("[bold]kubeadm upgrade plan[/bold]")
        common.console.print(up.kubeadm_plan(ctx, opts), markup=False, highlight=False)


@app.command("plan")
def plan(config: common.ConfigOpt = None, kubernetes_version: TargetOpt = None, skip_phases: SkipOpt = None,
         host: common.SshHostOpt = None, ssh_key: common.SshKeyOpt = None, ssh_port: common.SshPortOpt = None,
         ssh_known_hosts: common.SshKnownHostsOpt = None) -> None:
    """Show what `upgrade apply` would change on this node (a dry run) and what kubeadm would upgrade
    (`kubeadm upgrade plan`, read-only). Changes nothing."""
    _run("plan", config, True, kubernetes_version, skip_phases, False, host, ssh_key, ssh_port, ssh_known_hosts)


@app.command("apply")
def apply(config: common.ConfigOpt = None, dry_run: common.DryRunOpt = False, kubernetes_version: TargetOpt = None,
          skip_phases: SkipOpt = None, all_shims_stopped: StoppedOpt = False, host: common.SshHostOpt = None,
          ssh_key: common.SshKeyOpt = None, ssh_port: common.SshPortOpt = None,
          ssh_known_hosts: common.SshKnownHostsOpt = None) -> None:
    """Upgrade the first control-plane node: kubeadm, the shim image and patch, `kubeadm upgrade apply` with
    the patches, the shim check, kubelet and kubectl (drained meanwhile), /readyz."""
    _run("apply", config, dry_run, kubernetes_version, skip_phases, all_shims_stopped, host, ssh_key, ssh_port,
         ssh_known_hosts)


@app.command("node")
def node(config: common.ConfigOpt = None, dry_run: common.DryRunOpt = False, kubernetes_version: TargetOpt = None,
         skip_phases: SkipOpt = None, all_shims_stopped: StoppedOpt = False, host: common.SshHostOpt = None,
         ssh_key: common.SshKeyOpt = None, ssh_port: common.SshPortOpt = None,
         ssh_known_hosts: common.SshKnownHostsOpt = None) -> None:
    """Upgrade another control-plane node or a worker after `upgrade apply`: kubeadm, (control plane) the
    shim image and this node's patch with the new image, `kubeadm upgrade node` with the patches, the shim
    check, kubelet and kubectl, /readyz."""
    _run("node", config, dry_run, kubernetes_version, skip_phases, all_shims_stopped, host, ssh_key, ssh_port,
         ssh_known_hosts)
