"""``k8s-sql join``: add a worker, or another control-plane node, to a k8s-sql cluster.

The node that joins is ``--host`` (over SSH) or this machine; the first control-plane node
is ``--control-plane-host`` (over SSH) or this machine. The steps are in :mod:`k8s_sql.phases.join`.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Optional

import typer

from k8s_sql.cli import common
from k8s_sql.phases.join import first_node_config, run_join

SUMMARY = ("Join a worker (or, with --control-plane, another control-plane node running its own shim against the "
           "same PostgreSQL) to the cluster of the first control-plane node.")
app = typer.Typer()


@app.command("join", short_help=SUMMARY, help=SUMMARY)
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
    apiserver_advertise_address: Annotated[Optional[str], typer.Option(
        "--apiserver-advertise-address", help="With --control-plane: the address the new node's API server "
        "advertises (passed to kubeadm join; default: kubeadm's choice, the default route's).",
        show_default=False)] = None,
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
    if apiserver_advertise_address is not None:
        if not control_plane:
            raise typer.BadParameter("only a control-plane node advertises an API server; add --control-plane",
                                     param_hint="--apiserver-advertise-address")
        try:
            ipaddress.ip_address(apiserver_advertise_address)
        except ValueError:
            raise typer.BadParameter(f"{apiserver_advertise_address!r} is not an IP address",
                                     param_hint="--apiserver-advertise-address") from None
    cfg = common.load_config(config)
    if control_plane_host is not None:
        cp = common.target_host(control_plane_host, ssh_key, control_plane_ssh_port, ssh_known_hosts)
    else:
        cp = common.target_host(None)
    target = common.target_host(host, ssh_key if host else None, ssh_port, ssh_known_hosts if host else None)
    # the first node acts with the configuration it was initialised with, not the joining node's
    cp_cfg, source = first_node_config(cp, cfg)
    common.console.print(f"first node's configuration: {source}", markup=False, highlight=False)
    run_join(common.make_context(cp_cfg, dry_run=dry_run, host=cp),
             common.make_context(cfg, dry_run=dry_run, host=target), control_plane=control_plane,
             skip=frozenset(skipped), apiserver_advertise_address=apiserver_advertise_address)
