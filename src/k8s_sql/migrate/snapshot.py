"""``migrate --from-snapshot FILE``: an etcd snapshot file (``etcdctl snapshot save``) as a
migration source, read with :class:`k8s_sql.snapshot.etcdsnap.EtcdSnapshot` (which refuses a
truncated or corrupted file).

A snapshot holds etcd's backend as it was: each version with its exact (revision, sub), so
unlike a live etcd nothing has to be numbered by guess. Versions at or below the compact
revision that etcd's compaction had not yet removed are trimmed by the importer
(:data:`k8s_sql.shim.storage.queries.MIGRATE_TRIM_COMPACTED`). Leases come back with their
full TTL remaining unless etcd checkpointed them: etcd does the same when it restores one.
"""

from __future__ import annotations

from collections.abc import Iterator

from k8s_sql.migrate.model import Expected, Lease, LogRow


class SnapshotSource:
    """An etcd snapshot file as a :class:`~k8s_sql.migrate.model.Source`; the revision is
    the one etcd would restore. :meth:`expected` gives the live key count the file holds at
    its revision, and no hash (a file has no second opinion; the HashKV of the copy is
    printed for comparison with ``etcdctl endpoint hashkv`` on the etcd it came from)."""

    def __init__(self, snap):
        self.snap = snap
        self.description = snap.path
        self.revision = snap.revision
        self.compact_revision = snap.compact_revision
        self._live: int | None = None

    @classmethod
    def open(cls, path: str) -> "SnapshotSource":
        """Read ``path``. Raises SnapshotError (a K8sSqlError) when it is unreadable,
        truncated, corrupted or not an etcd backend."""
        from k8s_sql.snapshot.etcdsnap import EtcdSnapshot

        return cls(EtcdSnapshot(path))

    def log_rows(self) -> Iterator[LogRow]:
        """Every version in the file, in (revision, sub) order."""
        live: set[bytes] = set()
        for ev in self.snap.events():
            kv = ev.kv
            if ev.kind == 1:
                live.discard(kv.key)
                yield LogRow(ev.revision, ev.sub, kv.key, b"", 0, 0, 0, True)
            else:
                live.add(kv.key)
                yield LogRow(ev.revision, ev.sub, kv.key, kv.value, kv.create_revision, kv.version, kv.lease, False)
        self._live = len(live)

    def leases(self) -> list[Lease]:
        """The file's leases; remaining TTL = the checkpointed one, else the granted TTL."""
        return [Lease(x.id, x.ttl, x.remaining_ttl or x.ttl) for x in self.snap.leases]

    def expected(self) -> Expected:
        """Live keys at the file's revision (after :meth:`log_rows` ran), no hash."""
        if self._live is None:
            sum(1 for _ in self.log_rows())
        return Expected(self._live, None, self.revision)
