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

SkipOpt = Annotated[Optional[list[str]], typer.Option(
    "--skip-phases", help="Phases to skip (repeat the flag, or separate with commas).", show_default=False)]


@app.callback(invoke_without_command=True)
def init(
    ctx: typer.Context,
    config: common.ConfigOpt = None,
    dry_run: common.DryRunOpt = False,
    skip_phases: SkipOpt = None,
    node_name: common.NodeNameOpt = None,
    advertise_address: common.AdvertiseOpt = None,
    kubernetes_version: common.VersionOpt = None,
    cri_socket: common.CriOpt = None,
    pod_subnet: common.PodSubnetOpt = None,
    shim: common.ShimOpt = None,
    shim_image: common.ShimImageOpt = None,
    postgres_uri: common.PostgresUriOpt = None,
) -> None:
    """Run every phase of init on this node."""
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
    run_phases(phases, common.make_context(cfg, dry_run=dry_run))


@app.command("phase")
def phase(
    name: Annotated[str, typer.Argument(help="Phase to run: " + ", ".join(PHASES) + ".", show_default=False)],
    config: common.ConfigOpt = None,
    dry_run: common.DryRunOpt = False,
    node_name: common.NodeNameOpt = None,
    advertise_address: common.AdvertiseOpt = None,
    kubernetes_version: common.VersionOpt = None,
    cri_socket: common.CriOpt = None,
    pod_subnet: common.PodSubnetOpt = None,
    shim: common.ShimOpt = None,
    shim_image: common.ShimImageOpt = None,
    postgres_uri: common.PostgresUriOpt = None,
) -> None:
    """Run one phase of init alone (idempotent; a second run changes nothing)."""
    if name not in PHASES:
        raise typer.BadParameter(f"{name!r} is not a phase; phases: {', '.join(PHASES)}", param_hint="NAME")
    cfg = common.load_config(config, node_name=node_name, advertise_address=advertise_address,
                             kubernetes_version=kubernetes_version, cri_socket=cri_socket, pod_subnet=pod_subnet,
                             shim=shim, shim_image=shim_image, postgres_uri=postgres_uri)
    run_phases([load_phase(name)], common.make_context(cfg, dry_run=dry_run))
