"""kube-apiserver's way of using etcd (k8s.io/apiserver storage/etcd3), run against a real
etcd 3.4 and against the shim with identical assertions.

Each test works under its own key prefix on one etcd and one shim per module, so all
revision checks are relative to revisions the test itself saw. Leases are revoked rather
than left to expire (etcd's minimum TTL depends on its election timeout). Nothing is
stood in.
"""

from __future__ import annotations

import queue

import grpc
import pytest

from k8s_sql.shim.etcdpb import rpc_pb2, rpc_pb2_grpc

EQUAL, GREATER, LESS = rpc_pb2.Compare.EQUAL, rpc_pb2.Compare.GREATER, rpc_pb2.Compare.LESS
MOD, VERSION = rpc_pb2.Compare.MOD, rpc_pb2.Compare.VERSION


@pytest.fixture(params=["etcd", "shim"])
def kv(request, oracle, shim):
    """(KV stub, Watch stub, Lease stub) of one server; the same tests run on both."""
    if request.param == "etcd":
        channel = grpc.insecure_channel(oracle.endpoint.removeprefix("http://"))
    else:
        channel = shim.channel()
    yield rpc_pb2_grpc.KVStub(channel), rpc_pb2_grpc.WatchStub(channel), rpc_pb2_grpc.LeaseStub(channel)
    channel.close()


def guarded(key: bytes, target, value: int, success: list, ) -> rpc_pb2.TxnRequest:
    """Txn(<target>(key) == value) then success else range(key): kube-apiserver's guarded write."""
    cmp = rpc_pb2.Compare(key=key, target=target, result=EQUAL)
    if target == MOD:
        cmp.mod_revision = value
    else:
        cmp.version = value
    return rpc_pb2.TxnRequest(compare=[cmp], success=success,
                              failure=[rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=key))])


def put_op(key, value, lease=0):
    return rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key, value=value, lease=lease))


def test_create_update_delete_with_conflicts(kv, request):
    kv_, _, _ = kv
    key = b"/registry/pods/%s/p" % request.node.callspec.id.encode()
    created = kv_.Txn(guarded(key, MOD, 0, [put_op(key, b"v1")]))
    assert created.succeeded
    rev1 = created.header.revision
    again = kv_.Txn(guarded(key, MOD, 0, [put_op(key, b"dup")]))
    assert not again.succeeded  # AlreadyExists: the else branch shows the current object
    assert again.responses[0].response_range.kvs[0].value == b"v1"
    assert again.responses[0].response_range.kvs[0].mod_revision == rev1

    updated = kv_.Txn(guarded(key, MOD, rev1, [put_op(key, b"v2")]))
    assert updated.succeeded and updated.header.revision == rev1 + 1
    stale = kv_.Txn(guarded(key, MOD, rev1, [put_op(key, b"lost")]))
    assert not stale.succeeded  # conflict: the client retries from the object in the answer
    got = stale.responses[0].response_range.kvs[0]
    assert (got.value, got.mod_revision, got.create_revision, got.version) == (b"v2", rev1 + 1, rev1, 2)

    delete = rpc_pb2.RequestOp(request_delete_range=rpc_pb2.DeleteRangeRequest(key=key))
    assert not kv_.Txn(guarded(key, MOD, rev1, [delete])).succeeded
    deleted = kv_.Txn(guarded(key, MOD, rev1 + 1, [delete]))
    assert deleted.succeeded and deleted.responses[0].response_delete_range.deleted == 1
    assert kv_.Range(rpc_pb2.RangeRequest(key=key)).count == 0


def test_paginated_list_at_a_fixed_revision(kv, request):
    kv_, _, _ = kv
    prefix = b"/registry/cm/%s/" % request.node.callspec.id.encode()
    end = prefix[:-1] + b"0"
    for i in range(7):
        kv_.Put(rpc_pb2.PutRequest(key=prefix + b"%02d" % i, value=b"x"))
    first = kv_.Range(rpc_pb2.RangeRequest(key=prefix, range_end=end, limit=3))
    list_rev = first.header.revision
    # writes after the list's revision must not show up in later pages
    kv_.Put(rpc_pb2.PutRequest(key=prefix + b"99", value=b"late"))
    kv_.DeleteRange(rpc_pb2.DeleteRangeRequest(key=prefix + b"05"))
    keys, page, counts = [], first, []
    while True:
        keys += [k.key for k in page.kvs]
        counts.append((page.count, page.more))
        if not page.more:
            break
        page = kv_.Range(rpc_pb2.RangeRequest(key=page.kvs[-1].key + b"\x00", range_end=end,
                                              limit=3, revision=list_rev))
    assert keys == [prefix + b"%02d" % i for i in range(7)]
    assert counts == [(7, True), (4, True), (1, False)]  # count = keys left from the page's start
    counted = kv_.Range(rpc_pb2.RangeRequest(key=prefix, range_end=end, count_only=True))
    assert counted.count == 7 and not counted.kvs  # 7 - deleted 05 + late 99


