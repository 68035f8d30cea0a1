"""Fault tests of the shim (it has no etcd counterpart here): PostgreSQL restarted under
load, the shim killed with SIGKILL and restarted under load, and two shims on one database.

The guarantees checked are the client's: during an outage requests fail with UNAVAILABLE
(never a wrong answer), every acknowledged write is there afterwards, and a watcher that
re-watches from its last seen revision + 1 after a broken stream gets every event exactly
once and in order. PostgreSQL restarts use a TempPostgres of their own so the session's
``pg`` stays up. Nothing is stood in.
"""

from __future__ import annotations

import queue
import threading
import time

import grpc
import pytest

from k8s_sql.shim.etcdpb import rpc_pb2, rpc_pb2_grpc
from pgcluster import TempPostgres

PREFIX = b"/registry/faults/"
END = PREFIX[:-1] + b"0"


class Writer(threading.Thread):
    """Puts PREFIX+<n> one after another until stopped; keeps (key, revision) of each
    acknowledged put and the gRPC codes of failed ones (then retries the same key)."""

    def __init__(self, channel_factory, tag: bytes):
        super().__init__(daemon=True)
        self.channel_factory, self.tag = channel_factory, tag
        self.acked: list[tuple[bytes, int]] = []
        self.errors: list[str] = []
        self.stop_ = threading.Event()

    def run(self):
        channel = self.channel_factory()
        kv = rpc_pb2_grpc.KVStub(channel)
        n = 0
        while not self.stop_.is_set():
            key = PREFIX + self.tag + b"%05d" % n
            try:
                rev = kv.Put(rpc_pb2.PutRequest(key=key, value=b"v"), timeout=10).header.revision
            except grpc.RpcError as e:
                self.errors.append(e.code().name)
                time.sleep(0.1)
                continue
            self.acked.append((key, rev))
            n += 1
        channel.close()


class Watcher(threading.Thread):
    """Watches PREFIX from ``start``; when the stream breaks, re-watches from the last seen
    revision + 1 (as kube-apiserver's reflector does). Stops once ``until`` is seen."""

    def __init__(self, channel_factory, start: int):
        super().__init__(daemon=True)
        self.channel_factory, self.next = channel_factory, start
        self.events: list[tuple[int, bytes]] = []  # (mod_revision, key)
        self.until = None
        self.breaks = 0

    def run(self):
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.until is not None and self.next > self.until:
                return
            channel = self.channel_factory()
            requests: queue.Queue = queue.Queue()
            requests.put(rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(
                key=PREFIX, range_end=END, start_revision=self.next)))
            stream = rpc_pb2_grpc.WatchStub(channel).Watch(iter(requests.get, None), timeout=5)
            try:
                for resp in stream:
                    for e in resp.events:
                        self.events.append((e.kv.mod_revision, e.kv.key))
                        self.next = e.kv.mod_revision + 1
                    if self.until is not None and self.next > self.until:
                        break
            except grpc.RpcError:
                self.breaks += 1
                time.sleep(0.2)
            finally:
                requests.put(None)
                stream.cancel()
                channel.close()


def check(writers, watcher, kv):
    """Every acknowledged write is readable and was watched exactly once, in order."""
    for w in writers:
        assert set(w.errors) <= {"UNAVAILABLE"}, w.errors
    acked = {key: rev for w in writers for key, rev in w.acked}
    stored = {k.key: k.mod_revision for k in kv.Range(
        rpc_pb2.RangeRequest(key=PREFIX, range_end=END), timeout=10).kvs}
    assert {k: stored.get(k) for k in acked} == acked
    revs = [r for r, _ in watcher.events]
    assert revs == sorted(set(revs)), "events duplicated or out of order"
    seen = dict((k, r) for r, k in watcher.events)
    assert {k: seen.get(k) for k in acked} == acked


def run_load(channel_factory, fault, writers=2):
    kv = rpc_pb2_grpc.KVStub(channel_factory())
    base = kv.Put(rpc_pb2.PutRequest(key=b"/registry/start", value=b"")).header.revision
    ws = [Writer(channel_factory, b"w%d-" % i) for i in range(writers)]
    watcher = Watcher(channel_factory, base + 1)
    for t in [watcher, *ws]:
        t.start()
    time.sleep(1.0)
    fault()
    time.sleep(1.5)
    for w in ws:
        w.stop_.set()
        w.join(30)
    watcher.until = max(rev for w in ws for _, rev in w.acked)
    watcher.join(130)
    assert not watcher.is_alive(), "watcher did not catch up"
    check(ws, watcher, kv)
    return ws, watcher


def test_shim_killed_and_restarted_under_load(shim_factory):
    shim = shim_factory()

    def fault():
        shim.kill()
        time.sleep(0.5)
        shim.start()

    ws, watcher = run_load(shim.channel, fault)
    assert watcher.breaks >= 1  # the stream really broke and was resumed
    assert any(w.errors for w in ws)


@pytest.fixture
def own_pg():
    server = TempPostgres().init().start()
    yield server
    server.destroy()


def test_postgres_restarted_under_load(own_pg, shim_factory):
    shim = shim_factory(datastore=own_pg.create_database("faults"))

    def fault():
        own_pg.stop("fast")
        time.sleep(1.0)
        own_pg.start()

    ws, watcher = run_load(shim.channel, fault)
    assert any(w.errors for w in ws)  # the outage was seen, and only as UNAVAILABLE (check())


def test_two_shims_on_one_database(shim_factory):
    first = shim_factory()
    second = shim_factory(datastore=first.datastore)
    kv1, kv2 = rpc_pb2_grpc.KVStub(first.channel()), rpc_pb2_grpc.KVStub(second.channel())
    base = kv1.Put(rpc_pb2.PutRequest(key=b"/registry/start", value=b"")).header.revision
    ws = [Writer(first.channel, b"a-"), Writer(second.channel, b"b-")]
    watchers = [Watcher(first.channel, base + 1), Watcher(second.channel, base + 1)]
    for t in [*watchers, *ws]:
        t.start()
    time.sleep(2.0)
    for w in ws:
        w.stop_.set()
        w.join(30)
    last = max(rev for w in ws for _, rev in w.acked)
    for watcher in watchers:
        watcher.until = last
    for watcher in watchers:
        watcher.join(130)
        check(ws, watcher, kv1)
    assert watchers[0].events == watchers[1].events  # same history, same revisions on both
    assert kv1.Range(rpc_pb2.RangeRequest(key=b"x")).header.revision == \
        kv2.Range(rpc_pb2.RangeRequest(key=b"x")).header.revision
    assert all(w.acked for w in ws)
