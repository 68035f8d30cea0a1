"""``migrate``'s data step: open a source, import it with rich progress, report what was verified."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from k8s_sql.errors import K8sSqlError
from k8s_sql.migrate import importer
from k8s_sql.migrate.model import Source


def open_source(from_etcd: str | None, cacert: str | None = None, cert: str | None = None, key: str | None = None,
                from_snapshot: str | None = None) -> Source:
    """The :class:`~k8s_sql.migrate.model.Source` for ``--from-etcd URL`` (TLS files as
    etcdctl's --cacert/--cert/--key) or ``--from-snapshot FILE``.

    Raises:
        K8sSqlError: neither or both given; etcd unreachable; the file unreadable.
    """
    if bool(from_etcd) == bool(from_snapshot):
        raise K8sSqlError("give exactly one of --from-etcd URL and --from-snapshot FILE")
    if from_snapshot:
        from k8s_sql.migrate.snapshot import SnapshotSource

        return SnapshotSource.open(from_snapshot)
    from k8s_sql.migrate.source import EtcdSource, open_channel

    return EtcdSource(open_channel(from_etcd, cacert, cert, key), from_etcd)


def migrate_data(source: Source, conninfo: str, console: Console) -> importer.ImportResult:
    """Import ``source`` into the empty datastore ``conninfo`` with a progress bar (revisions
    copied of R); print and return what was verified.

    Raises: as :func:`k8s_sql.migrate.importer.import_source`.
    """
    console.print(f"copying {source.description} at revision {source.revision} "
                  f"(compact revision {source.compact_revision}) into the datastore", highlight=False)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rows]} versions"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("revisions", total=source.revision, rows=0)

        def progress(rows: int, revision: int) -> None:
            bar.update(task, completed=min(revision, source.revision), rows=rows)
        result = importer.import_source(conninfo, source, progress)
        bar.update(task, completed=source.revision, rows=result.log_rows)
    console.print(result.summary(), highlight=False)
    return result
