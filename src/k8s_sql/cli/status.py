"""``k8s-sql status``: PostgreSQL, the shim, the API server, nodes and certificates in one table."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from k8s_sql import status as statusmod
from k8s_sql.cli import common

# A plain command (not a group with a callback): its --help shows no "COMMAND [ARGS]...".
app = typer.Typer()
#: What `k8s-sql --help` lists for this command.
SUMMARY = ("Show the state of the node: PostgreSQL, the etcd shim, the API server, "
           "the nodes and certificate expiry. Parts that cannot be reached are shown as down, "
           "and the exit status is then 1.")


def _mb(n: int | None) -> str:
    return "?" if n is None else f"{n / 1024 / 1024:.1f} MiB"


def _state(part: dict) -> str:
    if not part.get("expected", True):
        return "[green]up[/green]" if part["up"] else "[dim]-[/dim]"
    return "[green]up[/green]" if part["up"] else "[red]down[/red]"


def render(data: dict) -> Table:
    """The rich table for ``collect()``'s dict."""
    kind = data.get("role", {}).get("kind")
    suffix = {"new": " (nothing set up yet)", None: ""}.get(kind, f" ({kind} node)")
    t = Table(title=f"k8s-sql status of {data['host']}{suffix}", title_justify="left")
    t.add_column("part")
    t.add_column("state")
    t.add_column("details", overflow="fold")
    pg = data["postgres"]
    if pg["up"]:
        details = f"TLS {'on' if pg.get('tls') else '[red]off[/red]'}, database {pg['database']}"
        if "database_bytes" in pg:
            details += f" {_mb(pg['database_bytes'])}"
        if "keys" in pg:
            details += (f", {pg['keys']} keys, {pg['revisions_kept']} revisions kept "
                        f"(revision {pg['revision']}, compacted at {pg['compact_revision']})")
        if pg.get("reason"):
            details += f"; {pg['reason']}"
    else:
        details = pg.get("reason", "")
    t.add_row("PostgreSQL", _state(pg), details)
    if "postgres_ha" in data:  # postgres.ha: each node as the pg_auto_failover monitor sees it
        ha = data["postgres_ha"]
        t.add_row("PostgreSQL HA", _state({**ha, "expected": True}),
                  f"monitor {ha.get('monitor')}" + (f"; {ha['reason']}" if ha.get("reason") else ""))
        for n in ha["nodes"]:
            lag = "?" if n["lag_bytes"] is None else f"{n['lag_bytes']} bytes behind"
            t.add_row(f"  pg {n['name']}", n["role"] if n["healthy"] else f"[red]{n['role']} (unhealthy)[/red]",
                      f"{n['host']}:{n['port']}, {n['state']}, {lag}")
    shim = data["shim"]
    if shim["up"]:
        details = f"{shim['endpoint']}, etcd API {shim.get('version') or '?'}"
        if shim.get("revision") is not None:
            details += f", revision {shim['revision']}, compacted at {shim.get('compact_revision')}"
    else:
        details = shim.get("reason", "")
    t.add_row("etcd shim", _state(shim), details)
    api = data["apiserver"]
    t.add_row("API server", _state(api), "/readyz ok" if api["up"] else api.get("reason", ""))
    for n in data["nodes"]:
        t.add_row(f"node {n['name']}", "[green]Ready[/green]" if n["ready"] else "[red]NotReady[/red]",
                  f"{', '.join(n['roles']) or 'worker'}, kubelet {n['version']}")
    for c in data["certificates"]:
        days = c["days_left"]
        if c["state"] != "ok":
            t.add_row(f"cert {c['path']}", f"[red]{c['state']}[/red]", "")
            continue
        color = "red" if days < 0 else "yellow" if days < 30 else "green"
        t.add_row(f"cert {c['path']}", f"[{color}]{days} days[/{color}]", f"expires {c['not_after']}")
    return t


@app.command("status", short_help=SUMMARY)
def status(
    config: common.ConfigOpt = None,
    output: Annotated[str, typer.Option("--output", "-o", help="table, or json for scripts.")] = "table",
    fail_on: Annotated[str, typer.Option(
        "--fail-on", help="down: exit 1 when a part this node should run is down; none: exit 0 whenever "
        "status could look (exit 1 then only means it could not).")] = "down",
    host: common.SshHostOpt = None,
    ssh_key: common.SshKeyOpt = None,
    ssh_port: common.SshPortOpt = None,
    ssh_known_hosts: common.SshKnownHostsOpt = None,
) -> None:
    """Show the state of this node (or of --host); --output json gives the same data
    (sizes in bytes, counts of rows, and down: the parts that are down) for scripts.

    Exit status, like etcdctl endpoint health: 0 when every part this node should run
    is up; 1 when one is down (with --fail-on down, the default) or status could not
    look (bad configuration, SSH failure); 2 for a usage error. What a node should run is
    read from its files: a control-plane node (kube-apiserver static pod) runs the shim
    and the API server, and PostgreSQL unless its shim uses another node's (join
    --control-plane) or postgres.mode is external; a worker runs none of them; a node
    with neither is expected to run all three. NotReady nodes and expiring certificates do
    not change the exit status (see k8s-sql certs check-expiration)."""
    if output not in ("table", "json"):
        raise typer.BadParameter("use table or json", param_hint="--output")
    if fail_on not in ("down", "none"):
        raise typer.BadParameter("use down or none", param_hint="--fail-on")
    cfg = common.load_config(config)
    target = common.target_host(host, ssh_key, ssh_port, ssh_known_hosts)
    data = statusmod.collect(target, cfg)
    if output == "json":
        typer.echo(json.dumps(data, indent=2))
    else:
        common.console.print(render(data))
    if data["down"] and fail_on == "down":
        raise typer.Exit(1)