def test_watch_from_list_revision_with_prev_kv(kv, request):
    kv_, watch_, _ = kv
    prefix = b"/registry/sec/%s/" % request.node.callspec.id.encode()
    end = prefix[:-1] + b"0"
    kv_.Put(rpc_pb2.PutRequest(key=prefix + b"a", value=b"1"))
    list_rev = kv_.Range(rpc_pb2.RangeRequest(key=prefix, range_end=end)).header.revision
    r1 = kv_.Put(rpc_pb2.PutRequest(key=prefix + b"a", value=b"2")).header.revision
    r2 = kv_.Put(rpc_pb2.PutRequest(key=prefix + b"b", value=b"3")).header.revision
    r3 = kv_.DeleteRange(rpc_pb2.DeleteRangeRequest(key=prefix + b"a")).header.revision
    requests: queue.Queue = queue.Queue()
    requests.put(rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(
        key=prefix, range_end=end, start_revision=list_rev + 1, prev_kv=True)))
    stream = watch_.Watch(iter(requests.get, None), timeout=15)
    events = []
    try:
        for resp in stream:
            events += [(e.type, e.kv.key[len(prefix):], e.kv.value, e.kv.mod_revision, e.prev_kv.value)
                       for e in resp.events]
            if len(events) >= 3:
                requests.put(rpc_pb2.WatchRequest(progress_request=rpc_pb2.WatchProgressRequest()))
            if len(events) >= 3 and not resp.events:
                # progress notification: its revision covers every write so far
                assert resp.header.revision >= r3
                break
    finally:
        requests.put(None)
        stream.cancel()
    assert events == [(0, b"a", b"2", r1, b"1"), (0, b"b", b"3", r2, b""), (1, b"a", b"", r3, b"2")]


def test_lease_revoke_deletes_attached_keys_with_events(kv, request):
    kv_, watch_, lease_ = kv
    prefix = b"/registry/events/%s/" % request.node.callspec.id.encode()
    lease = lease_.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=60)).ID
    rev = kv_.Put(rpc_pb2.PutRequest(key=prefix + b"e1", value=b"x", lease=lease)).header.revision
    kv_.Put(rpc_pb2.PutRequest(key=prefix + b"e2", value=b"y", lease=lease))
    ttl = lease_.LeaseTimeToLive(rpc_pb2.LeaseTimeToLiveRequest(ID=lease, keys=True))
    assert sorted(ttl.keys) == [prefix + b"e1", prefix + b"e2"] and 0 < ttl.TTL <= 60
    lease_.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=lease))
    assert kv_.Range(rpc_pb2.RangeRequest(key=prefix, range_end=prefix[:-1] + b"0")).count == 0
    requests: queue.Queue = queue.Queue()
    requests.put(rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(
        key=prefix, range_end=prefix[:-1] + b"0", start_revision=rev)))
    stream = watch_.Watch(iter(requests.get, None), timeout=15)
    events = []
    try:
        for resp in stream:
            events += [(e.type, e.kv.key[len(prefix):]) for e in resp.events]
            if len(events) >= 4:
                break
    finally:
        requests.put(None)
        stream.cancel()
    assert events[:2] == [(0, b"e1"), (0, b"e2")]
    assert sorted(events[2:]) == [(1, b"e1"), (1, b"e2")]


def test_compaction_through_compact_rev_key(kv, request):
    kv_, _, _ = kv
    key = b"compact_rev_key"
    obj = b"/registry/leases/%s/l" % request.node.callspec.id.encode()
    old = kv_.Put(rpc_pb2.PutRequest(key=obj, value=b"old")).header.revision
    kv_.Put(rpc_pb2.PutRequest(key=obj, value=b"new"))
    current = kv_.Range(rpc_pb2.RangeRequest(key=key))
    version = current.kvs[0].version if current.kvs else 0
    rev = current.header.revision
    won = kv_.Txn(guarded(key, VERSION, version, [put_op(key, b"%d" % rev)]))
    assert won.succeeded  # this apiserver compacts; a second one with the same version loses
    lost = kv_.Txn(guarded(key, VERSION, version, [put_op(key, b"%d" % rev)]))
    assert not lost.succeeded and lost.responses[0].response_range.kvs[0].version == version + 1
    kv_.Compact(rpc_pb2.CompactionRequest(revision=rev))
    with pytest.raises(grpc.RpcError) as err:
        kv_.Range(rpc_pb2.RangeRequest(key=obj, revision=old))
    assert err.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert err.value.details() == "etcdserver: mvcc: required revision has been compacted"
    assert kv_.Range(rpc_pb2.RangeRequest(key=obj, revision=rev)).kvs[0].value == b"new"
