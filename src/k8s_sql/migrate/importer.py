"""Writing a :class:`~k8s_sql.migrate.model.Source` into an empty datastore of the shim.

Everything happens in one PostgreSQL transaction, verified before it commits: an interrupted
migration (killed, connection lost) leaves the datastore as empty as it was, so no shim can
ever serve half of it, and running the migration again starts cleanly. Rows are bulk-loaded
with COPY; prev_revision and the ``kv`` table are derived from the log in SQL
(:mod:`k8s_sql.shim.storage.queries`, section "migrate import").

Verification, inside the transaction: the live key count at R and HashKV(R) computed from
the imported rows by the shim's own HashKV queries equal what etcd answered (etcd 3.4
Maintenance.HashKV; the shim's HashKV equals it for the same history).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import psycopg

from k8s_sql.errors import K8sSqlError
from k8s_sql.migrate import datastore
from k8s_sql.migrate.model import Expected, Source
from k8s_sql.shim.api.maintenance import BucketHash
from k8s_sql.shim.storage import queries, schema
from k8s_sql.shim.storage.base import Event


class DatastoreNotEmptyError(K8sSqlError):
    """The target datastore already holds keys, history or leases."""


class VerificationError(K8sSqlError):
    """The imported copy does not answer as the source did; nothing was committed."""


@dataclass(frozen=True)
class ImportResult:
    """What was imported and verified: revision R, compact revision C, log rows, live keys,
    leases, the shim's HashKV and what the source expected (:class:`Expected`)."""

    revision: int
    compact_revision: int
    log_rows: int
    keys: int
    leases: int
    hash: int
    expected: Expected

    def summary(self) -> str:
        """What was verified, one paragraph."""
        hashed = (f"HashKV at revision {self.expected.hash_revision or self.revision} = {self.hash:#010x} "
                  "on both sides" if self.expected.hash is not None else
                  f"HashKV at revision {self.revision} = {self.hash:#010x} (the source gives no hash to compare)")
        return (f"verified: {self.keys} live keys at revision {self.revision} on both sides; {hashed}; "
                f"{self.leases} leases; {self.log_rows} versions of history from compact revision "
                f"{self.compact_revision} (reads below it answer 'required revision has been compacted')")



async def _migrate_schema(conninfo: str) -> None:
    conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True, connect_timeout=10)
    try:
        await schema.migrate(conn)
    finally:
        await conn.close()


def ensure_schema(conninfo: str) -> None:
    """Create or migrate the shim's schema (:func:`k8s_sql.shim.storage.schema.migrate`).

    Raises K8sSqlError when the database is unreachable or has a newer schema."""
    try:
        asyncio.run(_migrate_schema(conninfo))
    except psycopg.Error as e:
        raise K8sSqlError(f"cannot prepare the datastore's schema: {' '.join(str(e).split())}") from None
    except RuntimeError as e:
        raise K8sSqlError(str(e)) from None


def check_empty(conn: psycopg.Connection) -> None:
    """Raise :class:`DatastoreNotEmptyError` unless the datastore is as a fresh shim leaves
    it (revision 1, nothing stored). Locks ``meta`` until the transaction ends."""
    revision, compact, log, kv, lease = conn.execute(queries.MIGRATE_STATE).fetchone()
    if revision != 1 or compact != 0 or log or kv or lease:
        raise DatastoreNotEmptyError(
            f"the datastore already holds data (revision {revision}, "
            f"{'history' if log else 'no history'}, {'keys' if kv else 'no keys'}, "
            f"{'leases' if lease else 'no leases'}); migrating would mix two clusters",
            hint="migrate into a new, empty database (or drop and recreate this one if its content is not needed)")


def _shim_hash_kv(conn: psycopg.Connection, revision: int, compact: int) -> int:
    # the shim's HashKV (storage.postgres.hash_kv_events + api.maintenance.BucketHash) on
    # this uncommitted transaction
    params = {"rev": revision, "compact": compact}
    any_live = conn.execute(queries.ANY_LIVE_AT, params).fetchone()[0]
    h = BucketHash()
    h.write(b"key")  # the bucket's name comes first (api.maintenance HashKV)
    with conn.cursor(name="migrate_hash") as cur:
        cur.execute(queries.hash_kv_rows(any_live), params)
        while rows := cur.fetchmany(1000):
            h.key_bucket([Event(r[0], r[1], 1 if r[2] else 0, queries.kv_from_row(r, 3), None) for r in rows])
    return h.value


