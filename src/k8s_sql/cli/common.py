"""Options shared by several commands, and how they become a phase :class:`Context`."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
import typer.rich_utils
from rich.console import Console

from k8s_sql import config as configmod
from k8s_sql.config import Cluster, host_node_name
from k8s_sql.host import DryRunHost, Host, LocalHost
from k8s_sql.phases.base import Context, RunOptions
from k8s_sql.state import State

# Help text is rich markup: a literal "[" is written "\[" (else "[default: x]" is eaten as a tag).
# Without a terminal (a pipe, CliRunner, CI logs) rich would lay help out in 80 columns and cut
# long option names and values; use 120 there unless TERMINAL_WIDTH or COLUMNS says otherwise.
if typer.rich_utils.MAX_WIDTH is None and not os.environ.get("COLUMNS") and not sys.stdout.isatty():
    typer.rich_utils.MAX_WIDTH = 120

console = Console()
#: Errors are not wrapped: a message and its hint stay on one line each, for logs and grep.
err_console = Console(stderr=True, soft_wrap=True)

ConfigOpt = Annotated[Optional[Path], typer.Option(
    "--config", "-c", help="Path to a k8s-sql configuration file (apiVersion: k8s-sql.io/v1alpha1, kind: Cluster). "
    "Flags override its values; every value has a default.", show_default=False)]
DryRunOpt = Annotated[bool, typer.Option(
    "--dry-run", help="Print what would be done, with a diff of every file that would be written; change nothing.")]
NodeNameOpt = Annotated[Optional[str], typer.Option(
    "--node-name", help="Name of this node in the cluster \\[default: the host name].", show_default=False)]
AdvertiseOpt = Annotated[Optional[str], typer.Option(
    "--apiserver-advertise-address", help="IP address the API server advertises "
    "\\[default: the address of the default route].", show_default=False)]
VersionOpt = Annotated[Optional[str], typer.Option(
    "--kubernetes-version", help="Kubernetes version to install, e.g. v1.34.2.", show_default=False)]
CriOpt = Annotated[Optional[str], typer.Option(
    "--cri-socket", help="CRI socket, e.g. unix:///var/run/crio/crio.sock \\[default: found on the node].",
    show_default=False)]
PodSubnetOpt = Annotated[Optional[str], typer.Option(
    "--pod-network-cidr", help="Pod subnet, as kubeadm's flag of the same name.", show_default=False)]
ShimOpt = Annotated[Optional[str], typer.Option(
    "--shim", help="Which etcd shim runs beside kube-apiserver: k8s-sql (ours) or kine (upstream Kine).",
    show_default=False)]
ShimImageOpt = Annotated[Optional[str], typer.Option(
    "--shim-image", help="Image reference of the shim sidecar \\[default: built on the node by the shim phase].",
    show_default=False)]
PostgresUriOpt = Annotated[Optional[str], typer.Option(
    "--postgres-uri", help="libpq URI of an existing PostgreSQL server; switches postgres.mode to external "
    "(only verified, never configured).", show_default=False)]

SshHostOpt = Annotated[Optional[str], typer.Option(
    "--host", help="Run on this machine over SSH instead of locally: user@address. A user other than root "
    "needs passwordless sudo (sudo -n).", show_default=False)]
SshKeyOpt = Annotated[Optional[Path], typer.Option(
    "--ssh-key", help="Private key for --host; then only this key is tried (default: ssh-agent, ~/.ssh/id_*).",
    show_default=False)]
SshPortOpt = Annotated[Optional[int], typer.Option(
    "--ssh-port", help="SSH port for --host (default: 22).", show_default=False, min=1, max=65535)]
SshKnownHostsOpt = Annotated[Optional[Path], typer.Option(
    "--ssh-known-hosts", help="known_hosts file that must hold the host key of --host "
    "(default: ~/.ssh/known_hosts); unknown host keys are rejected.", show_default=False)]

#: keyword of :func:`load_config` -> (snake_case dotted config field it overrides, the flag)
FLAG_FIELDS = {
    "node_name": ("node.name", "--node-name"),
    "advertise_address": ("node.advertise_address", "--apiserver-advertise-address"),
    "kubernetes_version": ("kubernetes.version", "--kubernetes-version"),
    "cri_socket": ("node.cri_socket", "--cri-socket"),
    "pod_subnet": ("kubernetes.pod_subnet", "--pod-network-cidr"),
    "shim": ("shim.kind", "--shim"),
    "shim_image": ("shim.image", "--shim-image"),
    "postgres_uri": ("postgres.uri", "--postgres-uri"),
}


def load_config(path: Path | None, **flags) -> Cluster:
    """Load the file (or defaults) with the flags that were given (not ``None``) over it,
    and validate the result as one (see :func:`k8s_sql.config.load`).

    Raises:
        ConfigError: as :func:`k8s_sql.config.load_file` (exit 1).
        FlagError: a flag's value is invalid; the message names the flag (exit 2, a usage
            error like any other bad flag value).
    """
    given = {}
    for name, value in flags.items():
        if value is None:
            continue
        dotted, flag = FLAG_FIELDS[name]
        given[dotted] = (flag, value)
        if name == "postgres_uri":
            given["postgres.mode"] = (flag, "external")
    return configmod.load_file(str(path) if path else None, given)


def target_host(host: str | None = None, ssh_key: Path | None = None, ssh_port: int | None = None,
                ssh_known_hosts: Path | None = None) -> Host:
    """This machine, or with ``--host`` a connected :class:`~k8s_sql.remote.RemoteHost`.

    Raises:
        K8sSqlError: the SSH connection fails (see ``RemoteHost.connect``); SSH options
            without --host.
    """
    if host is None:
        if ssh_key or ssh_port or ssh_known_hosts:
            raise typer.BadParameter("--ssh-key, --ssh-port and --ssh-known-hosts need --host", param_hint="--host")
        return LocalHost()
    from k8s_sql.remote import open_host

    return open_host(host, port=ssh_port, key_file=str(ssh_key) if ssh_key else None,
                     known_hosts=str(ssh_known_hosts) if ssh_known_hosts else None)


def invoking_user(host: Host) -> str:
    """The account the admin kubeconfig is for: the SSH login user of a remote host, else
    the user who ran ``sudo k8s-sql`` (``SUDO_USER``); ``root`` otherwise."""
    import os

    user = getattr(host, "user", None) if getattr(host, "address", None) else os.environ.get("SUDO_USER", "")
    return user if user and user != "root" else "root"


def make_context(cfg: Cluster, *, dry_run: bool = False, host: Host | None = None,
                 phases: list[str] | None = None, ignore_preflight_errors: str | None = None) -> Context:
    """A phase context for ``host`` (default: this machine), wrapped for ``--dry-run``, with
    the node name defaulted from ``host``'s own host name when it is reached over SSH, and
    :class:`~k8s_sql.phases.base.RunOptions`: ``phases`` of this run (``None``: one phase
    alone), the :func:`invoking_user`, and ``--ignore-preflight-errors`` (comma-separated
    check names, case-insensitive, or ``all``). File changes are recorded in
    ``paths.stateFile`` on the host (:mod:`k8s_sql.state`; in memory for a dry run)."""
    host = host or LocalHost()
    if cfg.node_name_defaulted and not isinstance(host, LocalHost):
        # "the host name of the node": the target's, not this machine's
        res = host.run(["uname", "-n"], check=False)
        if res.ok and res.stdout.strip():
            cfg.node.name = host_node_name(res.stdout.strip(), f"{host.name}'s")
            cfg.node_name_defaulted = False
    ignored = frozenset(s.strip().lower() for s in (ignore_preflight_errors or "").split(",") if s.strip())
    options = RunOptions(phases=tuple(phases) if phases is not None else None, invoking_user=invoking_user(host),
                         ignore_preflight_errors=ignored)
    if dry_run:
        host = DryRunHost(host)
    return Context(host=host, config=cfg, console=console, dry_run=dry_run, options=options,
                   state=State.for_config(cfg))
