"""``k8s-sql reset``: undo ``k8s-sql init`` on a node (see :mod:`k8s_sql.phases.reset`)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from k8s_sql.cli import common
from k8s_sql.errors import K8sSqlError
from k8s_sql.phases.reset import Reset
from k8s_sql.phases.runner import run_phases

# A plain command (not a group with a callback): its --help shows no "COMMAND [ARGS]...".
app = typer.Typer()
#: What `k8s-sql --help` lists for this command.
SUMMARY = ("Undo k8s-sql init on this node: kubeadm reset -f; the files and directories "
           "k8s-sql created (as recorded in paths.stateFile) that are unchanged, empty directories only; "
           "PostgreSQL's pg_hba.conf block (then a reload). Changed files are kept and listed; system "
           "directories are never removed. PostgreSQL keeps running and the database stays unless "
           "--delete-data is given.")


@app.command("reset", short_help=SUMMARY, help=SUMMARY + "\n\nAsks first unless --yes or --dry-run is given.")
def reset(
    config: common.ConfigOpt = None,
    dry_run: common.DryRunOpt = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    delete_data: Annotated[bool, typer.Option(
        "--delete-data", help="Also DROP the shim's database and role: the cluster's state is gone for good.")] = False,
    host: common.SshHostOpt = None,
    ssh_key: common.SshKeyOpt = None,
    ssh_port: common.SshPortOpt = None,
    ssh_known_hosts: common.SshKnownHostsOpt = None,
) -> None:
    """Undo init on this node (or --host); asks first unless --yes or --dry-run."""
    cfg = common.load_config(config)
    target = common.target_host(host, ssh_key, ssh_port, ssh_known_hosts)
    where = target.name
    if not (yes or dry_run):
        what = "the cluster on" + (" this node" if where == "localhost" else f" {where}")
        what += " and DROP its database and role" if delete_data else " (the database is kept)"
        if not sys.stdin.isatty():
            raise K8sSqlError(f"reset would remove {what}, and there is no terminal to confirm it",
                              where=where, hint="run it in a terminal, or pass --yes (see --dry-run first)")
        if not typer.confirm(f"Remove {what}?", default=False):
            raise K8sSqlError("reset aborted, nothing was changed", where=where)
    run_phases([Reset(delete_data=delete_data)], common.make_context(cfg, dry_run=dry_run, host=target))
