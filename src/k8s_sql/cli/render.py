"""``k8s-sql render --out DIR``: write every generated file into DIR, touching nothing else."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from k8s_sql.cli import common
from k8s_sql.errors import K8sSqlError

app = typer.Typer()


@app.command("render")
def render(
    out: Annotated[str, typer.Option("--out", "-o", help="Directory to write into: new, empty, or with --force "
                                     "one that already holds files (created if missing).", show_default=False)],
    config: common.ConfigOpt = None,
    node_name: common.NodeNameOpt = None,
    advertise_address: common.AdvertiseOpt = None,
    kubernetes_version: common.VersionOpt = None,
    cri_socket: common.CriOpt = None,
    pod_subnet: common.PodSubnetOpt = None,
    shim: common.ShimOpt = None,
    shim_image: common.ShimImageOpt = None,
    postgres_uri: common.PostgresUriOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Write into a DIR that already holds files; every file "
                                        "replaced is first copied to DIR/.k8s-sql-backup/<time>/.")] = False,
) -> None:
    """Write the files init would generate into DIR, for review or for your own tooling.

    Certificates and keys (paths.pkiDir), the kubeadm configuration and the
    kube-apiserver patch (paths.kubeadmConfig, paths.patchesDir) keep their absolute paths
    under DIR; the PostgreSQL snippets (the conf.d include, the pg_hba block and the SQL
    for the role and its database) go to DIR/postgresql/. Nothing outside DIR is touched
    and nothing is run. Keys are written 0600. A second render reuses the CA and every
    certificate that is still valid: when nothing changed it writes nothing, otherwise it
    needs --force and rewrites only what changed.

    Refused (exit 2): an empty DIR name, /, a system directory (/etc, /usr, a home
    directory...), and any DIR that is, lies inside or contains a live path (the
    configured paths.*, /etc/kubernetes, /etc/k8s-sql, /etc/postgresql, /var/lib/k8s-sql,
    ...), symlinks resolved. Refused (exit 1): a symlink in DIR leading out of it, a file
    where a directory goes, and a DIR that already holds files unless --force (then each
    replaced file is first copied to DIR/.k8s-sql-backup/<time>/). Everything is written
    to a temporary directory first and moved into place at the end, so a failure leaves
    DIR as it was.
    """
    from k8s_sql import render as rendermod

    cfg = common.load_config(config, node_name=node_name, advertise_address=advertise_address,
                             kubernetes_version=kubernetes_version, cri_socket=cri_socket, pod_subnet=pod_subnet,
                             shim=shim, shim_image=shim_image, postgres_uri=postgres_uri)
    try:
        rendermod.check_out(out, cfg)
    except K8sSqlError as e:
        raise typer.BadParameter(str(e), param_hint="--out") from None
    result = rendermod.render(cfg, out, common.console, force=force)
    if not result.written:
        common.console.print(f"{out}: up to date, nothing written", highlight=False, markup=False, soft_wrap=True)
        return
    table = Table("FILE", "FROM", title=escape(f"written under {result.out}"), title_justify="left")
    for path, phase in result.written:
        table.add_row(escape(path.lstrip("/") + (" (replaced)" if path in result.replaced else "")), phase)
    common.console.print(table)
    if result.backup:
        common.console.print(f"replaced files were copied to {result.backup}", highlight=False, markup=False,
                             soft_wrap=True)
