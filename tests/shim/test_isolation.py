"""One request never fails another: waves of concurrent writes — puts, guarded creates (txns),
deletes, lease grants, puts with leases, revokes — each with requests etcd refuses mixed in
(a put on a lease that does not exist, an ignore_value put on a missing key, a revoke of an
unknown lease, a compaction to a future revision) and requests that used to poison a shim
batch (a key of 4,000 incompressible bytes, a txn compare with an unknown target). Every
innocent request must succeed, every refused one fail alone with etcd's code, and the
revisions of the writes that succeeded must be exactly the next ones, with no gaps: a
failure left nothing behind. The same waves run against a real etcd 3.4 and the shim; the
shim groups concurrent writes into batches (group commit), so each wave lands in one or a
few batches with its bad requests inside.
"""

from __future__ import annotations

import asyncio
import random
import uuid

import grpc
import pytest

from k8s_sql.shim.etcdpb import rpc_pb2, rpc_pb2_grpc

WAVES = 25
INNOCENT = 40


@pytest.fixture(params=["etcd", "shim"])
def target(request, oracle, shim):
    """(make_channel, name): an asyncio channel factory for etcd or the shim."""
    if request.param == "etcd":
        return (lambda: grpc.aio.insecure_channel(oracle.endpoint.removeprefix("http://"))), "etcd"
    return shim.aio_channel, "shim"


async def outcome(coro):
    """("ok", response) or ("error", code name, details)."""
    try:
        return "ok", await coro
    except grpc.aio.AioRpcError as e:
        return "error", e.code().name, e.details()


async def run_waves(channel, prefix: bytes):
    kv, lease = rpc_pb2_grpc.KVStub(channel), rpc_pb2_grpc.LeaseStub(channel)
    r = random.Random(prefix)
    start = (await kv.Range(rpc_pb2.RangeRequest(key=b"x"))).header.revision
    written: dict[bytes, bytes] = {}   # key -> value every innocent write left
    revisions: list[int] = []          # revisions of the writes that succeeded
    leases = [(await lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=600))).ID for _ in range(3)]
    failures, wrong = [], []  # innocent requests that failed, refused ones with another answer
    for wave in range(WAVES):
        innocent, bad = [], []
        for i in range(INNOCENT):
            key = prefix + b"w%02d-%02d" % (wave, i)
            kind = i % 5
            if kind == 0:
                innocent.append(("put", key, kv.Put(rpc_pb2.PutRequest(key=key, value=b"p"))))
            elif kind == 1:  # kube-apiserver's guarded create
                txn = rpc_pb2.TxnRequest(
                    compare=[rpc_pb2.Compare(key=key, target=rpc_pb2.Compare.MOD, mod_revision=0)],
                    success=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key, value=b"t"))])
                innocent.append(("txn", key, kv.Txn(txn)))
            elif kind == 2 and written:
                victim = r.choice(sorted(written))
                written.pop(victim)
                innocent.append(("delete", victim, kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=victim))))
            elif kind == 3:
                innocent.append(("lease-put", key, kv.Put(rpc_pb2.PutRequest(key=key, value=b"l",
                                                                             lease=r.choice(leases)))))
            else:
                innocent.append(("grant", None, lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=600))))
        long_key = prefix + b"long-%02d-" % wave + r.randbytes(4000)
        odd = rpc_pb2.Compare(key=prefix + b"w00-00", result=rpc_pb2.Compare.EQUAL)
        odd.target = 9  # unknown: compares as equal
        innocent.append(("put", long_key, kv.Put(rpc_pb2.PutRequest(key=long_key, value=b"L"))))
        innocent.append(("txn", prefix + b"odd-%02d" % wave, kv.Txn(rpc_pb2.TxnRequest(
            compare=[odd], success=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(
                key=prefix + b"odd-%02d" % wave, value=b"t"))]))))
        bad.append((("NOT_FOUND", "etcdserver: requested lease not found"),
                    kv.Put(rpc_pb2.PutRequest(key=prefix + b"bad-lease", value=b"x", lease=7777777))))
        bad.append((("INVALID_ARGUMENT", "etcdserver: key not found"),
                    kv.Put(rpc_pb2.PutRequest(key=prefix + b"missing", ignore_value=True))))
        bad.append((("NOT_FOUND", "etcdserver: requested lease not found"),
                    lease.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=8888888))))
        bad.append((("OUT_OF_RANGE", "etcdserver: mvcc: required revision is a future revision"),
                    kv.Compact(rpc_pb2.CompactionRequest(revision=2**40))))
        calls = [c for *_, c in innocent] + [c for _, c in bad]
        order = list(range(len(calls)))
        r.shuffle(order)
        results = [None] * len(calls)
        done = await asyncio.gather(*(outcome(calls[i]) for i in order))
        for i, res in zip(order, done):
            results[i] = res
        for (what, key, _), res in zip(innocent, results):
            if res[0] != "ok":
                failures.append((wave, what, res))
                continue
            if what == "delete":
                assert res[1].deleted == 1
            if what == "grant":
                continue  # a lease grant takes no revision
            revisions.append(res[1].header.revision)
            if what in ("put", "txn", "lease-put"):
                written[key] = {"put": b"p", "txn": b"t", "lease-put": b"l"}[what]
                if key == long_key:
                    written[key] = b"L"
        for (want, _), res in zip(bad, results[len(innocent):]):
            if res[0] != "error" or res[1:] != want:
                wrong.append((wave, want, res))
    total = WAVES * (INNOCENT + 2)
    assert not failures, f"{len(failures)} of {total} innocent requests failed: {failures[:3]}"
    assert not wrong, f"{len(wrong)} of {WAVES * len(bad)} refused requests got another answer: {wrong[:3]}"
    end = (await kv.Range(rpc_pb2.RangeRequest(key=b"x"))).header.revision
    # every successful write took exactly one new revision; the refused ones took none
    assert sorted(revisions) == list(range(start + 1, end + 1))
    got = await kv.Range(rpc_pb2.RangeRequest(key=prefix, range_end=prefix[:-1] + b"0"))
    assert {x.key: x.value for x in got.kvs} == written


def test_innocent_requests_of_a_batch_succeed(target):
    make_channel, _ = target

    async def main():
        async with make_channel() as channel:
            await run_waves(channel, f"/iso-{uuid.uuid4().hex[:8]}/".encode())
    asyncio.run(main())
