"""Watch semantics of the shim that etcd 3.4 cannot serve as an oracle for (it is 3.5
behaviour kube-apiserver relies on) or that need a view inside one stream: many watchers
per stream, cancel, catch-up from history, progress requests and progress notifications,
compacted start revisions. All through gRPC with mTLS against a real shim process."""

from __future__ import annotations

import queue
import uuid

import pytest

from k8s_sql.shim.etcdpb import rpc_pb2, rpc_pb2_grpc
from streams import WatchStream


@pytest.fixture
def kv(shim):
    ch = shim.channel()
    yield rpc_pb2_grpc.KVStub(ch)
    ch.close()


@pytest.fixture
def stream(shim):
    ch = shim.channel()
    s = WatchStream(ch)
    yield s
    s.close()
    ch.close()


def p() -> bytes:
    return f"/w-{uuid.uuid4().hex[:8]}/".encode()


def test_many_watchers_on_one_stream_each_get_their_range(kv, stream):
    a, b = p(), p()
    wa = stream.create(a, range_end=a[:-1] + b"0").watch_id  # prefix a
    wb = stream.create(b + b"k").watch_id                      # one key
    assert wa != wb
    kv.Put(rpc_pb2.PutRequest(key=a + b"1", value=b"x"))
    kv.Put(rpc_pb2.PutRequest(key=b + b"other", value=b"y"))   # nobody watches this
    kv.Put(rpc_pb2.PutRequest(key=b + b"k", value=b"z"))
    got = stream.events(2)
    assert [(w, e.kv.key, e.kv.value) for w, e in got] == [(wa, a + b"1", b"x"), (wb, b + b"k", b"z")]


def test_cancel_stops_events_and_is_acknowledged(kv, stream):
    k = p() + b"k"
    w = stream.create(k).watch_id
    stream.send(cancel_request=rpc_pb2.WatchCancelRequest(watch_id=w))
    r = stream.next()
    assert r.canceled and r.watch_id == w
    kv.Put(rpc_pb2.PutRequest(key=k, value=b"after"))
    with pytest.raises(queue.Empty):
        stream.next(timeout=1.0)


def test_watch_from_the_past_replays_history_in_order_then_goes_live(kv, stream):
    k = p() + b"k"
    revs = [kv.Put(rpc_pb2.PutRequest(key=k, value=b"%d" % i)).header.revision for i in range(5)]
    kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=k))
    stream.create(k, start_revision=revs[1], prev_kv=True)
    live = kv.Put(rpc_pb2.PutRequest(key=k, value=b"live")).header.revision
    got = [e for _, e in stream.events(6)]
    assert [e.kv.mod_revision for e in got] == revs[1:] + [revs[-1] + 1, live]
    assert [e.type for e in got] == [0, 0, 0, 0, 1, 0]
    assert [e.kv.version for e in got] == [2, 3, 4, 5, 0, 1]
    assert [e.prev_kv.value for e in got[:5]] == [b"0", b"1", b"2", b"3", b"4"]
    assert not got[5].HasField("prev_kv")  # created again after the delete


def test_progress_request_reports_a_revision_covering_every_sent_event(kv, stream):
    """etcd >= 3.5.13: a progress response (watch_id -1) promises that every event up to its
    header revision has been sent; kube-apiserver's consistent reads from cache rely on it."""
    k = p() + b"k"
    stream.create(k)
    last = 0
    for i in range(20):
        last = kv.Put(rpc_pb2.PutRequest(key=k, value=b"%d" % i)).header.revision
    stream.send(progress_request=rpc_pb2.WatchProgressRequest())
    seen = []
    while True:
        r = stream.next()
        if r.watch_id == -1 and not r.events:
            break
        seen += [e.kv.mod_revision for e in r.events]
    assert r.header.revision >= last
    assert seen == list(range(last - 19, last + 1))


def test_progress_notify_sends_empty_responses_while_idle(shim_factory):
    s = shim_factory(extra_args=["--watch-progress-notify-interval", "200ms"])
    ch = s.channel()
    stream = WatchStream(ch)
    try:
        created = stream.create(b"/idle/", range_end=b"/idle0", progress_notify=True)
        r = stream.next(timeout=5)
        assert r.watch_id == created.watch_id and not r.events and not r.canceled
        assert r.header.revision == created.header.revision
    finally:
        stream.close()
        ch.close()


def test_compacted_start_revision_cancels_with_compact_revision(kv, stream):
    k = p() + b"k"
    first = kv.Put(rpc_pb2.PutRequest(key=k, value=b"1")).header.revision
    now = kv.Put(rpc_pb2.PutRequest(key=k, value=b"2")).header.revision
    kv.Compact(rpc_pb2.CompactionRequest(revision=now, physical=True))
    stream.create(k, start_revision=first)
    r = stream.next()
    assert r.canceled and r.compact_revision == now


def test_watch_id_chosen_by_client_and_duplicate_refused(stream):
    r = stream.create(b"/dup", watch_id=7)
    assert r.watch_id == 7
    stream.send(create_request=rpc_pb2.WatchCreateRequest(key=b"/dup2", watch_id=7))
    r = stream.next()
    assert r.created and r.canceled and r.watch_id == -1 and "duplicate watch ID" in r.cancel_reason


def test_filters_drop_puts_or_deletes(kv, stream):
    k = p() + b"k"
    stream.create(k, filters=[rpc_pb2.WatchCreateRequest.NOPUT])
    kv.Put(rpc_pb2.PutRequest(key=k, value=b"1"))
    kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=k))
    (_, e), = stream.events(1)
    assert e.type == 1 and e.kv.key == k
