"""etcd API v3 ``Maintenance`` and ``Cluster`` services of the shim (etcd's rpc.proto).

The shim is one etcd "member" whose storage is PostgreSQL: there is no raft, no peers, no
bbolt file. The answers below are what a single-member etcd would give where that has a
meaning, and an explicit error where it has none:

Maintenance
  - ``Status``: ``version`` = ``settings.emulated_etcd_version``; ``dbSize`` and
    ``dbSizeInUse`` = size of the shim's PostgreSQL tables and indexes in bytes (there is
    no separate "in use" figure, so both are the same); ``leader`` = this member's id;
    ``raftIndex`` = ``raftAppliedIndex`` = the current revision (each write is one
    "proposal"); ``raftTerm`` = :data:`RAFT_TERM` (constant: there are no elections);
    ``isLearner`` false; ``errors`` empty.
  - ``Alarm``: the shim raises no alarms (PostgreSQL has no NOSPACE quota of its own), so
    GET returns an empty list; ACTIVATE and DEACTIVATE change nothing and, like etcd for
    an alarm that is not set, answer with an empty list.
  - ``Defragment``: answers OK and does nothing. etcd defragments its bbolt file; the
    equivalent for PostgreSQL is (auto)vacuum, which the server already runs. A VACUUM FULL
    from here would lock the tables and stall kube-apiserver, the opposite of what the
    operator wants from "defrag".
  - ``HashKV``: etcd's definition (mvcc ``HashByRev``): a CRC-32C (Castagnoli) over the
    bucket name ``key``, then the key and value of each version etcd would hash, as etcd
    stores them in its ``key`` bucket: key = 8-byte big-endian revision, ``_``, 8-byte
    big-endian sub revision, plus ``t`` for a delete; value = the marshalled
    ``mvccpb.KeyValue`` (for a delete, only its key). Which versions: see
    :meth:`~k8s_sql.shim.storage.base.Backend.hash_kv_events`. For the same history it
    equals etcd 3.4's HashKV (tests/shim/test_hashkv.py compares them), so shims on one
    database, and a shim and an etcd fed the same requests, can be checked against each
    other. ``compact_revision`` is -1 before the first compaction, as etcd says;
    ``hash_revision`` (an etcd 3.6 field) is the revision hashed up to. Errors as etcd:
    OUT_OF_RANGE "compacted" for 0 < revision <= compact revision, "future revision" above
    the current one.
  - ``Hash``: etcd hashes its whole bbolt file (every bucket: keys, leases, members, auth,
    meta), which the shim does not have, so the number can never equal etcd's. The shim's
    Hash is the same CRC-32C over what it stores in etcd's terms, in etcd's bucket order:
    bucket ``key`` with every stored version (the whole history since the last
    compaction), then bucket ``lease`` with each lease (8-byte big-endian ID, marshalled
    ``leasepb.Lease{ID, TTL}``). Compare it between shims on one database, not with etcd.
  - ``Snapshot``: an etcd 3.4 backend file of one consistent revision (every version the
    shim still holds, as etcd's ``key`` bucket would after the same compaction, and the
    leases; see :mod:`k8s_sql.snapshot.etcdsnap`), streamed as etcd does: 32 KiB blobs
    with ``remaining_bytes``, then the SHA-256 of the file, so ``etcdctl snapshot save`` /
    ``status`` / ``restore`` work on it. One REPEATABLE READ transaction is read twice
    (layout, then the stream), so no temporary file is needed; writes go on meanwhile.
  - ``MoveLeader``: OK when the target is this member (it already leads), otherwise
    FAILED_PRECONDITION ``etcdserver: bad leader transferee`` as etcd says for a
    non-member. (etcd 3.5's ``Downgrade`` is not in the 3.4 proto the shim serves.)

Cluster
  - ``MemberList``: this endpoint as the only member: ``name`` = ``settings.name``,
    ``ID`` = ``settings.member_id``, ``clientURLs`` = the client URLs it listens on,
    ``peerURLs`` empty (the shim has no peer port; listing one would invite a connection
    to nothing).
  - ``MemberAdd``/``MemberUpdate``: FAILED_PRECONDITION — membership is fixed; scale the
    shim by running more of them against the same PostgreSQL.
  - ``MemberRemove``/``MemberPromote``: NOT_FOUND ``etcdserver: member not found`` for
    another id; for this member FAILED_PRECONDITION with etcd's messages
    (``re-configuration failed due to not enough started members`` /
    ``can only promote a learner member``).
"""