def import_source(conninfo: str, source: Source, progress: Callable[[int, int], None] = lambda rows, rev: None,
                  before_commit: Callable[[], None] = lambda: None) -> ImportResult:
    """Copy ``source`` into the empty datastore at ``conninfo`` (libpq) and verify it.

    ``progress(rows, revision)`` is called as rows are copied (rows so far, the revision of
    the last row). ``before_commit`` runs after verification, just before the commit (tests
    interrupt there).

    Raises:
        DatastoreNotEmptyError: the datastore holds data (nothing changed).
        VerificationError: the copy's key count or HashKV differ from the source's
            (rolled back).
        K8sSqlError: the datastore or the source cannot be reached (rolled back).
    """
    ensure_schema(conninfo)
    with datastore.open_connection(conninfo) as conn:
        try:
            return _import(conn, source, progress, before_commit)
        except psycopg.Error as e:
            raise K8sSqlError(f"the import failed and was rolled back: {' '.join(str(e).split())}",
                              hint="the datastore is unchanged; run the migration again") from None


def _import(conn, source, progress, before_commit) -> ImportResult:
    with conn.transaction():
        check_empty(conn)
        rows = 0
        with conn.cursor().copy(queries.MIGRATE_COPY_LOG) as copy:
            for row in source.log_rows():
                copy.write_row((row.revision, row.sub, row.key, row.value, row.create_revision, row.version,
                                row.lease, row.deleted))
                rows += 1
                if rows % 1000 == 0:
                    progress(rows, row.revision)
        progress(rows, source.revision)
        if source.compact_revision:
            rows -= conn.execute(queries.MIGRATE_TRIM_COMPACTED, {"compact": source.compact_revision}).rowcount
        conn.execute(queries.MIGRATE_PREV_REVISION)
        conn.execute(queries.MIGRATE_FILL_KV)
        leases = source.leases()
        conn.execute(queries.MIGRATE_LEASE_STAGE)
        with conn.cursor().copy(queries.MIGRATE_COPY_LEASE) as copy:
            for lease in leases:
                copy.write_row((lease.id, lease.granted_ttl, lease.remaining_ttl))
        conn.execute(queries.MIGRATE_INSERT_LEASES)
        conn.execute(queries.MIGRATE_ORPHAN_LEASES)
        conn.execute(queries.MIGRATE_SET_META, {"rev": source.revision, "compact": source.compact_revision})
        expected = source.expected()
        keys, lease_count = conn.execute(queries.MIGRATE_COUNTS).fetchone()
        hash_rev = expected.hash_revision or source.revision
        shim_hash = _shim_hash_kv(conn, hash_rev, source.compact_revision)
        if keys != expected.keys:
            raise VerificationError(f"{source.description} has {expected.keys} live keys at revision "
                                    f"{source.revision}, the copy {keys}; nothing was committed",
                                    hint=source.mismatch_hint)
        if expected.hash is not None and shim_hash != expected.hash:
            raise VerificationError(
                f"HashKV at revision {hash_rev}: {source.description} says {expected.hash:#010x}, the copy "
                f"{shim_hash:#010x}; nothing was committed",
                hint=source.mismatch_hint)
        before_commit()
    return ImportResult(source.revision, source.compact_revision, rows, keys, lease_count, shim_hash, expected)


def holds_copy_of(conninfo: str, source: Source) -> ImportResult | None:
    """Whether the datastore already holds exactly ``source`` at its revision (a migration
    that committed but was interrupted before it recorded so): same revision and compact
    revision, same live key count and HashKV. Returns what was verified, or ``None``.

    Raises K8sSqlError when the datastore cannot be read."""
    with datastore.open_connection(conninfo) as conn:
        try:
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                revision, compact = conn.execute("SELECT revision, compact_revision FROM meta").fetchone()
                if (revision, compact) != (source.revision, source.compact_revision):
                    return None
                expected = source.expected()
                keys, leases = conn.execute(queries.MIGRATE_COUNTS).fetchone()
                h = _shim_hash_kv(conn, expected.hash_revision or revision, compact)
                rows = conn.execute("SELECT count(*) FROM log").fetchone()[0]
        except psycopg.Error as e:
            raise K8sSqlError(f"cannot read the datastore: {' '.join(str(e).split())}") from None
    if keys != expected.keys or (expected.hash is not None and h != expected.hash):
        return None
    return ImportResult(revision, compact, rows, keys, leases, h, expected)
