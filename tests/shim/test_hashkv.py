"""Maintenance.HashKV and Maintenance.Hash of the shim, against a real etcd 3.4.

HashKV is compared differentially: a fresh etcd 3.4 and a fresh shim receive the same
requests (puts, overwrites, a lease with its revoke, deletes of one key and of a range, a
txn with several changes at one revision, a delete and re-create, compactions, also at a
revision that is a delete, and a history where no key is live), and after each step HashKV
at every revision from -1 to one past the current one must give the same answer on both:
hash and compact_revision, or the same gRPC error. ``etcdctl endpoint hashkv`` (Debian's
etcd-client 3.4, over mTLS) must agree with it, and two shims on one database must give
equal answers. Hash cannot equal etcd's (see api/maintenance.py), so its properties are
tested instead: two shims on one database agree, and a change to keys or leases changes it.
Nothing is stood in.
"""

from __future__ import annotations

import json
import os
import subprocess

import grpc
import pytest

from etcd_server import ETCDCTL, Both, EtcdServer, make_tls
from k8s_sql.shim.etcdpb import rpc_pb2, rpc_pb2_grpc

LEASE = 0x5EED


@pytest.fixture
def etcd(tmp_path):
    server = EtcdServer(tmp_path / "etcd", tls=make_tls(tmp_path / "etcd-pki")).start()
    yield server
    server.stop()




def test_hashkv_equals_etcd_for_the_same_history(etcd, shim_factory):
    both = Both(etcd, shim_factory())
    try:
        fresh = both.assert_same_hashkv()
        assert fresh[0][1] == -1, "before any compaction etcd reports compact_revision -1"

        both.put(b"a", b"1")
        both.put(b"b", b"2")
        both.put(b"a", b"3")  # overwrite: version 2
        both.call("Lease", "LeaseGrant", rpc_pb2.LeaseGrantRequest(ID=LEASE, TTL=600))
        both.put(b"l1", b"leased", lease=LEASE)
        both.put(b"l2", b"leased", lease=LEASE)
        both.put(b"big", b"x" * 5000)
        both.call("KV", "DeleteRange", rpc_pb2.DeleteRangeRequest(key=b"b"))
        txn = rpc_pb2.TxnRequest(
            compare=[rpc_pb2.Compare(key=b"a", target=rpc_pb2.Compare.VERSION, result=rpc_pb2.Compare.EQUAL,
                                     version=2)],
            success=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"t1", value=b"x")),
                     rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"t2", value=b"y")),
                     rpc_pb2.RequestOp(request_delete_range=rpc_pb2.DeleteRangeRequest(key=b"big")),
                     rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=b"a"))])
        assert both.call("KV", "Txn", txn)["etcd"].succeeded
        both.put(b"b", b"again")  # re-created after its delete: a new create_revision
        both.call("KV", "Put", rpc_pb2.PutRequest(key=b"a", value=b"", ignore_lease=True))  # empty value
        before = both.assert_same_hashkv()
        # a history hash does not change when later revisions are written
        both.put(b"c", b"1")
        after = both.assert_same_hashkv()
        assert all(after[r][:2] == before[r][:2] for r in range(1, max(before)))
        assert after[0][0] != before[0][0]
        both.call("Lease", "LeaseRevoke", rpc_pb2.LeaseRevokeRequest(ID=LEASE))  # deletes l1, l2 at one revision
        both.call("KV", "DeleteRange", rpc_pb2.DeleteRangeRequest(key=b"t", range_end=b"u"))  # t1, t2: subs 0, 1
        both.assert_same_hashkv()

        # compaction at a revision that is a put
        compact_at = both.revision() - 3
        both.call("KV", "Compact", rpc_pb2.CompactionRequest(revision=compact_at, physical=True))
        answers = both.assert_same_hashkv()
        assert answers[compact_at][0] == grpc.StatusCode.OUT_OF_RANGE  # the compact revision itself
        assert answers[compact_at + 1][1] == compact_at
        both.put(b"a", b"after-compaction")
        both.put(b"d", b"1")
        both.call("KV", "DeleteRange", rpc_pb2.DeleteRangeRequest(key=b"c"))
        both.assert_same_hashkv()

        # compaction at a revision that is a delete (etcd drops that delete from its store)
        both.call("KV", "Compact", rpc_pb2.CompactionRequest(revision=both.revision(), physical=True))
        both.assert_same_hashkv()  # HashKV(0) hashes the compact revision itself
        both.put(b"e", b"1")
        both.assert_same_hashkv()

        # no key live at the hashed revision: etcd's keep set is empty and it hashes every
        # version it still holds below the compaction
        both.call("KV", "DeleteRange", rpc_pb2.DeleteRangeRequest(key=b"\0", range_end=b"\0"))
        both.assert_same_hashkv()
        both.put(b"z", b"1")
        both.assert_same_hashkv()
    finally:
        both.close()


