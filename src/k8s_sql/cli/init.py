"""``k8s-sql init``: all phases, or one with ``k8s-sql init phase NAME``."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from k8s_sql.cli import common
from k8s_sql.phases.runner import PHASES, load_phase, run_phases

app = typer.Typer(
    name="init",
    help="Bootstrap a kubeadm control plane whose state lives in PostgreSQL.\n\n"
    "Runs the phases in order: " + ", ".join(PHASES) + ". Each phase looks at the node first and changes "
    "only what differs, so running init again is safe. Run one phase alone with `k8s-sql init phase NAME`.",
    no_args_is_help=False,
)

IgnorePreflightOpt = Annotated[Optional[str], typer.Option(
    "--ignore-preflight-errors", help="Preflight checks whose errors become warnings, comma-separated "
    "(e.g. Swap,Port-6443), or all; as kubeadm's flag.", show_default=False)]
SkipOpt = Annotated[Optional[list[str]], typer.Option(
    "--skip-phases", help="Phases to skip (repeat the flag, or separate with commas).", show_default=False)]


@app.callback(invoke_without_command=True)
def init(
    ctx: typer.Context,
    config: common.ConfigOpt = None,
    dry_run: common.DryRunOpt = False,
    skip_phases: SkipOpt = None,
    ignore_preflight_errors: IgnorePreflightOpt = None,
    node_name: common.NodeNameOpt = None,
    advertise_address: common.AdvertiseOpt = None,
    kubernetes_version: common.VersionOpt = None,
    cri_socket: common.CriOpt = None,
    pod_subnet: common.PodSubnetOpt = None,
    shim: common.ShimOpt = None,
    shim_image: common.ShimImageOpt = None,
    postgres_uri: common.PostgresUriOpt = None,
    host: common.SshHostOpt = None,
    ssh_key: common.SshKeyOpt = None,
    ssh_port: common.SshPortOpt = None,
    ssh_known_hosts: common.SshKnownHostsOpt = None,
) -> None:
    """Run every phase of init on this node (or on --host over SSH)."""
    if ctx.invoked_subcommand is not None:
        return
    cfg = common.load_config(config, node_name=node_name, advertise_address=advertise_address,
                             kubernetes_version=kubernetes_version, cri_socket=cri_socket, pod_subnet=pod_subnet,
                             shim=shim, shim_image=shim_image, postgres_uri=postgres_uri)
    skipped = {s.strip() for item in (skip_phases or []) for s in item.split(",") if s.strip()}
    unknown = skipped - set(PHASES)
    if unknown:
        raise typer.BadParameter(f"unknown phase(s) {', '.join(sorted(unknown))}; phases: {', '.join(PHASES)}",
                                 param_hint="--skip-phases")
    phases = [load_phase(name) for name in PHASES if name not in skipped]
    target = common.target_host(host, ssh_key, ssh_port, ssh_known_hosts)
    run_ctx = common.make_context(cfg, dry_run=dry_run, host=target, phases=[p.name for p in phases],
                                  ignore_preflight_errors=ignore_preflight_errors)
    run_phases(phases, run_ctx)


@app.command("phase")
def phase(
    name: Annotated[str, typer.Argument(help="Phase to run: " + ", ".join(PHASES) + ".", show_default=False)],
    config: common.ConfigOpt = None,
    dry_run: common.DryRunOpt = False,
    ignore_preflight_errors: IgnorePreflightOpt = None,
    node_name: common.NodeNameOpt = None,
    advertise_address: common.AdvertiseOpt = None,
    kubernetes_version: common.VersionOpt = None,
    cri_socket: common.CriOpt = None,
    pod_subnet: common.PodSubnetOpt = None,
    shim: common.ShimOpt = None,
    shim_image: common.ShimImageOpt = None,
    postgres_uri: common.PostgresUriOpt = None,
    host: common.SshHostOpt = None,
    ssh_key: common.SshKeyOpt = None,
    ssh_port: common.SshPortOpt = None,
    ssh_known_hosts: common.SshKnownHostsOpt = None,
    root: Annotated[Optional[str], typer.Option(
        "--root", metavar="DIR", help="prereqs only: act on a node's file tree under DIR instead of / (tests, image builds). "
        "Files (os-release, /proc/swaps, fstab, sysctl and module files, apt sources, the dpkg status) are read "
        "and written under DIR; commands that change the running system (modprobe, sysctl, swapoff, curl/gpg, "
        "apt-get, apt-mark, systemctl) are listed but not run.", show_default=False)] = None,
) -> None:
    """Run one phase of init alone (idempotent; a second run changes nothing)."""
    if name not in PHASES:
        raise typer.BadParameter(f"{name!r} is not a phase; phases: {', '.join(PHASES)}", param_hint="NAME")
    cfg = common.load_config(config, node_name=node_name, advertise_address=advertise_address,
                             kubernetes_version=kubernetes_version, cri_socket=cri_socket, pod_subnet=pod_subnet,
                             shim=shim, shim_image=shim_image, postgres_uri=postgres_uri)
    if root is not None:
        if name != "prereqs":
            raise typer.BadParameter("--root is supported by the prereqs phase only", param_hint="--root")
        if host is not None:
            raise typer.BadParameter("--root and --host exclude each other", param_hint="--root")
        from k8s_sql.host import ScratchHost

        target = ScratchHost(root)
    else:
        target = common.target_host(host, ssh_key, ssh_port, ssh_known_hosts)
    ctx = common.make_context(cfg, dry_run=dry_run, host=target, ignore_preflight_errors=ignore_preflight_errors)
    run_phases([load_phase(name)], ctx)