from __future__ import annotations

import hashlib
import logging

import google_crc32c
import grpc

from k8s_sql.shim.api.errors import abort, unary
from k8s_sql.shim.api.header import RAFT_TERM
from k8s_sql.shim.etcdpb import rpc_pb2, rpc_pb2_grpc
from k8s_sql.shim.storage.base import Event
# etcd's bucket encodings live with the snapshot writer; the hashes feed the same bytes
from k8s_sql.snapshot.etcdsnap import SnapshotWriter, key_bucket_entry, lease_bucket_entry  # noqa: F401

log = logging.getLogger(__name__)

#: Bytes per SnapshotResponse blob (etcd 3.4 v3rpc sends 32 KiB pieces).
SNAPSHOT_CHUNK = 32 * 1024


class _Base:
    def __init__(self, backend, settings):
        self.backend = backend
        self.settings = settings

    async def header(self) -> rpc_pb2.ResponseHeader:
        """etcd's ResponseHeader with the store's current revision.

        Raises: the backend's error when PostgreSQL is unreachable.
        """
        return rpc_pb2.ResponseHeader(cluster_id=self.settings.cluster_id, member_id=self.settings.member_id,
                                      revision=await self.backend.current_revision(), raft_term=RAFT_TERM)

    def header_at(self, revision: int) -> rpc_pb2.ResponseHeader:
        """etcd's ResponseHeader for store revision ``revision``."""
        return rpc_pb2.ResponseHeader(cluster_id=self.settings.cluster_id, member_id=self.settings.member_id,
                                      revision=revision, raft_term=RAFT_TERM)

    def member(self) -> rpc_pb2.Member:
        """This shim as an etcd Member (no peer URLs, never a learner)."""
        urls = [u for u in self.settings.listen_client_urls]
        return rpc_pb2.Member(ID=self.settings.member_id, name=self.settings.name, peerURLs=[], clientURLs=urls,
                              isLearner=False)


class BucketHash:
    """CRC-32C (Castagnoli) fed as etcd's HashByRev and backend Hash feed theirs: a bucket's
    name, then each key and value of the bucket in key order. ``value`` is the uint32."""

    def __init__(self):
        self.value = 0

    def write(self, data: bytes) -> None:
        self.value = google_crc32c.extend(self.value, data)

    def key_bucket(self, events: list[Event]) -> None:
        """Hash versions as the entries of etcd's ``key`` bucket (see :func:`key_bucket_entry`)."""
        self.write(b"".join(b"".join(key_bucket_entry(ev)) for ev in events))


class _Chunks:
    """A write-only sink that hands out what was written in :data:`SNAPSHOT_CHUNK` pieces."""

    def __init__(self):
        self.buf = bytearray()

    def write(self, data: bytes) -> None:
        self.buf += data

    def flush(self) -> None:
        pass

    def take(self, final: bool) -> list[bytes]:
        """Whole chunks written so far (and the rest when ``final``)."""
        n = len(self.buf) if final else len(self.buf) - len(self.buf) % SNAPSHOT_CHUNK
        out = [bytes(self.buf[i:i + SNAPSHOT_CHUNK]) for i in range(0, n, SNAPSHOT_CHUNK)]
        del self.buf[:n]
        return out


async def _unavailable(context, exc: Exception):
    await context.abort(grpc.StatusCode.UNAVAILABLE, f"etcdserver: datastore unavailable: {type(exc).__name__}")


