"""etcd's answers at the edges of the API, asserted on a real etcd 3.4 and on the shim with
the same test (the ``server`` fixture runs each test on both): compare validation (empty
key, unknown target and result), empty ops, --max-txn-ops with nested txns, unknown sort
orders, a limit of the largest int64, too large lease TTLs, and the Watch stream: events
after the client half-closes, a duplicate explicit watch_id, every cancel reason. Each test
works under its own prefix; nothing is stood in.
"""

from __future__ import annotations

import queue
import uuid

import grpc
import pytest

from k8s_sql.shim.etcdpb import rpc_pb2, rpc_pb2_grpc
from streams import WatchStream

INVALID = grpc.StatusCode.INVALID_ARGUMENT
DUPLICATE = "mvcc: duplicate watch ID provided on the WatchStream"


@pytest.fixture
def kv(channel):
    return rpc_pb2_grpc.KVStub(channel)


@pytest.fixture
def prefix() -> bytes:
    return f"/edges-{uuid.uuid4().hex[:8]}/".encode()


def error_of(call, *args) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as e:
        call(*args)
    return e.value.code(), e.value.details()


def rng(key: bytes, **kw) -> rpc_pb2.RequestOp:
    return rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=key, **kw))


def put(key: bytes, value: bytes = b"v") -> rpc_pb2.RequestOp:
    return rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key, value=value))


def compare(key: bytes, target: int, result: int, **operand) -> rpc_pb2.Compare:
    c = rpc_pb2.Compare(key=key, **operand)
    c.target, c.result = target, result  # proto3 enums are open: unknown numbers go on the wire
    return c


# --- KV ---

def test_compare_with_an_empty_key_is_refused(kv, prefix):
    k = prefix + b"k"
    for txn in (rpc_pb2.TxnRequest(compare=[rpc_pb2.Compare(key=b"")], success=[put(k)]),
                rpc_pb2.TxnRequest(compare=[rpc_pb2.Compare(key=b"")]),  # read-only
                rpc_pb2.TxnRequest(success=[rpc_pb2.RequestOp(request_txn=rpc_pb2.TxnRequest(
                    compare=[rpc_pb2.Compare(key=b"")]))])):
        assert error_of(kv.Txn, txn) == (INVALID, "etcdserver: key is not provided")
    assert kv.Range(rpc_pb2.RangeRequest(key=k)).count == 0  # nothing was written


def test_unknown_compare_target_compares_as_equal(kv, prefix):
    k, missing = prefix + b"k", prefix + b"missing"
    kv.Put(rpc_pb2.PutRequest(key=k, value=b"v"))
    EQUAL, GREATER, NOT_EQUAL = rpc_pb2.Compare.EQUAL, rpc_pb2.Compare.GREATER, rpc_pb2.Compare.NOT_EQUAL
    read_only = [kv.Txn(rpc_pb2.TxnRequest(compare=[compare(key, 9, result)], success=[rng(k)])).succeeded
                 for key in (k, missing) for result in (EQUAL, GREATER, NOT_EQUAL)]
    assert read_only == [True, False, False, True, False, False]
    # a write txn with such a compare writes (it used to fail every write of its batch)
    written = kv.Txn(rpc_pb2.TxnRequest(compare=[compare(k, 9, EQUAL)], success=[put(k, b"w")]))
    assert written.succeeded
    got = kv.Range(rpc_pb2.RangeRequest(key=k)).kvs[0]
    assert (got.value, got.mod_revision) == (b"w", written.header.revision)


def test_unknown_compare_result_holds(kv, prefix):
    k, missing = prefix + b"k", prefix + b"missing"
    kv.Put(rpc_pb2.PutRequest(key=k, value=b"v"))
    VERSION, VALUE = rpc_pb2.Compare.VERSION, rpc_pb2.Compare.VALUE
    got = [kv.Txn(rpc_pb2.TxnRequest(compare=[compare(key, target, 9)])).succeeded
           for key in (k, missing) for target in (VERSION, VALUE)]
    assert got == [True, True, True, False]  # no key and a VALUE target: always false


