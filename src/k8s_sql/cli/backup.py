"""``k8s-sql backup`` and ``k8s-sql restore``: pg_dump / pg_restore of the datastore with the
store revision recorded (:mod:`k8s_sql.migrate.backup`). For etcd-format snapshots use
``etcdctl snapshot save`` against the shim."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Annotated, Optional

import typer

from k8s_sql.cli import common

app = typer.Typer()

DatastoreOpt = Annotated[Optional[str], typer.Option(
    "--datastore", help="libpq URI of the shim's database \\[default: the configuration's datastore].",
    show_default=False)]
PgBinOpt = Annotated[Optional[str], typer.Option(
    "--pg-bindir", help="Directory of pg_dump/pg_restore \\[default: PATH].", show_default=False)]


def _say(text: str) -> None:
    common.console.print(text, highlight=False, markup=False, soft_wrap=True)


@app.command("backup")
def backup_cmd(
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="Archive to write \\[default: <paths.backupDir>/k8s-sql-<UTC time>.dump].",
        show_default=False)] = None,
    datastore: DatastoreOpt = None,
    config: common.ConfigOpt = None,
    pg_bindir: PgBinOpt = None,
) -> None:
    """Back up the datastore with pg_dump (custom format, one consistent snapshot) and record its etcd revision.

    Writes FILE (mode 0600: it holds the cluster's Secrets) and FILE.json with the revision, the compact revision and the archive's SHA-256. The cluster keeps running. For an etcd-format snapshot instead, run etcdctl snapshot save against the shim.
    """
    from k8s_sql.migrate.backup import backup
    from k8s_sql.migrate.datastore import datastore_conninfo

    cfg = common.load_config(config)
    conninfo = datastore_conninfo(cfg, datastore)
    if output is None:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        output = Path(cfg.paths.backup_dir) / f"k8s-sql-{stamp}.dump"
    info = backup(conninfo, output.absolute(), pg_bindir)
    _say(f"{output}: datastore at revision {info.revision} (compact revision {info.compact_revision}); "
         f"record {output}.json")


@app.command("restore")
def restore_cmd(
    archive: Annotated[Path, typer.Argument(help="Archive written by k8s-sql backup (FILE.json beside it).")],
    datastore: DatastoreOpt = None,
    config: common.ConfigOpt = None,
    replace: Annotated[bool, typer.Option(
        "--replace", help="Overwrite a datastore that holds data (stop kube-apiserver and its shim first).")] = False,
    bump_revision: Annotated[int, typer.Option(
        "--bump-revision", min=0, help="As etcdctl snapshot restore --bump-revision --mark-compacted: add this "
        "to the restored revision and mark it compacted, so every client relists instead of trusting a "
        "revision it saw before; use more than the writes made since the backup, e.g. 1000000000.")] = 0,
    pg_bindir: PgBinOpt = None,
) -> None:
    """Replace the datastore's content with a backup (pg_restore in one transaction).

    The store goes back to the backup's revision. Then restart kube-apiserver (its watch cache holds newer revisions) and let controllers relist; see README, "Move an existing cluster".
    """
    from k8s_sql.migrate.backup import restore
    from k8s_sql.migrate.datastore import datastore_conninfo

    cfg = common.load_config(config)
    result = restore(datastore_conninfo(cfg, datastore), archive, replace=replace, bump_revision=bump_revision,
                     bindir=pg_bindir)
    before = "an empty datastore" if not result.before or result.before <= 1 else f"revision {result.before}"
    _say(f"restored revision {result.restored} over {before}; the store's revision is now {result.revision}"
         + (" (compacted: every client relists)" if bump_revision else ""))
    if result.before and result.before > result.revision:
        _say("the revision went back: restart kube-apiserver now (move its manifest out of the manifests "
             "directory and back) so its watch cache and every client relist; consider --bump-revision")
