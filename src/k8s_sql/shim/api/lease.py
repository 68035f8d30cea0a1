"""etcd API v3 ``Lease`` service: LeaseGrant, LeaseRevoke, LeaseKeepAlive, LeaseTimeToLive,
LeaseLeases (rpc.proto). Leases live in PostgreSQL, so they survive a shim restart and are
shared by every shim on the database."""

from __future__ import annotations

from k8s_sql.shim.api import validation
from k8s_sql.shim.api.errors import abort, unary
from k8s_sql.shim.api.header import Headers
from k8s_sql.shim.etcdpb import rpc_pb2, rpc_pb2_grpc


class LeaseServicer(rpc_pb2_grpc.LeaseServicer):
    """etcd API v3 Lease over the storage interface (:class:`~k8s_sql.shim.storage.base.Lease`).

    Args: as :class:`k8s_sql.shim.api.kv.KVServicer`.
    """

    def __init__(self, backend, settings):
        self.backend = backend
        self.header = Headers(settings)
        self.limits = validation.Limits.of(settings)

    @unary
    async def LeaseGrant(self, request, context):
        self.limits.check_size(validation.LEASE_GRANT, request)
        lease_id, ttl, revision = await self.backend.lease_grant(request.TTL, request.ID)
        return rpc_pb2.LeaseGrantResponse(header=self.header(revision), ID=lease_id, TTL=ttl)

    @unary
    async def LeaseRevoke(self, request, context):
        self.limits.check_size(validation.LEASE_REVOKE, request)
        revision = await self.backend.lease_revoke(request.ID)
        return rpc_pb2.LeaseRevokeResponse(header=self.header(revision))

    async def LeaseKeepAlive(self, request_iterator, context):
        # etcd answers every keep-alive on the stream; an unknown lease gets TTL 0
        async for req in request_iterator:
            try:
                ttl, revision = await self.backend.lease_keepalive(req.ID)
            except Exception as e:
                await abort(context, e)
            yield rpc_pb2.LeaseKeepAliveResponse(header=self.header(revision), ID=req.ID, TTL=ttl)

    @unary
    async def LeaseTimeToLive(self, request, context):
        ttl, granted, keys, revision = await self.backend.lease_time_to_live(request.ID, request.keys)
        return rpc_pb2.LeaseTimeToLiveResponse(header=self.header(revision), ID=request.ID, TTL=ttl,
                                               grantedTTL=granted, keys=keys)

    @unary
    async def LeaseLeases(self, request, context):
        ids, revision = await self.backend.leases()
        return rpc_pb2.LeaseLeasesResponse(header=self.header(revision),
                                           leases=[rpc_pb2.LeaseStatus(ID=i) for i in ids])
