"""Runs phases in order: plan, then apply or (dry run) print, then verify."""

from __future__ import annotations

import importlib

from rich.markup import escape
from rich.syntax import Syntax

from k8s_sql.errors import K8sSqlError
from k8s_sql.phases.base import Context, Phase

#: The phases of ``k8s-sql init``, in order, as ``name -> "module:Class"``.
PHASES: dict[str, str] = {
    "preflight": "k8s_sql.phases.preflight:Preflight",
    "prereqs": "k8s_sql.phases.prereqs:Prereqs",
    "pki": "k8s_sql.phases.pki:Pki",
    "postgres": "k8s_sql.phases.postgres:Postgres",
    "shim": "k8s_sql.phases.shim:ShimImage",
    "kubeadm-config": "k8s_sql.phases.kubeadm_config:KubeadmConfig",
    "kubeadm-init": "k8s_sql.phases.kubeadm_init:KubeadmInit",
    "post": "k8s_sql.phases.post:Post",
}


def load_phase(name: str) -> Phase:
    """Instantiate the phase called ``name``.

    Raises:
        K8sSqlError: no such phase (lists the valid names).
    """
    target = PHASES.get(name)
    if target is None:
        raise K8sSqlError(f"unknown phase {name!r}", hint="phases: " + ", ".join(PHASES))
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)()


def run_phases(phases: list[Phase], ctx: Context, *, summary: bool = True) -> int:
    """Run ``phases`` against ``ctx``; returns the number of changes made (or planned).
    ``summary``: end a dry run with the "nothing was changed" line.

    Raises:
        K8sSqlError: from the first phase that fails; later phases do not run.
    """
    console = ctx.console
    total = 0
    for phase in phases:
        console.print(f"[bold]{escape('[' + phase.name + ']')}[/bold] {escape(phase.title)}")
        changes = phase.plan(ctx)
        if not changes:
            console.print("  [green]up to date[/green], nothing to do")
        for change in changes:
            if ctx.dry_run:
                console.print(f"  [yellow]would[/yellow] {escape(change.describe())}")
                detail = change.preview(ctx)
                if detail:
                    if detail.startswith(("---", "+++")):
                        console.print(Syntax(detail, "diff", theme="ansi_dark", background_color="default"))
                    else:
                        console.print("    " + escape(detail).replace("\n", "\n    "))
                if change.replay_in_dry_run:
                    change.apply(ctx)  # into the DryRunHost's memory, for later phases
            else:
                console.print(f"  {escape(change.describe())}")
                change.apply(ctx)
        total += len(changes)
        if not ctx.dry_run:
            phase.verify(ctx)
    if ctx.dry_run and summary:
        console.print(f"[bold]dry run:[/bold] {total} change(s) planned, nothing was changed")
    return total


__all__ = ["PHASES", "load_phase", "run_phases", "K8sSqlError"]
