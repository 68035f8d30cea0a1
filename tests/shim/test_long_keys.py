"""Keys of any length etcd accepts (it limits only the request size), on a real etcd 3.4 and
on the shim with the same assertions: keys around the shim's index head (1024 bytes), past
PostgreSQL's btree entry limit (~2,700 bytes) and up to a mebibyte, in puts, ranges (one key,
prefixes, from-key, bounds longer than the head, limits and pages, sort orders, past
revisions), deletes, txn compares, watches, leases and compaction. Long keys that share
their first 1,100 bytes test the order among keys whose indexed heads are equal. Nothing is
stood in.
"""

from __future__ import annotations

import random
import uuid

import pytest

from k8s_sql.shim.etcdpb import rpc_pb2, rpc_pb2_grpc
from streams import WatchStream


@pytest.fixture
def kv(channel):
    return rpc_pb2_grpc.KVStub(channel)


@pytest.fixture
def prefix() -> bytes:
    return f"/long-{uuid.uuid4().hex[:8]}/".encode()


def noise(tag: str, n: int) -> bytes:
    """``n`` bytes that PostgreSQL cannot compress (a compressible key would hide the btree
    limit), the same for a given ``tag``."""
    return random.Random(tag).randbytes(n)


def keys_of(prefix: bytes) -> list[bytes]:
    """Keys of many lengths; several share their first 1,100 bytes (equal index heads)."""
    shared = prefix + b"s" + noise("s", 1099 - len(prefix))
    return sorted([
        prefix + b"a",
        prefix + b"h" + noise("h", 1022 - len(prefix)),   # 1023 bytes
        prefix + b"h" + noise("h", 1023 - len(prefix)),   # exactly the head
        prefix + b"h" + noise("h", 1024 - len(prefix)),
        prefix + b"m" + noise("m", 2800),
        prefix + b"n" + noise("n", 4000),
        prefix + b"o" + noise("o", 100_000),
        shared, shared + b"\x00", shared + b"a", shared + b"a\xff", shared + b"b", shared[:1024],
        prefix + b"z" + noise("z", 1 << 20),
    ])


def prefix_range(prefix: bytes, **kw) -> rpc_pb2.RangeRequest:
    return rpc_pb2.RangeRequest(key=prefix, range_end=prefix[:-1] + b"0", **kw)


def put_all(kv, keys: list[bytes]) -> dict[bytes, int]:
    """Put each key with its length as value; returns key -> mod revision."""
    return {k: kv.Put(rpc_pb2.PutRequest(key=k, value=b"%d" % len(k))).header.revision for k in keys}


def test_put_and_range_keys_of_any_length(kv, prefix):
    keys = keys_of(prefix)
    revs = put_all(kv, keys)
    for k in keys:  # one key at a time, exactly that key
        got = kv.Range(rpc_pb2.RangeRequest(key=k))
        assert [(x.key, x.value, x.mod_revision) for x in got.kvs] == [(k, b"%d" % len(k), revs[k])]
    got = kv.Range(prefix_range(prefix, keys_only=True))
    assert [x.key for x in got.kvs] == keys and got.count == len(keys)
    desc = kv.Range(prefix_range(prefix, keys_only=True, sort_order=rpc_pb2.RangeRequest.DESCEND))
    assert [x.key for x in desc.kvs] == keys[::-1]
    # pages of 3, each from the last key + "\0", as kube-apiserver pages
    seen, start = [], prefix
    while True:
        page = kv.Range(rpc_pb2.RangeRequest(key=start, range_end=prefix[:-1] + b"0", limit=3, keys_only=True))
        seen += [x.key for x in page.kvs]
        if not page.more:
            break
        start = page.kvs[-1].key + b"\x00"
    assert seen == keys