def test_empty_request_op_is_refused_as_key_not_found(kv, prefix):
    for txn in (rpc_pb2.TxnRequest(success=[rpc_pb2.RequestOp()]),
                rpc_pb2.TxnRequest(failure=[put(prefix + b"a"), rpc_pb2.RequestOp()]),
                rpc_pb2.TxnRequest(success=[rpc_pb2.RequestOp(request_txn=rpc_pb2.TxnRequest(
                    success=[rpc_pb2.RequestOp()]))])):
        assert error_of(kv.Txn, txn) == (INVALID, "etcdserver: key not found")


def test_max_txn_ops_counts_what_nested_txns_may_use(kv, prefix):
    """etcd's default --max-txn-ops is 128; a nested txn gets 128 minus its parent's count."""
    k = prefix + b"k"
    too_many = (INVALID, "etcdserver: too many operations in txn request")
    assert error_of(kv.Txn, rpc_pb2.TxnRequest(success=[rng(k)] * 129)) == too_many
    assert error_of(kv.Txn, rpc_pb2.TxnRequest(compare=[rpc_pb2.Compare(key=k)] * 129)) == too_many
    assert kv.Txn(rpc_pb2.TxnRequest(success=[rng(k)] * 128)).succeeded

    def nested(inner: int) -> rpc_pb2.TxnRequest:
        return rpc_pb2.TxnRequest(success=[rng(k)] * 99 + [rpc_pb2.RequestOp(request_txn=rpc_pb2.TxnRequest(
            success=[rng(k)] * inner))])
    assert kv.Txn(nested(28)).succeeded  # 128 - 100 ops of the parent
    assert error_of(kv.Txn, nested(29)) == too_many


def test_unknown_sort_order_keeps_key_order(kv, prefix):
    for name, version in ((b"a", 3), (b"b", 1), (b"c", 2)):
        for i in range(version):
            kv.Put(rpc_pb2.PutRequest(key=prefix + name, value=b"%d" % i))
    r = kv.Range(rpc_pb2.RangeRequest(key=prefix, range_end=prefix[:-1] + b"0", sort_order=7,
                                      sort_target=rpc_pb2.RangeRequest.VERSION))
    assert [x.key for x in r.kvs] == [prefix + b"a", prefix + b"b", prefix + b"c"]


def test_limit_of_the_largest_int64(kv, prefix):
    for name in (b"a", b"b"):
        kv.Put(rpc_pb2.PutRequest(key=prefix + name, value=b"v"))
    r = kv.Range(rpc_pb2.RangeRequest(key=prefix, range_end=prefix[:-1] + b"0", limit=2**63 - 1))
    assert (len(r.kvs), r.more, r.count) == (2, False, 2)
    txn = kv.Txn(rpc_pb2.TxnRequest(success=[rng(prefix, range_end=prefix[:-1] + b"0", limit=2**63 - 1),
                                             put(prefix + b"c")]))
    assert len(txn.responses[0].response_range.kvs) == 2


def test_too_large_lease_ttl(channel):
    lease = rpc_pb2_grpc.LeaseStub(channel)
    assert error_of(lease.LeaseGrant, rpc_pb2.LeaseGrantRequest(TTL=9_000_000_001)) == (
        grpc.StatusCode.OUT_OF_RANGE, "etcdserver: too large lease TTL")


# --- Watch ---

@pytest.fixture
def stream(channel):
    s = WatchStream(channel, timeout=30)
    yield s
    s.close()


def test_events_keep_coming_after_the_client_half_closes(kv, channel, prefix):
    """A client that sends its create request and closes its side still gets events: etcd
    ends the stream only with the call (here: its 30 s deadline or the test's cancel)."""
    s = WatchStream(channel, timeout=30)
    try:
        s.send(create_request=rpc_pb2.WatchCreateRequest(key=prefix, range_end=prefix[:-1] + b"0"))
        s.close_send()
        assert s.next().created
        for i in range(3):
            kv.Put(rpc_pb2.PutRequest(key=prefix + b"k", value=b"%d" % i))
        assert [e.kv.value for _, e in s.events(3)] == [b"0", b"1", b"2"]
        assert not s.ended.is_set()
    finally:
        s.close()


