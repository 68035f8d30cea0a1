"""``k8s-sql certs check-expiration``: the datastore certificates' expiry, laid out like
``kubeadm certs check-expiration`` (it prints, and fails only when it cannot read)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated

import typer
from cryptography import x509
from rich.table import Table

from k8s_sql.cli import common
from k8s_sql.host import Host
from k8s_sql.pki import files

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


def inspect(host: Host, pki_dir: str, now: dt.datetime | None = None) -> list[dict]:
    """One dict per certificate of :data:`files.ALL_CERTS` (CA first): ``name``, ``path``,
    ``state`` (ok, missing, invalid), ``expires`` (ISO 8601 UTC or None),
    ``residual_seconds`` (int, negative when expired), ``authority`` (``ca`` or ``""``),
    ``externally_managed`` (the CA without its key here).

    Raises:
        CommandError: a file exists but cannot be read.
    """
    now = now or dt.datetime.now(dt.timezone.utc)
    ca_key_here = host.exists(files.path(pki_dir, files.CA_KEY))
    out = []
    for name in files.ALL_CERTS:
        path = files.path(pki_dir, name)
        row = {"name": name, "path": path, "state": "ok", "expires": None, "residual_seconds": None,
               "authority": "" if name == files.CA_CERT else "ca",
               "externally_managed": False}
        data = host.read_bytes(path)
        row["externally_managed"] = name == files.CA_CERT and data is not None and not ca_key_here
        if data is None:
            row["state"] = "missing"
        else:
            try:
                end = x509.load_pem_x509_certificate(data).not_valid_after_utc
                row["expires"] = end.isoformat()
                row["residual_seconds"] = int((end - now).total_seconds())
            except ValueError:
                row["state"] = "invalid"
        out.append(row)
    return out


def _cells(row: dict) -> tuple[str, str]:
    if row["state"] != "ok":
        return f"!{row['state'].upper()}!", ""
    end = dt.datetime.fromisoformat(row["expires"])
    return f"{end:%b %d, %Y %H:%M} UTC", _residual(dt.timedelta(seconds=row["residual_seconds"]))


@app.command("check-expiration")
def check_expiration(
    config: common.ConfigOpt = None,
    output: Annotated[str, typer.Option("--output", "-o", help="table or json.")] = "table",
    host: common.SshHostOpt = None,
    ssh_key: common.SshKeyOpt = None,
    ssh_port: common.SshPortOpt = None,
    ssh_known_hosts: common.SshKnownHostsOpt = None,
) -> None:
    """Show when each datastore certificate expires (missing files shown as !MISSING!)."""
    if output not in ("table", "json"):
        raise typer.BadParameter("must be table or json", param_hint="--output")
    cfg = common.load_config(config)
    target = common.target_host(host, ssh_key, ssh_port, ssh_known_hosts)
    rows = inspect(target, cfg.paths.pki_dir)
    if output == "json":
        typer.echo(json.dumps({"pkiDir": cfg.paths.pki_dir, "certificates": rows}, indent=2))
        return
    leaves = Table(box=None, title=f"certificates in {cfg.paths.pki_dir}", title_justify="left")
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
