"""etcd's request limits, ``--max-request-bytes`` and ``--max-txn-ops``: a real etcd 3.4 and
the shim started with the same flags answer the same at the exact boundaries (and at etcd's
defaults: 1.5 MiB, 128 ops).

etcd checks the size of the raft request it would propose: the marshalled request plus a
header carrying a request id that starts with the low 16 bits of the member id, so the
largest accepted request differs by a byte between members. :func:`largest_value` computes
it from a member id; the tests check that etcd's and the shim's boundaries are where it says,
one byte more is refused with ``request is too large``, reads are not limited (only by gRPC,
at the limit plus 512 KiB), and fragmenting watchers split at the limit alike.
"""

from __future__ import annotations

import subprocess
import sys
import uuid

import grpc
import pytest

from etcd_server import EtcdServer
from k8s_sql.shim.etcdpb import rpc_pb2, rpc_pb2_grpc
from streams import WatchStream

LIMIT = 4096
OPS = 4
TOO_LARGE = (grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: request is too large")
TOO_MANY = (grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: too many operations in txn request")


def varint(n: int) -> int:
    return max(1, (n.bit_length() + 6) // 7)


def raft_size(field: int, request_size: int, member_id: int) -> int:
    """Bytes of etcd's InternalRaftRequest{header: {ID}, <field>: request} (raft_internal.proto:
    header = 100, put = 4, txn = 6); the ID is the member id's low 16 bits << 48 | ms << 8."""
    request_id = (member_id & 0xFFFF) << 48 | 1 << 47
    header = 1 + varint(request_id)
    return 2 + varint(header) + header + 1 + varint(request_size) + request_size


def largest_value(limit: int, member_id: int, key: bytes) -> int:
    """Length of the largest value a Put of ``key`` may carry under ``limit``."""
    n = limit
    while raft_size(4, rpc_pb2.PutRequest(key=key, value=b"x" * n).ByteSize(), member_id) > limit:
        n -= 1
    return n


def error_of(call, *args) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as e:
        call(*args)
    return e.value.code(), e.value.details()


@pytest.fixture(scope="module")
def small_etcd(tmp_path_factory):
    server = EtcdServer(tmp_path_factory.mktemp("etcd-limits"),
                        extra_args=["--max-request-bytes", str(LIMIT), "--max-txn-ops", str(OPS)]).start()
    yield server
    server.stop()


@pytest.fixture(params=["etcd", "shim"])
def small(request, small_etcd, shim_factory):
    """A channel to etcd or the shim, both with --max-request-bytes 4096 --max-txn-ops 4."""
    if request.param == "etcd":
        ch = grpc.insecure_channel(small_etcd.endpoint.removeprefix("http://"))
    else:
        ch = shim_factory(extra_args=["--max-request-bytes", str(LIMIT), "--max-txn-ops", str(OPS)]).channel()
    yield ch
    ch.close()


@pytest.fixture
def default(channel):
    """A channel to etcd or the shim with etcd's default limits (conftest's ``channel``)."""
    return channel


def member_id(kv) -> int:
    return kv.Range(rpc_pb2.RangeRequest(key=b"x")).header.member_id


def key() -> bytes:
    return f"/limits-{uuid.uuid4().hex[:8]}".encode()


def test_put_at_the_exact_size_limit(small):
    kv = rpc_pb2_grpc.KVStub(small)
    k = key()
    n = largest_value(LIMIT, member_id(kv), k)
    assert n < LIMIT - 10
    assert kv.Put(rpc_pb2.PutRequest(key=k, value=b"x" * n)).header.revision
    assert error_of(kv.Put, rpc_pb2.PutRequest(key=k, value=b"x" * (n + 1))) == TOO_LARGE
    assert kv.Range(rpc_pb2.RangeRequest(key=k)).kvs[0].value == b"x" * n


def test_etcds_default_limit_of_one_and_a_half_mebibytes(default):
    kv = rpc_pb2_grpc.KVStub(default)
    k = key()
    n = largest_value(1572864, member_id(kv), k)
    assert kv.Put(rpc_pb2.PutRequest(key=k, value=b"x" * n)).header.revision
    assert error_of(kv.Put, rpc_pb2.PutRequest(key=k, value=b"x" * (n + 1))) == TOO_LARGE


def test_write_txn_and_delete_are_limited_reads_are_not(small):
    kv = rpc_pb2_grpc.KVStub(small)
    k = key()
    mid = member_id(kv)
    base = rpc_pb2.TxnRequest(success=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=k))])
    pad = LIMIT - raft_size(6, base.ByteSize(), mid)
    fits = rpc_pb2.TxnRequest(success=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=k, value=b"y" * pad))])
    while raft_size(6, fits.ByteSize(), mid) > LIMIT:
        fits.success[0].request_put.value = fits.success[0].request_put.value[:-1]
    assert kv.Txn(fits).succeeded
    fits.success[0].request_put.value += b"y"
    assert error_of(kv.Txn, fits) == TOO_LARGE
    big_key = k + b"/" + b"k" * (2 * LIMIT)
    assert error_of(kv.DeleteRange, rpc_pb2.DeleteRangeRequest(key=big_key)) == TOO_LARGE
    # reads do not go through raft: only gRPC's limit (the limit plus 512 KiB) applies
    assert kv.Range(rpc_pb2.RangeRequest(key=big_key)).count == 0
    read_only = rpc_pb2.TxnRequest(success=[rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=big_key))])
    assert kv.Txn(read_only).succeeded
    code, details = error_of(kv.Range, rpc_pb2.RangeRequest(key=b"k" * (LIMIT + 512 * 1024 + 1)))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in details.lower()


