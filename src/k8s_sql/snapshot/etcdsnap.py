"""etcd 3.4 snapshots: the backend (bbolt) layout etcd keeps its state in, written from the
shim's history and read back (for ``migrate --from-snapshot`` and the tests).

Layout (etcd 3.4 ``mvcc``, ``lease``, ``etcdserver/api/membership``, ``auth``, ``alarm``),
one top-level bbolt bucket each:

``key``      every stored version: key = revision (8-byte big-endian main revision, ``_``,
             8-byte big-endian sub revision) plus ``t`` for a delete (a tombstone); value =
             marshalled ``mvccpb.KeyValue`` (only the key for a delete).
``meta``     ``consistent_index`` (8-byte big-endian), and after a compaction at C
             ``finishedCompactRev`` / ``scheduledCompactRev`` = revision bytes of (C, 0).
``lease``    8-byte big-endian lease ID -> marshalled ``leasepb.Lease{ID=1, TTL=2}``.
``cluster``  ``clusterVersion`` = ``3.4.0``.
``auth``     ``authRevision`` = 8-byte big-endian 1 (auth never enabled);
             ``authUsers``, ``authRoles``, ``alarm``, ``members``, ``members_removed`` empty.

etcd restores its store revision from the highest revision in ``key`` (or the compact
revision when that is higher) and its compaction from ``meta``. The shim writes no
members: ``etcdctl snapshot restore`` makes the new cluster's members from its flags.

The snapshot stream (``Maintenance.Snapshot``, ``etcdctl snapshot save``) is the bbolt file
followed by its SHA-256 (32 bytes), which ``etcdctl snapshot restore`` checks; bbolt files
are whole pages, so a file has that trailer exactly when its size % 512 == 32.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from google.protobuf.message import DecodeError

from k8s_sql.errors import K8sSqlError
from k8s_sql.shim.etcdpb import kv_pb2
from k8s_sql.shim.storage.base import Event, EventKind, KeyValue
from k8s_sql.snapshot import bbolt

#: Top-level buckets of an etcd 3.4 backend, in bbolt's (byte) order.
BUCKETS = (b"alarm", b"auth", b"authRoles", b"authUsers", b"cluster", b"key", b"lease", b"members",
           b"members_removed", b"meta")
CLUSTER_VERSION = b"3.4.0"
SHA256_SIZE = 32


class SnapshotError(K8sSqlError):
    """The file is not a usable etcd snapshot (truncated, corrupted, not etcd's layout)."""


def revision_key(main: int, sub: int, tombstone: bool = False) -> bytes:
    """etcd's mvcc revision bytes (revToBytes), plus ``t`` for a tombstone (appendMarkTombstone)."""
    return struct.pack(">Q", main) + b"_" + struct.pack(">Q", sub) + (b"t" if tombstone else b"")


def key_bucket_entry(ev: Event) -> tuple[bytes, bytes]:
    """One version as etcd stores it in bucket ``key`` (etcd 3.4 storeTxnWrite.put/delete):
    key = :func:`revision_key`; value = marshalled mvccpb.KeyValue, only the key for a delete."""
    deleted = ev.kind == EventKind.DELETE
    if deleted:
        kv = kv_pb2.KeyValue(key=ev.kv.key)
    else:
        k = ev.kv
        kv = kv_pb2.KeyValue(key=k.key, create_revision=k.create_revision, mod_revision=k.mod_revision,
                             version=k.version, value=k.value, lease=k.lease)
    return revision_key(ev.revision, ev.sub, deleted), kv.SerializeToString()


def _varint_field(number: int, value: int) -> bytes:
    out, v = bytearray([number << 3]), value & 0xFFFFFFFFFFFFFFFF  # int64: two's complement, 10 bytes if < 0
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def lease_bucket_entry(lease_id: int, ttl: int, remaining_ttl: int = 0) -> tuple[bytes, bytes]:
    """One lease as etcd stores it in bucket ``lease``: 8-byte big-endian ID, and
    leasepb.Lease{ID = 1, TTL = 2, RemainingTTL = 3} marshalled (fields that are 0 left out;
    RemainingTTL is 0 unless etcd checkpoints leases)."""
    value = b"".join(_varint_field(n, v) for n, v in ((1, lease_id), (2, ttl), (3, remaining_ttl)) if v)
    return struct.pack(">q", lease_id), value


def _decode_lease(value: bytes) -> tuple[int, int, int]:
    """leasepb.Lease -> (ID, TTL, RemainingTTL); raises ValueError."""
    fields = {1: 0, 2: 0, 3: 0}
    i = 0
    while i < len(value):
        tag = value[i]
        i += 1
        if tag & 7 != 0:
            raise ValueError(f"wire type {tag & 7} in leasepb.Lease")
        v, shift = 0, 0
        while True:
            if i >= len(value) or shift > 63:
                raise ValueError("truncated varint in leasepb.Lease")
            b = value[i]
            i += 1
            v |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        if v >= 1 << 63:
            v -= 1 << 64
        fields[tag >> 3] = v
    return fields[1], fields[2], fields[3]


class SnapshotWriter:
    """Write an etcd 3.4 backend to ``f`` (a seekable binary file) from the shim's history.

    Use: ``w = SnapshotWriter(f)``; ``w.add(events)`` for every stored version in (revision,
    sub) order; then ``w.finish(...)``, which returns the file size in bytes (without the
    SHA-256 trailer: the Snapshot stream appends it; :func:`append_sha256` does so for a
    file). ``f`` and ``metas`` as :class:`~k8s_sql.snapshot.bbolt.Writer`'s: ``f`` None lays
    the file out without writing it, and :attr:`metas` then lets a second writer with the same
    input stream it front to back.
    """

    def __init__(self, f: BinaryIO | None, metas: bytes | None = None):
        self._db = bbolt.Writer(f, metas=metas)
        for name in BUCKETS[:BUCKETS.index(b"key")]:
            with self._db.bucket(name) as b:
                if name == b"auth":
                    b.put(b"authRevision", struct.pack(">Q", 1))
                elif name == b"cluster":
                    b.put(b"clusterVersion", CLUSTER_VERSION)
        self._keys = self._db.bucket(b"key")
        self.last_revision = 0
        self.count = 0

    def add(self, events: list[Event]) -> None:
        """Put versions into bucket ``key``; each must come after the previous in (revision, sub)."""
        for ev in events:
            k, v = key_bucket_entry(ev)
            self._keys.put(k, v)
            self.last_revision = ev.revision
        self.count += len(events)

    def finish(self, consistent_index: int, compact_revision: int, leases: list[tuple[int, int]]) -> int:
        """Write buckets ``lease`` (``leases`` as (ID, TTL seconds)), ``members``,
        ``members_removed`` and ``meta`` and the bbolt metas; return the file size in bytes."""
        self._keys.close()
        entries = sorted(lease_bucket_entry(lid, ttl) for lid, ttl in leases)
        with self._db.bucket(b"lease") as b:
            for k, v in entries:
                b.put(k, v)
        for name in (b"members", b"members_removed"):
            self._db.bucket(name).close()
        with self._db.bucket(b"meta") as b:
            b.put(b"consistent_index", struct.pack(">Q", consistent_index))
            if compact_revision > 0:
                b.put(b"finishedCompactRev", revision_key(compact_revision, 0))
                b.put(b"scheduledCompactRev", revision_key(compact_revision, 0))
        return self._db.close()

    @property
    def metas(self) -> bytes | None:
        """The two bbolt meta pages, after :meth:`finish`."""
        return self._db.metas


def append_sha256(f: BinaryIO, size: int) -> bytes:
    """Append the SHA-256 of the first ``size`` bytes of ``f`` at ``size`` (what ``etcdctl
    snapshot save`` stores after the db); return the digest."""
    h = hashlib.sha256()
    f.seek(0)
    left = size
    while left:
        chunk = f.read(min(left, 1 << 20))
        if not chunk:
            raise OSError("file shorter than the snapshot size")
        h.update(chunk)
        left -= len(chunk)
    f.seek(size)
    f.write(h.digest())
    f.flush()
    return h.digest()


@dataclass(frozen=True)
class SnapshotLease:
    """A lease in a snapshot (etcd leasepb.Lease): ``ttl`` granted seconds, ``remaining_ttl``
    0 unless etcd checkpointed it."""

    id: int
    ttl: int
    remaining_ttl: int


class EtcdSnapshot:
    """An etcd snapshot file (``etcdctl snapshot save``) or backend file (``member/snap/db``), read.

    Attributes: ``path``; ``revision`` = the store revision etcd would restore (highest
    revision in ``key``, or the compact revision when higher); ``compact_revision`` (0 =
    never compacted); ``consistent_index`` (etcd's raft applied index when saved); ``leases``
    (:class:`SnapshotLease` by ID); ``versions`` = entries in bucket ``key``;
    ``has_sha256`` whether a SHA-256 trailer was present (and matched).

    :meth:`events` yields every stored version as a :class:`~k8s_sql.shim.storage.base.Event`
    in (revision, sub) order, the order of bucket ``key``: etcd's versions at or below the
    compact revision (each key's live version there) come first, then every event after it.
    A delete's ``kv`` has the key, ``mod_revision`` = its revision and zeros, as the shim
    stores one.

    Raises SnapshotError (with the path) on open when the file is truncated, its SHA-256
    does not match, the bbolt structure is inconsistent, or etcd's buckets are missing.
    """

    def __init__(self, path: str | os.PathLike, skip_hash_check: bool = False):
        self.path = str(path)
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                self.has_sha256 = size % 512 == SHA256_SIZE
                if size < 2 * bbolt.PAGE_SIZE:
                    raise self._error(f"{size} bytes is too small for an etcd snapshot (truncated?)")
                data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as e:
            raise SnapshotError(f"cannot read the snapshot: {e.strerror}", where=self.path) from e
        self._map = data
        db_size = size - SHA256_SIZE if self.has_sha256 else size
        if self.has_sha256:
            digest = hashlib.sha256(memoryview(data)[:db_size]).digest()
            if digest != data[db_size:size]:
                raise self._error("SHA-256 mismatch: the file is corrupted or not a complete snapshot")
        elif not skip_hash_check:
            raise self._error("no SHA-256 trailer (a truncated snapshot, or a copied member/snap/db)",
                              hint="take the snapshot again with etcdctl snapshot save; a db file copied from "
                                   "a data directory needs skip_hash_check")
        try:
            self._db = bbolt.Reader(memoryview(data)[:db_size])
        except bbolt.BoltError as e:
            raise self._error(f"not a valid bbolt database: {e}") from e
        missing = [b.decode() for b in (b"key", b"meta", b"lease") if not self._db.has_bucket(b)]
        if missing:
            raise self._error(f"not an etcd backend: bucket(s) {', '.join(missing)} missing")
        meta = dict(self._db.items(b"meta"))
        self.consistent_index = self._u64(meta.get(b"consistent_index", bytes(8)), "consistent_index")
        self.compact_revision = self._rev(meta.get(b"finishedCompactRev"))
        self.scheduled_compact_revision = self._rev(meta.get(b"scheduledCompactRev"))
        self.leases: list[SnapshotLease] = []
        for k, v in self._db.items(b"lease"):
            try:
                lid, ttl, remaining = _decode_lease(v)
            except ValueError as e:
                raise self._error(f"lease {k.hex()}: {e}") from e
            self.leases.append(SnapshotLease(lid, ttl, remaining))
        last, n = 0, 0
        for k, _ in self._db.items(b"key"):
            last, n = self._parse_key(k)[0], n + 1
        self.versions = n
        self.revision = max(last, self.compact_revision, 1)

    def _error(self, what: str, hint: str | None = None) -> SnapshotError:
        return SnapshotError(what, where=self.path, hint=hint or "use a file written by etcdctl snapshot save "
                                                                 "(etcd 3.4 or the k8s-sql shim)")

    def _u64(self, b: bytes, name: str) -> int:
        if len(b) != 8:
            raise self._error(f"meta {name}: {len(b)} bytes, expected 8")
        return struct.unpack(">Q", b)[0]

    def _rev(self, b: bytes | None) -> int:
        if b is None:
            return 0
        return self._parse_key(b)[0]

    def _parse_key(self, k: bytes) -> tuple[int, int, bool]:
        if len(k) not in (17, 18) or k[8:9] != b"_" or (len(k) == 18 and k[17:] != b"t"):
            raise self._error(f"key bucket: {k.hex()} is not an etcd revision")
        main, sub = struct.unpack(">Q", k[:8])[0], struct.unpack(">Q", k[9:17])[0]
        return main, sub, len(k) == 18

    def events(self) -> Iterator[Event]:
        """Every stored version, in (revision, sub) order (see the class docstring).
        Raises SnapshotError on a value that is not a mvccpb.KeyValue of its revision."""
        for k, v in self._db.items(b"key"):
            main, sub, deleted = self._parse_key(k)
            kv = kv_pb2.KeyValue()
            try:
                kv.ParseFromString(v)
            except DecodeError as e:
                raise self._error(f"revision {main}_{sub}: value is not a mvccpb.KeyValue") from e
            if deleted:
                yield Event(main, sub, EventKind.DELETE, KeyValue(kv.key, b"", 0, main, 0, 0), None)
                continue
            if kv.mod_revision != main:
                raise self._error(f"revision {main}_{sub}: its KeyValue says mod_revision {kv.mod_revision}")
            yield Event(main, sub, EventKind.PUT, KeyValue(kv.key, kv.value, kv.create_revision, kv.mod_revision,
                                               kv.version, kv.lease), None)

    def close(self) -> None:
        """Unmap the file (the object is unusable afterwards)."""
        self._db = None
        self._map.close()

    def __enter__(self) -> "EtcdSnapshot":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def buckets(self) -> list[bytes]:
        """The file's top-level bucket names."""
        return self._db.buckets()

    def items(self, bucket: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Raw (key, value) pairs of a top-level bucket (for tests and diagnostics)."""
        return self._db.items(bucket)