def test_ranges_bounded_by_long_keys(kv, prefix):
    keys = keys_of(prefix)
    put_all(kv, keys)
    shared = [k for k in keys if k.startswith(prefix + b"s" + noise("s", 1000))]
    for i in range(len(shared)):
        for j in range(i, len(shared)):
            got = kv.Range(rpc_pb2.RangeRequest(key=shared[i], range_end=shared[j], keys_only=True))
            assert [x.key for x in got.kvs] == shared[i:j], (i, j)
    for start in (shared[2], prefix + b"n" + noise("n", 4000), prefix + b"h" + noise("h", 1023 - len(prefix))):
        got = kv.Range(rpc_pb2.RangeRequest(key=start, range_end=b"\x00", keys_only=True, count_only=False))
        expect = [k for k in keys if k >= start]
        assert [x.key for x in got.kvs][:len(expect)] == expect
    # a bound longer than the head that sorts between keys sharing that head
    between = shared[1] + b"a\x00"  # after shared + "a", before shared + "a\\xff"
    got = kv.Range(rpc_pb2.RangeRequest(key=prefix, range_end=between, count_only=True))
    assert got.count == len([k for k in keys if k < between])


def test_history_deletes_and_compaction_of_long_keys(kv, prefix):
    keys = keys_of(prefix)
    revs = put_all(kv, keys)
    before = max(revs.values())
    long = [k for k in keys if len(k) > 1024]
    start, end = long[1], long[4]  # a range bounded by long keys, then its end key alone
    victims = [k for k in keys if start <= k < end] + [end]
    deleted = kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=start, range_end=end, prev_kv=True))
    assert [x.key for x in deleted.prev_kvs] == victims[:-1]
    one = kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=end))
    assert one.deleted == 1
    now = kv.Range(prefix_range(prefix, keys_only=True))
    assert [x.key for x in now.kvs] == [k for k in keys if k not in victims]
    past = kv.Range(prefix_range(prefix, keys_only=True, revision=before))
    assert [x.key for x in past.kvs] == keys
    page = kv.Range(prefix_range(prefix, keys_only=True, revision=before, limit=5))
    assert [x.key for x in page.kvs] == keys[:5] and page.more and page.count == len(keys)
    kv.Compact(rpc_pb2.CompactionRequest(revision=one.header.revision))
    assert [x.key for x in kv.Range(prefix_range(prefix, keys_only=True)).kvs] == [k for k in keys
                                                                                    if k not in victims]


def test_txn_on_long_keys(kv, prefix):
    k = prefix + noise("t", 5000)
    created = kv.Txn(rpc_pb2.TxnRequest(
        compare=[rpc_pb2.Compare(key=k, target=rpc_pb2.Compare.MOD, mod_revision=0)],
        success=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=k, value=b"1"))]))
    assert created.succeeded
    rev = created.header.revision
    stale = kv.Txn(rpc_pb2.TxnRequest(
        compare=[rpc_pb2.Compare(key=k, target=rpc_pb2.Compare.MOD, mod_revision=rev - 1)],
        success=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=k, value=b"lost"))],
        failure=[rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=k))]))
    assert not stale.succeeded
    assert stale.responses[0].response_range.kvs[0].value == b"1"
    over_range = kv.Txn(rpc_pb2.TxnRequest(compare=[rpc_pb2.Compare(
        key=prefix, range_end=prefix[:-1] + b"0", target=rpc_pb2.Compare.VERSION, version=1)]))
    assert over_range.succeeded


def test_watch_and_leases_with_long_keys(kv, channel, prefix):
    keys = [prefix + noise("w", 3000) + b"%d" % i for i in range(3)]
    lease = rpc_pb2_grpc.LeaseStub(channel)
    lease_id = lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=600)).ID
    stream = WatchStream(channel, timeout=30)
    try:
        stream.create(prefix, range_end=prefix[:-1] + b"0", prev_kv=True)
        one = WatchStream(channel, timeout=30)
        try:
            one.create(keys[1])
            for k in keys:
                kv.Put(rpc_pb2.PutRequest(key=k, value=b"v", lease=lease_id))
            kv.Put(rpc_pb2.PutRequest(key=keys[1], value=b"again", lease=lease_id))
            assert [(e.kv.key, e.kv.value) for _, e in one.events(2)] == [(keys[1], b"v"), (keys[1], b"again")]
        finally:
            one.close()
        ttl = lease.LeaseTimeToLive(rpc_pb2.LeaseTimeToLiveRequest(ID=lease_id, keys=True))
        assert sorted(ttl.keys) == keys
        lease.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=lease_id))
        got = [(e.type, e.kv.key) for _, e in stream.events(7)]
        assert got == [(0, k) for k in keys] + [(0, keys[1])] + [(1, k) for k in keys]
    finally:
        stream.close()
