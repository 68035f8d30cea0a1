"""etcd API v3 ``KV`` service: Range, Put, DeleteRange, Txn, Compact (rpc.proto).

A thin layer: convert the request, call the storage backend, convert the answer; errors
become etcd's gRPC codes and messages (:func:`.convert.status_of`).
"""

from __future__ import annotations

from k8s_sql.shim.api import convert
from k8s_sql.shim.etcdpb import rpc_pb2, rpc_pb2_grpc


async def abort(context, e: BaseException):
    """Abort the call with etcd's status for ``e``."""
    code, message = convert.status_of(e)
    await context.abort(code, message)


class KVServicer(rpc_pb2_grpc.KVServicer):
    """etcd API v3 KV backed by a :class:`~k8s_sql.shim.storage.postgres.PostgresBackend`."""

    def __init__(self, backend, settings):
        self.backend = backend
        self.header = convert.Headers(settings)

    async def Range(self, request, context):
        try:
            res = await self.backend.range(convert.range_op(request))
        except Exception as e:
            await abort(context, e)
        return convert.range_response(res, self.header(res.revision))

    async def Put(self, request, context):
        try:
            res = await self.backend.put(convert.put_op(request))
        except Exception as e:
            await abort(context, e)
        return convert.put_response(res, self.header(res.revision))

    async def DeleteRange(self, request, context):
        try:
            res = await self.backend.delete_range(convert.delete_op(request))
        except Exception as e:
            await abort(context, e)
        return convert.delete_response(res, self.header(res.revision))

    async def Txn(self, request, context):
        try:
            res = await self.backend.txn(convert.txn_op(request))
        except Exception as e:
            await abort(context, e)
        return convert.txn_response(res, self.header(res.revision))

    async def Compact(self, request, context):
        try:
            revision = await self.backend.compact(request.revision)
        except Exception as e:
            await abort(context, e)
        return rpc_pb2.CompactionResponse(header=self.header(revision))
