"""PostgreSQL-native backups of the datastore: ``pg_dump`` / ``pg_restore`` with the store
revision recorded.

A backup is a pg_dump custom-format archive of the shim's database, taken from an exported
snapshot (``pg_export_snapshot``, ``pg_dump --snapshot``) so the revision read in the same
snapshot is exactly the revision of the archive; it is recorded in ``FILE.json`` next to it
(``revision``, ``compact_revision``, ``database``, ``created``, ``sha256`` of the archive).

A restore replaces the datastore's content in one transaction (``pg_restore --clean
--if-exists --single-transaction``). Restoring to an older revision turns the store's
revision back: kube-apiserver must be restarted (its watch cache holds newer revisions) and
its clients relist. ``bump_revision`` does what etcd's ``snapshot restore --bump-revision
--mark-compacted`` does, so no client can mistake a new revision for one it saw before.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict

from k8s_sql.errors import K8sSqlError
from k8s_sql.migrate import datastore
from k8s_sql.shim.storage import queries


@dataclass(frozen=True)
class BackupInfo:
    """What ``FILE.json`` records about a backup archive."""

    revision: int
    compact_revision: int
    database: str
    created: str
    sha256: str
    format: str = "pg_dump custom"


def _tool(name: str, bindir: str | None) -> str:
    path = os.path.join(bindir, name) if bindir else shutil.which(name)
    if not path or not os.access(path, os.X_OK):
        raise K8sSqlError(f"{name} not found" + (f" in {bindir}" if bindir else " on PATH"),
                          hint="apt-get install postgresql-client (the major version of the server or newer)")
    return path


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()



def _meta(conn: psycopg.Connection) -> tuple[int, int] | None:
    if conn.execute("SELECT to_regclass('meta')").fetchone()[0] is None:
        return None
    return conn.execute("SELECT revision, compact_revision FROM meta").fetchone()


def _run(argv: list[str], what: str) -> None:
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0:
        raise K8sSqlError(f"{what} failed (exit {r.returncode}): {' '.join(r.stderr.split())[-600:]}")


def _db_errors(fn):
    import functools

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except psycopg.Error as e:
            raise K8sSqlError(f"the datastore refused: {' '.join(str(e).split())}") from None
    return wrapped


@_db_errors
def backup(conninfo: str, output: Path, bindir: str | None = None) -> BackupInfo:
    """Write a pg_dump archive of the datastore to ``output`` (mode 0600: it holds the
    cluster's Secrets) and its record to ``output.json``; both appear only when complete.

    Raises:
        K8sSqlError: the datastore is unreachable or holds no shim schema; pg_dump fails;
            ``output`` exists.
    """
    if output.exists():
        raise K8sSqlError(f"{output} exists", hint="choose another --output; a backup is never overwritten")
    pg_dump = _tool("pg_dump", bindir)
    output.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = output.with_name(f".{output.name}.partial")
    with datastore.open_connection(conninfo) as conn:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        snapshot = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]
        meta = _meta(conn)
        if meta is None:
            raise K8sSqlError("the datastore holds no k8s-sql schema (no table meta): nothing to back up")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.close(fd)
        try:
            _run([pg_dump, "--format=custom", f"--snapshot={snapshot}", "--no-owner", "--no-privileges",
                  f"--file={tmp}", f"--dbname={conninfo}"], "pg_dump")
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        conn.rollback()
    info = BackupInfo(meta[0], meta[1], conninfo_to_dict(conninfo).get("dbname", ""),
                      datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), _sha256(tmp))
    record = output.with_name(output.name + ".json")
    rtmp = record.with_name(f".{record.name}.partial")
    rtmp.write_text(json.dumps(asdict(info), indent=2) + "\n")
    os.chmod(rtmp, 0o600)
    os.replace(tmp, output)
    os.replace(rtmp, record)
    return info


def read_info(archive: Path) -> BackupInfo:
    """The record of ``archive`` (``archive.json``), checked against the archive's SHA-256.

    Raises K8sSqlError when it is missing, unreadable or does not match."""
    record = archive.with_name(archive.name + ".json")
    try:
        info = BackupInfo(**json.loads(record.read_text()))
    except (OSError, ValueError, TypeError) as e:
        raise K8sSqlError(f"cannot read the backup's record {record}: {e}",
                          hint="k8s-sql backup writes FILE and FILE.json; restore needs both") from None
    if not archive.is_file():
        raise K8sSqlError(f"{archive} does not exist")
    if _sha256(archive) != info.sha256:
        raise K8sSqlError(f"{archive} does not match the SHA-256 in {record}: it is corrupted or not that backup")
    return info


@dataclass(frozen=True)
class RestoreResult:
    """The datastore's revision before (``None``: no schema) and after the restore."""

    before: int | None
    restored: int
    revision: int


@_db_errors
def restore(conninfo: str, archive: Path, *, replace: bool = False, bump_revision: int = 0,
            bindir: str | None = None) -> RestoreResult:
    """Replace the datastore's content with ``archive`` (pg_restore, one transaction).

    ``replace`` must be set when the datastore holds data (it is overwritten). Leases get
    their full TTL again, as etcd gives them on restore. With
    ``bump_revision`` > 0 the restored history is compacted at its revision R and the
    revision set to R + bump_revision, marked compacted (see the module docstring).

    Raises:
        K8sSqlError: a bad archive or record; the datastore holds data and not ``replace``;
            pg_restore fails (the datastore is unchanged).
    """
    info = read_info(archive)
    pg_restore = _tool("pg_restore", bindir)
    with datastore.open_connection(conninfo) as conn:
        meta = _meta(conn)
    if meta is not None and meta[0] > 1 and not replace:
        raise K8sSqlError(f"the datastore holds data at revision {meta[0]}; restoring replaces all of it "
                          f"with revision {info.revision}",
                          hint="stop kube-apiserver (and its shim sidecar) and add --replace")
    _run([pg_restore, "--clean", "--if-exists", "--single-transaction", "--no-owner", "--no-privileges",
          f"--dbname={conninfo}", str(archive)], "pg_restore")
    with datastore.open_connection(conninfo) as conn, conn.transaction():
        conn.execute(queries.RESTORE_RENEW_LEASES)
        if bump_revision > 0:
            conn.execute(queries.MIGRATE_TRIM_COMPACTED, {"compact": info.revision})
            conn.execute(queries.RESTORE_BUMP_REVISION, {"bump": bump_revision})
        revision = _meta(conn)[0]
    return RestoreResult(meta[0] if meta else None, info.revision, revision)