def test_duplicate_watch_id_is_refused_with_id_minus_one(kv, stream, prefix):
    first = stream.create(prefix + b"k", watch_id=7)
    assert first.watch_id == 7 and not first.canceled
    stream.send(create_request=rpc_pb2.WatchCreateRequest(key=prefix + b"other", watch_id=7))
    r = stream.next()
    assert (r.watch_id, r.created, r.canceled, r.cancel_reason) == (-1, True, True, DUPLICATE)
    kv.Put(rpc_pb2.PutRequest(key=prefix + b"k", value=b"still watched"))
    (wid, e), = stream.events(1)
    assert (wid, e.kv.value) == (7, b"still watched")  # the first watch lives on
    auto = stream.create(prefix + b"k2")
    assert auto.watch_id not in (7, -1) and not auto.canceled


def test_empty_watch_range_is_refused_with_id_minus_one(stream, prefix):
    for key, end in ((prefix + b"b", prefix + b"a"), (prefix + b"b", prefix + b"b")):
        stream.send(create_request=rpc_pb2.WatchCreateRequest(key=key, range_end=end))
        r = stream.next()
        assert (r.watch_id, r.created, r.canceled, r.cancel_reason) == (-1, True, True, "mvcc: watcher range is empty")
    ok = stream.create(prefix + b"b", range_end=b"\0")  # from key: not empty
    assert not ok.canceled


def test_cancel_is_answered_without_a_reason_and_unknown_ids_not_at_all(stream, prefix):
    w = stream.create(prefix + b"k").watch_id
    stream.send(cancel_request=rpc_pb2.WatchCancelRequest(watch_id=w))
    r = stream.next()
    assert (r.watch_id, r.canceled, r.created, r.cancel_reason, r.compact_revision) == (w, True, False, "", 0)
    stream.send(cancel_request=rpc_pb2.WatchCancelRequest(watch_id=w))  # again: unknown now
    stream.send(cancel_request=rpc_pb2.WatchCancelRequest(watch_id=12345))
    with pytest.raises(queue.Empty):
        stream.next(timeout=1.0)


def test_negative_start_revision_is_cancelled_as_compacted(stream, prefix):
    """etcd 3.4 creates the watcher, then cancels it like one behind compaction; with nothing
    compacted yet (this module compacts last) its compact revision is -1."""
    created = stream.create(prefix + b"k", start_revision=-5)
    assert not created.canceled
    r = stream.next()
    assert (r.watch_id, r.canceled, r.compact_revision, r.cancel_reason) == (created.watch_id, True, -1, "")


def test_watch_behind_compaction_is_cancelled_with_the_compact_revision(kv, stream, prefix):
    k = prefix + b"k"
    first = kv.Put(rpc_pb2.PutRequest(key=k, value=b"1")).header.revision
    now = kv.Put(rpc_pb2.PutRequest(key=k, value=b"2")).header.revision
    kv.Compact(rpc_pb2.CompactionRequest(revision=now, physical=True))
    stream.create(k, start_revision=first, watch_id=5)
    r = stream.next()
    assert (r.watch_id, r.canceled, r.compact_revision, r.cancel_reason) == (5, True, now, "")
    # the id stays taken until the client cancels it
    stream.send(create_request=rpc_pb2.WatchCreateRequest(key=k, watch_id=5))
    r = stream.next()
    assert (r.watch_id, r.canceled, r.cancel_reason) == (-1, True, DUPLICATE)
    stream.send(cancel_request=rpc_pb2.WatchCancelRequest(watch_id=5))
    r = stream.next()
    assert (r.watch_id, r.canceled, r.created) == (5, True, False)
    assert stream.create(k, watch_id=5).watch_id == 5
