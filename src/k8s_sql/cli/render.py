"""``k8s-sql render --out DIR``: write every generated file into DIR, touching nothing else."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from k8s_sql.cli import common

app = typer.Typer()


@app.command("render")
def render(
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to write into (created if missing).",
                                      file_okay=False)],
    config: common.ConfigOpt = None,
    node_name: common.NodeNameOpt = None,
    advertise_address: common.AdvertiseOpt = None,
    kubernetes_version: common.VersionOpt = None,
    cri_socket: common.CriOpt = None,
    pod_subnet: common.PodSubnetOpt = None,
    shim: common.ShimOpt = None,
    shim_image: common.ShimImageOpt = None,
    postgres_uri: common.PostgresUriOpt = None,
) -> None:
    """Write the files init would generate into DIR, for review or for your own tooling.

    Certificates and keys (paths.pkiDir), the kubeadm configuration and the
    kube-apiserver patch (paths.kubeadmConfig, paths.patchesDir) keep their absolute paths
    under DIR; the PostgreSQL snippets (the conf.d include, the pg_hba block and the SQL
    for the role and its database) go to DIR/postgresql/. Nothing outside DIR is touched
    and nothing is run. Keys are written 0600. A second render reuses the CA and every
    certificate that is still valid, and rewrites only what changed.
    """
    from k8s_sql.render import render as do_render

    cfg = common.load_config(config, node_name=node_name, advertise_address=advertise_address,
                             kubernetes_version=kubernetes_version, cri_socket=cri_socket, pod_subnet=pod_subnet,
                             shim=shim, shim_image=shim_image, postgres_uri=postgres_uri)
    written = do_render(cfg, str(out), common.console)
    if not written:
        common.console.print(f"{out}: up to date, nothing written")
        return
    table = Table("FILE", "FROM", title=f"written under {out}", title_justify="left")
    for path, phase in written:
        table.add_row(str(out) + path, phase)
    common.console.print(table)
