"""``python3 -m bench.noop``: the physical limit of the shim's process model — an etcd v3 KV
service on ``grpc.aio`` (uvloop when installed, as the shim) that answers from memory.

No PostgreSQL, no MVCC beyond a revision counter and a dict: Put, Range, DeleteRange, Txn
(compares ignored, every op applied) and Compact answer at once. With ``--workers N`` there are
N processes on one port (SO_REUSEPORT), each with its own dict, as ``k8s-sql shim serve
--workers N`` runs. Whatever the shim does per request costs on top of this, so "shim ÷
no-op" is the share of the ceiling the shim reaches. Prints "noop ready" on stderr once per process.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.join(ROOT, "src") not in sys.path:
    sys.path.insert(0, os.path.join(ROOT, "src"))


class _Store:
    def __init__(self):
        self.revision = 1
        self.data: dict[bytes, bytes] = {}


def _servicer(store: _Store):
    from k8s_sql.shim.etcdpb import kv_pb2, rpc_pb2, rpc_pb2_grpc

    def header():
        return rpc_pb2.ResponseHeader(cluster_id=1, member_id=1, revision=store.revision, raft_term=2)

    def range_(req):
        v = store.data.get(req.key)
        kvs = [] if v is None else [kv_pb2.KeyValue(key=req.key, value=v, create_revision=1,
                                                    mod_revision=store.revision, version=1)]
        return rpc_pb2.RangeResponse(header=header(), kvs=kvs, count=len(kvs))

    def put(req):
        store.revision += 1
        store.data[req.key] = req.value
        return rpc_pb2.PutResponse(header=header())

    def delete(req):
        n = 1 if store.data.pop(req.key, None) is not None else 0
        store.revision += n
        return rpc_pb2.DeleteRangeResponse(header=header(), deleted=n)

    class KV(rpc_pb2_grpc.KVServicer):
        async def Range(self, request, context):
            return range_(request)

        async def Put(self, request, context):
            return put(request)

        async def DeleteRange(self, request, context):
            return delete(request)

        async def Txn(self, request, context):
            responses = []
            for op in request.success:
                which = op.WhichOneof("request")
                if which == "request_put":
                    responses.append(rpc_pb2.ResponseOp(response_put=put(op.request_put)))
                elif which == "request_range":
                    responses.append(rpc_pb2.ResponseOp(response_range=range_(op.request_range)))
                elif which == "request_delete_range":
                    responses.append(rpc_pb2.ResponseOp(response_delete_range=delete(op.request_delete_range)))
            return rpc_pb2.TxnResponse(header=header(), succeeded=True, responses=responses)

        async def Compact(self, request, context):
            return rpc_pb2.CompactionResponse(header=header())
    return KV()


async def _serve(listen: str, reuse_port: bool) -> None:
    import grpc
    from k8s_sql.shim.etcdpb import rpc_pb2_grpc

    server = grpc.aio.server(options=[("grpc.so_reuseport", 1 if reuse_port else 0)])
    rpc_pb2_grpc.add_KVServicer_to_server(_servicer(_Store()), server)
    if server.add_insecure_port(listen) == 0:
        raise SystemExit(f"noop: cannot listen on {listen}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("noop ready", file=sys.stderr, flush=True)
    await stop.wait()
    await server.stop(0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m bench.noop", description=__doc__)
    p.add_argument("--listen", required=True, help="host:port")
    p.add_argument("--workers", type=int, default=1, help="processes on the port (SO_REUSEPORT)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    from k8s_sql.shim.server import _die_with_parent, new_event_loop

    children = []
    if a.child:
        _die_with_parent(os.getppid())
    else:
        children = [subprocess.Popen([sys.executable, "-m", "bench.noop", "--listen", a.listen, "--child"], cwd=ROOT)
                    for _ in range(a.workers - 1)]
    try:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            runner.run(_serve(a.listen, reuse_port=a.workers > 1 or a.child))
    finally:
        for c in children:
            c.terminate()
            c.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
