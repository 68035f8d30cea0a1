"""Leases of the shim: stored in PostgreSQL, so they survive a shim restart and expire
with delete events for their keys (etcd API v3 Lease). Real shim processes, mTLS."""

from __future__ import annotations

import time
import uuid

from k8s_sql.shim.etcdpb import rpc_pb2, rpc_pb2_grpc
from test_watch import WatchStream


def stubs(shim):
    ch = shim.channel()
    return ch, rpc_pb2_grpc.KVStub(ch), rpc_pb2_grpc.LeaseStub(ch)


def test_lease_survives_a_shim_restart_and_keeps_its_keys(shim_factory):
    s = shim_factory()
    ch, kv, lease = stubs(s)
    g = lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=60))
    kv.Put(rpc_pb2.PutRequest(key=b"/l/a", value=b"1", lease=g.ID))
    ch.close()
    s.restart()
    ch, kv, lease = stubs(s)
    ttl = lease.LeaseTimeToLive(rpc_pb2.LeaseTimeToLiveRequest(ID=g.ID, keys=True))
    assert ttl.grantedTTL == 60 and 50 < ttl.TTL <= 60 and list(ttl.keys) == [b"/l/a"]
    assert [l.ID for l in lease.LeaseLeases(rpc_pb2.LeaseLeasesRequest()).leases] == [g.ID]
    ch.close()


def test_expiry_deletes_attached_keys_with_delete_events(shim):
    ch, kv, lease = stubs(shim)
    prefix = f"/exp-{uuid.uuid4().hex[:6]}/".encode()
    g = lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=2))
    assert g.TTL == 2
    stream = WatchStream(ch)
    stream.create(prefix, range_end=prefix[:-1] + b"0")
    for name in (b"a", b"b"):
        kv.Put(rpc_pb2.PutRequest(key=prefix + name, value=b"v", lease=g.ID))
    kv.Put(rpc_pb2.PutRequest(key=prefix + b"keep", value=b"v"))
    puts = stream.events(3)
    deadline = time.monotonic() + 15
    got = []
    while len(got) < 2 and time.monotonic() < deadline:
        got += stream.events(1, timeout=15)
    stream.close()
    assert [(e.type, e.kv.key) for _, e in got] == [(1, prefix + b"a"), (1, prefix + b"b")]
    assert got[0][1].kv.mod_revision == got[1][1].kv.mod_revision > puts[-1][1].kv.mod_revision  # one revision
    left = kv.Range(rpc_pb2.RangeRequest(key=prefix, range_end=prefix[:-1] + b"0"))
    assert [x.key for x in left.kvs] == [prefix + b"keep"]
    assert lease.LeaseTimeToLive(rpc_pb2.LeaseTimeToLiveRequest(ID=g.ID)).TTL == -1
    ch.close()


def test_keepalive_stream_renews_and_unknown_lease_gets_ttl_zero(shim):
    ch, kv, lease = stubs(shim)
    g = lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=3))
    reqs = [rpc_pb2.LeaseKeepAliveRequest(ID=g.ID), rpc_pb2.LeaseKeepAliveRequest(ID=12345)]
    answers = list(lease.LeaseKeepAlive(iter(reqs)))
    assert [(a.ID, a.TTL) for a in answers] == [(g.ID, 3), (12345, 0)]
    ch.close()
