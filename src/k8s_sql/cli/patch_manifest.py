"""``k8s-sql patch-manifest``: parses the flags; the work is
:func:`k8s_sql.kubeadm.manifest.patch_file`."""

from __future__ import annotations

import posixpath
from pathlib import Path
from typing import Annotated, Optional

import typer

from k8s_sql.cli import common
from k8s_sql.host import LocalHost
from k8s_sql.kubeadm import manifest

app = typer.Typer()

ManifestOpt = Annotated[Optional[Path], typer.Option(
    "--manifest", help="kube-apiserver static pod manifest (default: <paths.manifestsDir>/kube-apiserver.yaml).",
    show_default=False)]
AllowEmptyOpt = Annotated[bool, typer.Option(
    manifest.ALLOW_EMPTY_FLAG, help="Patch even though the cluster's state is in etcd (an etcd static pod "
    "beside the manifest, --etcd-servers-overrides): kube-apiserver then starts on an empty datastore. "
    "The etcd data is left where it is.")]


def _say(text: str) -> None:
    common.console.print(text, highlight=False, markup=False, soft_wrap=True)


@app.command("patch-manifest")
def patch_manifest_cmd(
    manifest_path: ManifestOpt = None,
    config: common.ConfigOpt = None,
    dry_run: common.DryRunOpt = False,
    allow_empty_datastore: AllowEmptyOpt = False,
) -> None:
    """Add the etcd shim sidecar to an existing kubeadm cluster's kube-apiserver manifest.

    Points --etcd-servers and the --etcd-* TLS flags at the shim, keeps comments and key order, validates the result against the Kubernetes schema of the manifest's version, keeps a timestamped backup in paths.backupDir and writes atomically. A second run changes nothing.

    patch-manifest does not move data: kube-apiserver starts on what the shim's PostgreSQL database holds. It refuses (exit 1, manifest untouched) when the cluster's state is in etcd (an etcd static pod beside the manifest, or --etcd-servers-overrides) unless --allow-empty-datastore, and when the certificates the sidecar needs are missing (k8s-sql init phase pki makes them).
    """
    cfg = common.load_config(config)
    path = str(manifest_path) if manifest_path else posixpath.join(cfg.paths.manifests_dir, "kube-apiserver.yaml")
    if manifest_path:
        path = str(Path(path).absolute())
    result = manifest.patch_file(LocalHost(), cfg, path, dry_run=dry_run, allow_empty_datastore=allow_empty_datastore)
    if result.status == "already patched":
        _say(f"{path}: already patched, nothing to do")
        return
    if dry_run:
        typer.echo(result.diff, nl=False)
    for note in result.notes:
        _say(f"note: {note}")
    if dry_run:
        _say(f"dry run: {path} would be patched (valid for Kubernetes {result.version}); nothing was changed")
        return
    _say(f"{path}: patched (valid for Kubernetes {result.version}); backup {result.backup}")
    _say("the kubelet restarts kube-apiserver with the etcd shim sidecar")
