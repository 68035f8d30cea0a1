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
  - ``Hash``, ``HashKV``, ``Snapshot``: UNIMPLEMENTED. They compare or copy the bbolt
    file; with PostgreSQL, back up with pg_dump/pg_basebackup and compare with SQL.
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

import grpc

from k8s_sql.shim.etcdpb import rpc_pb2, rpc_pb2_grpc

#: raft term reported in Status and headers: fixed, as the shim never holds an election.
RAFT_TERM = 1


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

    def member(self) -> rpc_pb2.Member:
        """This shim as an etcd Member (no peer URLs, never a learner)."""
        urls = [u for u in self.settings.listen_client_urls]
        return rpc_pb2.Member(ID=self.settings.member_id, name=self.settings.name, peerURLs=[], clientURLs=urls,
                              isLearner=False)


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

    async def Hash(self, request, context):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                            "Hash is not supported by the k8s-sql shim: there is no bbolt file to hash; "
                            "the data is in PostgreSQL")

    async def HashKV(self, request, context):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                            "HashKV is not supported by the k8s-sql shim: a single member has no replica to "
                            "compare with; the data is in PostgreSQL")

    async def Snapshot(self, request, context):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                            "Snapshot is not supported by the k8s-sql shim: back up the PostgreSQL database "
                            "with pg_dump or pg_basebackup")

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
