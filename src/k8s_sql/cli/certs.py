"""``k8s-sql certs check-expiration``: the datastore certificates' expiry, laid out like
``kubeadm certs check-expiration``; unlike kubeadm's, it exits 1 when a certificate needs
attention, so scripts and monitoring can use it. The data comes from :mod:`k8s_sql.pki.expiry`."""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated, Optional

import typer
from rich.table import Table

from k8s_sql import status as statusmod
from k8s_sql.cli import common
from k8s_sql.pki import certs, expiry, files

app = typer.Typer(name="certs", help="Inspect the datastore certificates (paths.pkiDir) made by the pki phase.",
                  no_args_is_help=True)


def _residual(left: dt.timedelta) -> str:
    """kubeadm's short human duration: ``47h``, ``364d``, ``9y``; ``<invalid>`` when past."""
    secs = left.total_seconds()
    if secs <= 0:
        return "<invalid>"
    if secs < 2 * 86400:
        return f"{int(secs // 3600)}h"
    if secs < 8 * 365 * 86400:
        return f"{int(secs // 86400)}d"
    return f"{int(secs // (365 * 86400))}y"


def _cells(row: dict) -> tuple[str, str]:
    if row["state"] != "ok":
        return f"!{row['state'].upper()}!", ""
    end = dt.datetime.fromisoformat(row["expires"])
    return f"{end:%b %d, %Y %H:%M} UTC", _residual(dt.timedelta(seconds=row["residual_seconds"]))


@app.command("check-expiration")
def check_expiration(
    config: common.ConfigOpt = None,
    output: Annotated[str, typer.Option("--output", "-o", help="table or json.")] = "table",
    fail_within: Annotated[Optional[int], typer.Option(
        "--fail-within", metavar="DAYS", min=0, show_default=False,
        help="Exit 1 when a certificate expires within DAYS days; 0: only when one has expired. "
        "Default: 30, or a third of certificates.validityDays when that is shorter (when "
        "`k8s-sql init phase pki` re-issues a certificate).")] = None,
    host: common.SshHostOpt = None,
    ssh_key: common.SshKeyOpt = None,
    ssh_port: common.SshPortOpt = None,
    ssh_known_hosts: common.SshKnownHostsOpt = None,
) -> None:
    """Show when each datastore certificate expires (missing files shown as !MISSING!).

    Exit status: 0 when all is well; 1 when a certificate this node uses is missing, or
    one is invalid, has expired or expires within --fail-within days (each reason is
    printed on stderr; the table or JSON on stdout is the same either way), or the
    certificates could not be read; 2 for a usage error. A worker uses none of them, a
    control-plane node whose shim uses another node's PostgreSQL (join
    --control-plane) all but postgres-server.crt (as k8s-sql status tells them apart).
    """
    if output not in ("table", "json"):
        raise typer.BadParameter("must be table or json", param_hint="--output")
    cfg = common.load_config(config)
    target = common.target_host(host, ssh_key, ssh_port, ssh_known_hosts)
    rows = expiry.inspect(target, cfg.paths.pki_dir)
    within = (dt.timedelta(days=fail_within) if fail_within is not None
              else certs.renew_before(cfg.certificates.validity_days))
    problems = expiry.problems(rows, within, statusmod.node_role(target, cfg).needed_certificates)
    if output == "json":
        typer.echo(json.dumps({"pkiDir": cfg.paths.pki_dir, "certificates": rows}, indent=2))
    else:
        _print_tables(rows, cfg.paths.pki_dir)
    if problems:
        common.err_console.print(f"certificates in {cfg.paths.pki_dir} need attention (checked: missing, invalid, "
                                 f"expiring within {within.total_seconds() / 86400:g} days):", markup=False,
                                 highlight=False, soft_wrap=True)
        for problem in problems:
            common.err_console.print(f"  {problem}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1)


def _print_tables(rows: list[dict], pki_dir: str) -> None:
    """kubeadm's two tables: leaf certificates, then the certificate authority."""
    leaves = Table(box=None, title=f"certificates in {pki_dir}", title_justify="left")
    for col in ("CERTIFICATE", "EXPIRES", "RESIDUAL TIME", "CERTIFICATE AUTHORITY", "EXTERNALLY MANAGED"):
        leaves.add_column(col, no_wrap=True)
    cas = Table(box=None)
    for col in ("CERTIFICATE AUTHORITY", "EXPIRES", "RESIDUAL TIME", "EXTERNALLY MANAGED"):
        cas.add_column(col, no_wrap=True)
    for row in rows:
        expires, residual = _cells(row)
        managed = "yes" if row["externally_managed"] else "no"
        if row["name"] == files.CA_CERT:
            cas.add_row(row["name"].removesuffix(".crt"), expires, residual, managed)
        else:
            leaves.add_row(row["name"].removesuffix(".crt"), expires, residual, row["authority"], managed)
    common.console.print(leaves)
    common.console.print()
    common.console.print(cas)
