"""etcd API v3 ``KV`` service: Range, Put, DeleteRange, Txn, Compact (rpc.proto).

A thin layer, in etcd's order (api/v3rpc/key.go, etcdserver/v3_server.go): validate the
request, check the size of those that etcd sends through raft, call the storage backend,
convert the answer. Errors become etcd's gRPC codes and messages (:mod:`.errors`).
"""

from __future__ import annotations

from k8s_sql.shim.api import convert, validation
from k8s_sql.shim.api.errors import unary
from k8s_sql.shim.api.header import Headers
from k8s_sql.shim.etcdpb import rpc_pb2, rpc_pb2_grpc


class KVServicer(rpc_pb2_grpc.KVServicer):
    """etcd API v3 KV over the storage interface (:class:`~k8s_sql.shim.storage.base.KV`).

    Args:
        backend: the storage (a :class:`~k8s_sql.shim.storage.base.Backend`).
        settings: a :class:`k8s_sql.shim.settings.ShimSettings` (ids, request limits).
    """

    def __init__(self, backend, settings):
        self.backend = backend
        self.header = Headers(settings)
        self.limits = validation.Limits.of(settings)

    @unary
    async def Range(self, request, context):
        validation.check_range(request)
        res = await self.backend.range(convert.range_op(request))
        return convert.range_response(res, self.header(res.revision))

    @unary
    async def Put(self, request, context):
        validation.check_put(request)
        self.limits.check_size(validation.PUT, request)
        res = await self.backend.put(convert.put_op(request))
        return convert.put_response(res, self.header(res.revision))

    @unary
    async def DeleteRange(self, request, context):
        validation.check_delete(request)
        self.limits.check_size(validation.DELETE_RANGE, request)
        res = await self.backend.delete_range(convert.delete_op(request))
        return convert.delete_response(res, self.header(res.revision))

    @unary
    async def Txn(self, request, context):
        self.limits.check_txn(request)
        if not validation.txn_is_read_only(request):
            self.limits.check_size(validation.TXN, request)
        res = await self.backend.txn(convert.txn_op(request))
        return convert.txn_response(res, self.header(res.revision))

    @unary
    async def Compact(self, request, context):
        self.limits.check_size(validation.COMPACTION, request)
        revision = await self.backend.compact(request.revision)
        return rpc_pb2.CompactionResponse(header=self.header(revision))