class MaintenanceServicer(_Base, rpc_pb2_grpc.MaintenanceServicer):
    """etcd API v3 Maintenance for a single member backed by PostgreSQL (see the module
    docstring for what each method answers and why).

    Args:
        backend: a :class:`k8s_sql.shim.storage.base.Backend` (revision, size).
        settings: a :class:`k8s_sql.shim.settings.ShimSettings` (ids, name, version).
    """

    async def Status(self, request, context):
        try:
            rev = await self.backend.current_revision()
            size = await self.backend.db_size_bytes()
        except Exception as exc:
            await _unavailable(context, exc)
        s = self.settings
        header = rpc_pb2.ResponseHeader(cluster_id=s.cluster_id, member_id=s.member_id, revision=rev,
                                        raft_term=RAFT_TERM)
        return rpc_pb2.StatusResponse(header=header, version=s.emulated_etcd_version, dbSize=size,
                                      dbSizeInUse=size, leader=s.member_id, raftIndex=rev, raftAppliedIndex=rev,
                                      raftTerm=RAFT_TERM, isLearner=False)

    async def Alarm(self, request, context):
        if request.action not in (rpc_pb2.AlarmRequest.GET, rpc_pb2.AlarmRequest.ACTIVATE,
                                  rpc_pb2.AlarmRequest.DEACTIVATE):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: unknown alarm action")
        return rpc_pb2.AlarmResponse(header=await self.header(), alarms=[])

    async def Defragment(self, request, context):
        # PostgreSQL's autovacuum does the job of etcd's defrag; see the module docstring.
        return rpc_pb2.DefragmentResponse(header=await self.header())

    @unary
    async def Hash(self, request, context):
        h = BucketHash()
        h.write(b"key")
        revision, leases = await self.backend.stored_state(h.key_bucket)
        h.write(b"lease")
        for lease_id, ttl in leases:
            h.write(b"".join(lease_bucket_entry(lease_id, ttl)))
        return rpc_pb2.HashResponse(header=self.header_at(revision), hash=h.value)

    @unary
    async def HashKV(self, request, context):
        h = BucketHash()
        h.write(b"key")
        scan = await self.backend.hash_kv_events(request.revision, h.key_bucket)
        return rpc_pb2.HashKVResponse(header=self.header_at(scan.revision), hash=h.value,
                                      compact_revision=scan.compact_revision or -1,
                                      hash_revision=scan.hash_revision)

    async def Snapshot(self, request, context):
        async def produce(scan, versions):
            # pass 1 lays the file out (its metas come first but are known only at the end);
            # pass 2, over the same snapshot, streams it front to back: no temporary file
            # (the sidecar's root filesystem is read-only) and memory for one batch.
            layout = SnapshotWriter(None)
            async for batch in versions():
                layout.add(batch)
            size = layout.finish(scan.revision, scan.compact_revision, scan.leases)
            header = self.header_at(scan.revision)
            out = _Chunks()
            writer = SnapshotWriter(out, metas=layout.metas)
            h, sent = hashlib.sha256(), 0

            async def send(final: bool) -> None:
                nonlocal sent
                for blob in out.take(final):
                    sent += len(blob)
                    h.update(blob)
                    await context.write(rpc_pb2.SnapshotResponse(header=header, remaining_bytes=size - sent,
                                                                 blob=blob))
            async for batch in versions():
                writer.add(batch)
                await send(False)
            writer.finish(scan.revision, scan.compact_revision, scan.leases)
            await send(True)
            if sent != size:
                raise RuntimeError(f"snapshot stream has {sent} bytes, its layout {size}")
            # etcd ends the stream with the SHA-256 of the db, which snapshot restore checks
            await context.write(rpc_pb2.SnapshotResponse(header=header, remaining_bytes=0, blob=h.digest()))
            log.info("snapshot at revision %d: %d versions, %d leases, %d bytes", scan.revision, writer.count,
                     len(scan.leases), size)

        try:
            await self.backend.snapshot_scan(produce)
        except grpc.aio.AbortError:
            raise
        except Exception as e:
            await abort(context, e)

    async def MoveLeader(self, request, context):
        if request.targetID != self.settings.member_id:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: bad leader transferee")
        return rpc_pb2.MoveLeaderResponse(header=await self.header())


class ClusterServicer(_Base, rpc_pb2_grpc.ClusterServicer):
    """etcd API v3 Cluster: the shim is the only member and membership never changes.

    Args: as :class:`MaintenanceServicer`.
    """

    async def MemberList(self, request, context):
        return rpc_pb2.MemberListResponse(header=await self.header(), members=[self.member()])

    async def MemberAdd(self, request, context):
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                            "etcdserver: the k8s-sql shim is a single member on PostgreSQL; members cannot be "
                            "added (run another shim against the same database instead)")

    async def MemberUpdate(self, request, context):
        if request.ID != self.settings.member_id:
            await context.abort(grpc.StatusCode.NOT_FOUND, "etcdserver: member not found")
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                            "etcdserver: the k8s-sql shim has no peer URLs to update")

    async def MemberRemove(self, request, context):
        if request.ID != self.settings.member_id:
            await context.abort(grpc.StatusCode.NOT_FOUND, "etcdserver: member not found")
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                            "etcdserver: re-configuration failed due to not enough started members")

    async def MemberPromote(self, request, context):
        if request.ID != self.settings.member_id:
            await context.abort(grpc.StatusCode.NOT_FOUND, "etcdserver: member not found")
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: can only promote a learner member")