def test_max_txn_ops(small):
    kv = rpc_pb2_grpc.KVStub(small)
    k = key()
    rng = rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=k))
    assert kv.Txn(rpc_pb2.TxnRequest(success=[rng] * OPS, failure=[rng] * OPS)).succeeded
    assert error_of(kv.Txn, rpc_pb2.TxnRequest(failure=[rng] * (OPS + 1))) == TOO_MANY
    nested = rpc_pb2.RequestOp(request_txn=rpc_pb2.TxnRequest(success=[rng, rng]))
    assert kv.Txn(rpc_pb2.TxnRequest(success=[rng, nested])).succeeded  # 2 + 2 <= 4
    assert error_of(kv.Txn, rpc_pb2.TxnRequest(success=[rng, rng, nested])) == TOO_MANY  # 3 + 2


def test_fragmenting_watcher_splits_at_the_limit(small):
    """etcd splits a fragmenting watcher's response of --max-request-bytes + 512 KiB or more:
    each part but the last has ``fragment`` set, stays below that size, and would reach it
    with the next event (etcd's sendFragments)."""
    kv = rpc_pb2_grpc.KVStub(small)
    prefix = key() + b"/"
    limit = LIMIT + 512 * 1024
    first = 0
    for i in range(140):  # ~550 KB of events; a watcher from the first gets them in one response
        rev = kv.Put(rpc_pb2.PutRequest(key=prefix + b"%03d" % i, value=b"v" * 3900)).header.revision
        first = first or rev
    stream = WatchStream(small, timeout=60)
    try:
        stream.create(prefix, range_end=prefix[:-1] + b"0", start_revision=first, fragment=True)
        parts = []
        while sum(len(r.events) for r in parts) < 140:
            parts.append(stream.next())
    finally:
        stream.close()
    assert len(parts) == 2 and [r.fragment for r in parts] == [True, False]
    events = [e for r in parts for e in r.events]
    assert [e.kv.key for e in events] == [prefix + b"%03d" % i for i in range(140)]
    head = parts[0]
    assert head.ByteSize() < limit
    grown = rpc_pb2.WatchResponse()
    grown.CopyFrom(head)
    grown.events.append(parts[1].events[0])
    assert grown.ByteSize() >= limit


def test_limits_must_be_positive():
    r = subprocess.run([sys.executable, "-m", "k8s_sql", "shim", "serve", "--max-request-bytes", "0"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--max-request-bytes" in r.stderr
