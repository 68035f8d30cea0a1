"""``migrate --from-snapshot FILE``: an etcd snapshot file (``etcdctl snapshot save``) as a
migration source, read with :class:`k8s_sql.snapshot.etcdsnap.EtcdSnapshot` (which refuses a
truncated or corrupted file).

A snapshot holds etcd's backend as it was: each version with its exact (revision, sub), so
unlike a live etcd nothing has to be numbered by guess. Versions at or below the compact
revision that etcd's compaction had not yet removed are trimmed by the importer
(:data:`k8s_sql.shim.storage.queries.MIGRATE_TRIM_COMPACTED`). Leases come back with their
full TTL remaining unless etcd checkpointed them: etcd does the same when it restores one.

Verification: the live key count at R and HashKV(R) computed from the file's own ``key``
bucket entries (the bytes etcd 3.4's mvcc HashByRev would feed its CRC-32C, see
:func:`file_hash_kv`) must equal the copy's, inside the import transaction. The file's
SHA-256 trailer guards the transport; this hash guards the copy: a version whose stored bytes
the shim would not give back (a field the copy cannot carry, a non-canonical encoding) fails
it and nothing is committed.
"""

from __future__ import annotations

from collections.abc import Iterator

from k8s_sql.migrate.model import Expected, Lease, LogRow
from k8s_sql.shim.api.maintenance import BucketHash
from k8s_sql.shim.storage.base import EventKind


def file_hash_kv(snap) -> tuple[int, int]:
    """(live keys at R, HashKV at R) of an :class:`~k8s_sql.snapshot.etcdsnap.EtcdSnapshot`,
    R = ``snap.revision``, C = ``snap.compact_revision``.

    HashKV is etcd 3.4's mvcc HashByRev(R) (Maintenance.HashKV): CRC-32C (Castagnoli) of the
    bucket name ``key``, then the raw key and value of every ``key`` bucket entry in bucket
    order with revision <= R, where an entry at or below C counts only if etcd's keep set
    holds it: not a tombstone and, when any key is live at R, its key has no entry after C
    (the rule the shim's HashKV uses, :func:`k8s_sql.shim.storage.queries.hash_kv_rows`, so
    the copy hashes the same when it holds the same versions).

    Raises SnapshotError on an entry that is not an etcd revision or mvccpb.KeyValue."""
    compact = snap.compact_revision
    deleted_at_r: dict[bytes, bool] = {}
    after_compact: set[bytes] = set()
    for ev in snap.events():
        deleted_at_r[ev.kv.key] = ev.kind == EventKind.DELETE
        if ev.revision > compact:
            after_compact.add(ev.kv.key)
    live = sum(1 for d in deleted_at_r.values() if not d)
    h = BucketHash()
    h.write(b"key")
    for (k, v), ev in zip(snap.items(b"key"), snap.events()):
        if ev.revision <= compact and (ev.kind == EventKind.DELETE or (live and ev.kv.key in after_compact)):
            continue
        h.write(bytes(k))
        h.write(bytes(v))
    return live, h.value


class SnapshotSource:
    """An etcd snapshot file as a :class:`~k8s_sql.migrate.model.Source`; the revision is
    the one etcd would restore. :meth:`expected` gives the live key count and the HashKV the
    file holds at its revision (:func:`file_hash_kv`), what etcd restored from it answers."""

    mismatch_hint = ("the file holds versions the copy cannot give back as stored (altered or not written by "
                     "etcd 3.4); take a new snapshot with etcdctl snapshot save, or migrate --from-etcd")

    def __init__(self, snap):
        self.snap = snap
        self.description = snap.path
        self.revision = snap.revision
        self.compact_revision = snap.compact_revision

    @classmethod
    def open(cls, path: str) -> "SnapshotSource":
        """Read ``path``. Raises SnapshotError (a K8sSqlError) when it is unreadable,
        truncated, corrupted or not an etcd backend."""
        from k8s_sql.snapshot.etcdsnap import EtcdSnapshot

        return cls(EtcdSnapshot(path))

    def log_rows(self) -> Iterator[LogRow]:
        """Every version in the file, in (revision, sub) order."""
        for ev in self.snap.events():
            kv = ev.kv
            if ev.kind == EventKind.DELETE:
                yield LogRow(ev.revision, ev.sub, kv.key, b"", 0, 0, 0, True)
            else:
                yield LogRow(ev.revision, ev.sub, kv.key, kv.value, kv.create_revision, kv.version, kv.lease, False)

    def leases(self) -> list[Lease]:
        """The file's leases; remaining TTL = the checkpointed one, else the granted TTL."""
        return [Lease(x.id, x.ttl, x.remaining_ttl or x.ttl) for x in self.snap.leases]

    def expected(self) -> Expected:
        """Live keys and HashKV at the file's revision (:func:`file_hash_kv`)."""
        live, h = file_hash_kv(self.snap)
        return Expected(live, h, self.revision)
