"""``k8s-sql patch-manifest``: move an existing kubeadm cluster's kube-apiserver onto the shim.

Adds the shim sidecar (the same definition as the kubeadm patch) to the kube-apiserver
static pod and points ``--etcd-servers``/``--etcd-cafile``/``--etcd-certfile``/
``--etcd-keyfile`` at it. Moving the data from etcd is not part of this command.
"""

from __future__ import annotations

import posixpath
from pathlib import Path
from typing import Annotated, Optional

import typer

from k8s_sql.cli import common
from k8s_sql.errors import K8sSqlError
from k8s_sql.host import Host, LocalHost
from k8s_sql.kubeadm import manifest
from k8s_sql.phases.base import backup_path, unified_diff

app = typer.Typer()

ManifestOpt = Annotated[Optional[Path], typer.Option(
    "--manifest", help="kube-apiserver static pod manifest [default: <paths.manifestsDir>/kube-apiserver.yaml].",
    show_default=False)]


def patch_manifest(host: Host, cfg, path: str, *, dry_run: bool = False) -> str:
    """Patch the manifest at ``path``; returns ``"already patched"``, ``"would patch"`` or
    the backup's path.

    Writes nothing on error or when nothing changes. The backup goes to
    ``paths.backup_dir`` (never the manifests directory: the kubelet would start it as a
    pod); the new file is written through a temporary file in ``/etc/kubernetes/tmp``
    (beside the manifests directory, like kubeadm's own), renamed into place.

    Raises:
        K8sSqlError: missing file, invalid YAML, not the kube-apiserver Pod, schema errors,
            an unwritable directory.
    """
    try:
        old = host.read_text(path)
    except UnicodeDecodeError:
        raise K8sSqlError("the manifest is not a text file", where=path,
                          hint="pass the kube-apiserver static pod with --manifest") from None
    if old is None:
        raise K8sSqlError("the manifest does not exist", where=path,
                          hint="pass the kube-apiserver static pod with --manifest")
    new, version = manifest.patch_text(old, cfg, path)
    if manifest.yamlio.plain(manifest.yamlio.load(new, path)) == manifest.yamlio.plain(manifest.yamlio.load(old, path)):
        common.console.print(f"{path}: already patched, nothing to do", highlight=False, markup=False, soft_wrap=True)
        return "already patched"
    if dry_run:
        typer.echo(unified_diff(path, old.encode(), new.encode()), nl=False)
        common.console.print(f"dry run: {path} would be patched (valid for Kubernetes {version}); nothing was changed",
                             highlight=False, markup=False, soft_wrap=True)
        return "would patch"
    info = host.stat(path)
    try:
        backup = backup_path(host, path, old.encode(), cfg.paths.backup_dir)
        tmp_dir = posixpath.join(posixpath.dirname(posixpath.dirname(path.rstrip("/"))) or "/", "tmp")
        host.write_bytes(path, new.encode(), mode=info.mode if info else 0o600, owner=info.owner if info else None,
                         group=info.group if info else None, tmp_dir=tmp_dir)
    except OSError as e:
        raise K8sSqlError(f"cannot write: {e.strerror}", where=getattr(e, "filename", None) or path,
                          hint="run as root, and check that the directory is writable") from None
    common.console.print(f"{path}: patched (valid for Kubernetes {version}); backup {backup}", highlight=False, soft_wrap=True,
                         markup=False)
    common.console.print("the kubelet restarts kube-apiserver with the etcd shim sidecar", highlight=False, soft_wrap=True,
                         markup=False)
    return backup


@app.command("patch-manifest")
def patch_manifest_cmd(
    manifest_path: ManifestOpt = None,
    config: common.ConfigOpt = None,
    dry_run: common.DryRunOpt = False,
) -> None:
    """Add the etcd shim sidecar to an existing kubeadm cluster's kube-apiserver manifest.

    Points --etcd-servers and the --etcd-* TLS flags at the shim, keeps comments and key order, validates the result against the Kubernetes schema of the manifest's version, keeps a timestamped backup in paths.backupDir and writes atomically. A second run changes nothing.
    """
    cfg = common.load_config(config)
    path = str(manifest_path) if manifest_path else posixpath.join(cfg.paths.manifests_dir, "kube-apiserver.yaml")
    if manifest_path:
        path = str(Path(path).absolute())
    patch_manifest(LocalHost(), cfg, path, dry_run=dry_run)