def _etcdctl(target, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """etcdctl ``args`` against ``target`` over mTLS; fails the test on a non-zero exit."""
    argv = [ETCDCTL, "--endpoints", target.endpoint, "--cacert", target.ca_file, "--cert", target.cert_file,
            "--key", target.key_file, "--dial-timeout", "5s", "--command-timeout", "15s", *args]
    res = subprocess.run(argv, input=stdin, capture_output=True, text=True, env=dict(os.environ, ETCDCTL_API="3"),
                         timeout=60)
    assert res.returncode == 0, f"etcdctl {' '.join(args)} on {target.endpoint}: {res.stdout}{res.stderr}"
    return res


def _endpoint_hashkv(target, *args: str) -> dict:
    [entry] = json.loads(_etcdctl(target, "endpoint", "hashkv", "-w", "json", *args).stdout)
    return entry


def test_etcdctl_endpoint_hashkv_matches_etcd_and_across_shims(etcd, shim_factory):
    """What an operator runs to check consistency: ``etcdctl endpoint hashkv`` on etcd and
    on two shims sharing one database, after the same etcdctl commands."""
    shim = shim_factory()
    other = shim_factory(datastore=shim.datastore)
    for target in (etcd, shim):
        _etcdctl(target, "put", "/registry/a", "1")
        _etcdctl(target, "put", "/registry/b", "2")
        _etcdctl(target, "put", "/registry/a", "3")
        _etcdctl(target, "del", "/registry/b")
        # one revision with two puts (subs 0 and 1)
        res = _etcdctl(target, "txn", stdin='value("/registry/a") = "3"\n\nput /registry/c 1\nput /registry/d 2\n\n\n')
        assert res.stdout.startswith("SUCCESS"), res.stdout
        _etcdctl(target, "compaction", "--physical", "3")
        _etcdctl(target, "put", "/registry/e", "5")

    etcd_hash = _endpoint_hashkv(etcd)
    shim_hash = _endpoint_hashkv(shim)
    other_hash = _endpoint_hashkv(other)
    for got in (shim_hash, other_hash):
        assert got["HashKV"]["hash"] == etcd_hash["HashKV"]["hash"]
        assert got["HashKV"]["compact_revision"] == etcd_hash["HashKV"]["compact_revision"] == 3
        assert got["HashKV"]["header"]["revision"] == etcd_hash["HashKV"]["header"]["revision"]
    # at an older revision too (etcdctl --rev), and in etcdctl's table output
    old_shim, old_etcd = _endpoint_hashkv(shim, "--rev", "5"), _endpoint_hashkv(etcd, "--rev", "5")
    assert old_shim["HashKV"]["hash"] == old_etcd["HashKV"]["hash"] != etcd_hash["HashKV"]["hash"]
    table = _etcdctl(other, "endpoint", "hashkv", "-w", "table").stdout
    assert str(etcd_hash["HashKV"]["hash"]) in table and other.endpoint in table


def _hash(channel) -> tuple[int, int]:
    r = rpc_pb2_grpc.MaintenanceStub(channel).Hash(rpc_pb2.HashRequest(), timeout=15)
    return r.hash, r.header.revision


def _hashkv(channel, revision: int = 0) -> rpc_pb2.HashKVResponse:
    return rpc_pb2_grpc.MaintenanceStub(channel).HashKV(rpc_pb2.HashKVRequest(revision=revision), timeout=15)


def test_hash_agrees_across_shims_and_changes_with_the_store(shim_factory):
    """Hash (the shim's own definition) and HashKV seen through two shims on one database."""
    first = shim_factory()
    second = shim_factory(datastore=first.datastore)
    a, b = first.channel(), second.channel()
    try:
        kv, lease = rpc_pb2_grpc.KVStub(a), rpc_pb2_grpc.LeaseStub(b)
        kv.Put(rpc_pb2.PutRequest(key=b"k", value=b"v"), timeout=15)
        h0 = _hash(a)
        assert _hash(b) == h0
        kv1 = _hashkv(a)
        assert _hashkv(b) == kv1 and kv1.hash_revision == kv1.header.revision == h0[1]

        rpc_pb2_grpc.KVStub(b).Put(rpc_pb2.PutRequest(key=b"k", value=b"w"), timeout=15)
        h1 = _hash(a)
        assert h1[0] != h0[0] and h1[1] == h0[1] + 1 and _hash(b) == h1
        assert _hashkv(a).hash != kv1.hash
        assert _hashkv(b, kv1.header.revision).hash == kv1.hash  # the older revision still hashes the same

        # a lease is part of the store but not of the key history
        history = _hashkv(a).hash
        lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(ID=77, TTL=600), timeout=15)
        h2 = _hash(b)
        assert h2[0] != h1[0] and h2[1] == h1[1] and _hash(a) == h2
        assert _hashkv(b).hash == history

        # compaction drops stored history: Hash changes, HashKV reports the compaction
        rpc_pb2_grpc.KVStub(a).Compact(rpc_pb2.CompactionRequest(revision=h2[1]), timeout=15)
        assert _hash(b)[0] != h2[0]
        assert _hashkv(b).compact_revision == h2[1]
        with pytest.raises(grpc.RpcError) as err:
            _hashkv(a, h2[1])
        assert err.value.code() == grpc.StatusCode.OUT_OF_RANGE
        assert err.value.details() == "etcdserver: mvcc: required revision has been compacted"
        with pytest.raises(grpc.RpcError) as err:
            _hashkv(b, h2[1] + 1)
        assert err.value.details() == "etcdserver: mvcc: required revision is a future revision"
    finally:
        a.close()
        b.close()
