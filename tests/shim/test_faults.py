"""Fault tests of the shim (etcd v3 API on PostgreSQL) under concurrent load.

1. PostgreSQL faults under load, on a TempPostgres of the module's own so the session's
   ``pg`` stays up: ``pg_ctl restart -m fast`` (a fraction of a second); stopped for 2 s
   then started; every backend of the shim's database terminated. Four writer threads put
   fresh keys through one shim, a reader reads back the latest acknowledged puts, and a
   watcher (started before the load) watches the prefix.
   Requests caught by the outage wait for PostgreSQL or fail with UNAVAILABLE, nothing else
   (no other code, no hang past the call deadline, no wrong answer). Afterwards every
   acknowledged put is in a final Range with its value and ``mod_revision`` equal to the
   put's header revision, the watcher's event revisions strictly increase and include every
   acknowledged put (same key and value), the shim process is still alive (it reconnected
   by itself) and puts are acknowledged again after the outage.
2. The shim killed with SIGKILL and started again under load: writers and the reader retry
   with a new channel on connection errors (UNAVAILABLE only); a watcher that re-watches from
   its last seen revision + 1 after its stream breaks (as kube-apiserver's reflector does)
   gets every acknowledged revision exactly once and in order; every acknowledged put is
   readable afterwards.
3. Two shims on one database, written to concurrently: a put acknowledged by one shim is
   read back at once through the other (header revision not behind any acknowledged put); a
   watcher on each shim sees the identical sequence of (revision, key, value, type), strictly
   increasing and containing every acknowledged put from either shim; acknowledged revisions
   are unique across the shims; both report the same header revision and contents for a
   final Range.
4. One of two shims on a database killed with SIGKILL and started again: the other serves
   on without a single failure, and the restarted shim's re-watching watcher catches up with
   every put, including those acknowledged by the other shim while it was down.

Each key is put once, so its ``mod_revision`` is the revision its put was acknowledged with
(a put that failed may still have been applied; its key is not reused). Reads are the
default linearizable ones. Real PostgreSQL, real shim processes, gRPC with mTLS; nothing is
stood in. With -s each test prints a line of counts (acked, failed by code, slowest put,
watch breaks).
"""

from __future__ import annotations

import queue
import threading
import time

import grpc
import pytest

from k8s_sql.shim.etcdpb import rpc_pb2, rpc_pb2_grpc
from pgcluster import TempPostgres

PREFIX = b"/f/"
END = b"/f0"


def _code(e: Exception) -> str:
    return e.code().name if isinstance(e, grpc.RpcError) and hasattr(e, "code") else type(e).__name__


class Writer(threading.Thread):
    """Puts ``/f/<tag>/<i>`` (value ``<tag>-<i>``), each key once, until stopped. Keeps every
    acknowledged put as (key, value, revision, monotonic time of the ack) and the code of
    every failed one; after a failure it opens a new channel and goes on with the next key
    (a failed put may still have been applied, so its key is never reused)."""

    def __init__(self, channel_factory, tag: str, call_timeout: float = 10.0):
        super().__init__(daemon=True, name=f"writer-{tag}")
        self.channel_factory, self.tag, self.call_timeout = channel_factory, tag, call_timeout
        self.acked: list[tuple[bytes, bytes, int, float]] = []
        self.errors: list[tuple[str, str]] = []  # (code, details)
        self.slowest = 0.0  # seconds, of any put
        self.stop_ = threading.Event()

    def run(self):
        channel = self.channel_factory()
        kv = rpc_pb2_grpc.KVStub(channel)
        i = 0
        try:
            while not self.stop_.is_set():
                key, value = b"%s%s/%06d" % (PREFIX, self.tag.encode(), i), b"%s-%d" % (self.tag.encode(), i)
                i += 1
                sent = time.monotonic()
                try:
                    rev = kv.Put(rpc_pb2.PutRequest(key=key, value=value), timeout=self.call_timeout).header.revision
                except Exception as e:  # noqa: BLE001 - every failure is recorded and judged by the test
                    self.slowest = max(self.slowest, time.monotonic() - sent)
                    details = e.details() if isinstance(e, grpc.RpcError) and hasattr(e, "details") else repr(e)
                    self.errors.append((_code(e), str(details)))
                    channel.close()
                    time.sleep(0.05)
                    channel = self.channel_factory()
                    kv = rpc_pb2_grpc.KVStub(channel)
                    continue
                self.acked.append((key, value, rev, time.monotonic()))
                self.slowest = max(self.slowest, self.acked[-1][3] - sent)
        finally:
            channel.close()


class Reader(threading.Thread):
    """Reads back, one after another, the latest acknowledged put of each writer in turn
    (a linearizable Range of its key): the value and mod_revision must be the put's, and the
    header revision at least every revision acknowledged before the read was sent. Keeps the
    codes of failed reads and every wrong answer."""

    def __init__(self, channel_factory, writers, call_timeout: float = 10.0):
        super().__init__(daemon=True, name="reader")
        self.channel_factory, self.writers, self.call_timeout = channel_factory, writers, call_timeout
        self.reads = 0
        self.errors: list[tuple[str, str]] = []
        self.wrong: list[str] = []
        self.stop_ = threading.Event()

    def run(self):
        channel = self.channel_factory()
        kv = rpc_pb2_grpc.KVStub(channel)
        n = 0
        try:
            while not self.stop_.is_set():
                w = self.writers[n % len(self.writers)]
                n += 1
                floor = max((wr.acked[-1][2] for wr in self.writers if wr.acked), default=0)
                if not w.acked:
                    time.sleep(0.01)
                    continue
                key, value, rev, _ = w.acked[-1]
                try:
                    r = kv.Range(rpc_pb2.RangeRequest(key=key), timeout=self.call_timeout)
                except Exception as e:  # noqa: BLE001
                    details = e.details() if isinstance(e, grpc.RpcError) and hasattr(e, "details") else repr(e)
                    self.errors.append((_code(e), str(details)))
                    channel.close()
                    time.sleep(0.05)
                    channel = self.channel_factory()
                    kv = rpc_pb2_grpc.KVStub(channel)
                    continue
                self.reads += 1
                got = [(k.key, k.value, k.mod_revision) for k in r.kvs]
                if got != [(key, value, rev)] or r.header.revision < floor:
                    self.wrong.append(f"Range({key!r}) after put at {rev}, acked up to {floor}: "
                                      f"header {r.header.revision}, kvs {got}")
        finally:
            channel.close()


class Watcher(threading.Thread):
    """Watches PREFIX from ``start``. Each event is kept as (mod_revision, key, value, type).
    When the stream breaks it re-watches from the last seen revision + 1 on a new channel
    (``resume``) or stops. ``wait_for(rev)`` blocks until an event at >= rev was seen."""

    def __init__(self, channel_factory, start: int, resume: bool = True):
        super().__init__(daemon=True, name="watcher")
        self.channel_factory, self.next_rev, self.resume = channel_factory, start, resume
        self.events: list[tuple[int, bytes, bytes, int]] = []
        self.breaks: list[str] = []       # codes of broken streams
        self.cancels: list[str] = []      # server-side cancels (compaction, ...)
        self.created = threading.Event()
        self.cond = threading.Condition()
        self.stop_ = threading.Event()
        self._call = None

    def run(self):
        while not self.stop_.is_set():
            channel = self.channel_factory()
            requests: queue.Queue = queue.Queue()
            requests.put(rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(
                key=PREFIX, range_end=END, start_revision=self.next_rev)))
            self._call = call = rpc_pb2_grpc.WatchStub(channel).Watch(iter(requests.get, None))
            try:
                for resp in call:
                    if resp.created:
                        self.created.set()
                    if resp.canceled:
                        self.cancels.append(f"compact_revision={resp.compact_revision} {resp.cancel_reason}")
                        break
                    with self.cond:
                        for e in resp.events:
                            self.events.append((e.kv.mod_revision, e.kv.key, e.kv.value, e.type))
                            self.next_rev = e.kv.mod_revision + 1
                        self.cond.notify_all()
                else:
                    self.breaks.append("END")
            except grpc.RpcError as e:
                if not self.stop_.is_set():
                    self.breaks.append(_code(e))
            finally:
                requests.put(None)
                call.cancel()
                channel.close()
            if self.cancels or not self.resume:
                return
            self.stop_.wait(0.1)

    def wait_for(self, rev: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.cond:
            while self.next_rev <= rev:
                left = deadline - time.monotonic()
                if left <= 0 or self.cancels or not self.is_alive():
                    return False
                self.cond.wait(min(left, 0.2))
        return True

    def close(self):
        self.stop_.set()
        if self._call is not None:
            self._call.cancel()
        self.join(5)


def current_revision(channel_factory) -> int:
    ch = channel_factory()
    try:
        return rpc_pb2_grpc.KVStub(ch).Range(rpc_pb2.RangeRequest(key=b"/nothing"), timeout=10).header.revision
    finally:
        ch.close()


def final_range(channel_factory) -> rpc_pb2.RangeResponse:
    ch = channel_factory()
    try:
        return rpc_pb2_grpc.KVStub(ch).Range(rpc_pb2.RangeRequest(key=PREFIX, range_end=END), timeout=10)
    finally:
        ch.close()


def stop_threads(threads) -> None:
    for t in threads:
        t.stop_.set()
    for t in threads:
        t.join(30)
        assert not t.is_alive(), f"{t.name} hung"


def codes(errors) -> dict[str, int]:
    out: dict[str, int] = {}
    for code, _ in errors:
        out[code] = out.get(code, 0) + 1
    return out


def summary(name, writers, readers, watchers) -> None:
    """One line of what happened (shown by pytest with a failure, or with -s)."""
    print(f"{name}: puts acked {sum(len(w.acked) for w in writers)}, "
          f"failed {codes(e for w in writers for e in w.errors)}, "
          f"slowest {max((w.slowest for w in writers), default=0):.2f} s; "
          f"reads {sum(r.reads for r in readers)}, failed {codes(e for r in readers for e in r.errors)}, "
          f"wrong {sum(len(r.wrong) for r in readers)}; "
          + "; ".join(f"watcher {len(wt.events)} events, breaks {codes((c, '') for c in wt.breaks)}, "
                      f"cancels {wt.cancels}" for wt in watchers))


def check_acked(writers, watcher, rng) -> dict[int, tuple[bytes, bytes]]:
    """The common checks: acked revisions unique; every acked put in ``rng`` (value and
    mod_revision) and in the watcher's events (same key and value), whose revisions strictly
    increase. Returns {revision: (key, value)} of the acknowledged puts."""
    acked = [(key, value, rev) for w in writers for key, value, rev, _ in w.acked]
    by_rev = {rev: (key, value) for key, value, rev in acked}
    assert len(by_rev) == len(acked), "two acknowledged puts got the same revision"
    for w in writers:
        revs = [rev for _, _, rev, _ in w.acked]
        assert revs == sorted(revs), f"{w.name}: revisions of its sequential puts went backwards"
    stored = {kv.key: (kv.value, kv.mod_revision) for kv in rng.kvs}
    missing = [(k, v, r, stored.get(k)) for k, v, r in acked if stored.get(k) != (v, r)]
    assert not missing, f"{len(missing)} acknowledged puts not stored as acknowledged, e.g. {missing[:5]}"
    revs = [ev[0] for ev in watcher.events]
    bad = [(a, b) for a, b in zip(revs, revs[1:]) if b <= a]
    assert not bad, f"watch events not strictly increasing (duplicated/reordered): {bad[:10]}"
    seen = {ev[0]: (ev[1], ev[2]) for ev in watcher.events if ev[3] == 0}  # type 0: PUT
    unseen = [(r, kv) for r, kv in sorted(by_rev.items()) if seen.get(r) != kv]
    assert not unseen, f"{len(unseen)} acknowledged puts not watched as such, e.g. {unseen[:5]}"
    return by_rev


def acked_since(writers, t: float) -> int:
    return sum(1 for w in writers for *_, at in w.acked if at > t)


def run_until_acked_again(writers, since: float, at_least: float, at_most: float = 20.0) -> None:
    """Keep the load on until ``at_least`` (monotonic) and until a put was acknowledged after
    ``since`` (or ``since + at_most``)."""
    while time.monotonic() < at_least or (not acked_since(writers, since) and time.monotonic() < since + at_most):
        time.sleep(0.05)


@pytest.fixture(scope="module")
def own_pg():
    """A PostgreSQL of this module's own: the tests restart and stop it."""
    cluster = TempPostgres().init().start()
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.mark.parametrize("outage", ["restart", "stopped-2s", "backends-terminated"])
def test_postgres_restarted_under_load(own_pg, shim_factory, outage):
    """``restart``: pg_ctl restart -m fast (a fraction of a second). ``stopped-2s``: stopped
    for 2 s, so requests arrive while nothing listens: they wait for a connection from the
    shim's pool or fail with UNAVAILABLE, and the shim comes back by itself.
    ``backends-terminated``: pg_terminate_backend on every connection of the shim's database
    (pool, writer, LISTEN), as a dropped network would, while PostgreSQL stays up."""
    db = f"faults_{outage.replace('-', '_')}"
    shim = shim_factory(datastore=own_pg.create_database(db))
    watcher = Watcher(shim.channel, current_revision(shim.channel) + 1)
    writers = [Writer(shim.channel, f"w{i}", call_timeout=10.0) for i in range(4)]
    readers = [Reader(shim.channel, writers, call_timeout=10.0)]
    try:
        watcher.start()
        assert watcher.created.wait(10), "watch not created"
        t0 = time.monotonic()
        for t in writers + readers:
            t.start()
        time.sleep(2.0)
        down = time.monotonic()
        before = acked_since(writers, 0)
        if outage == "restart":
            own_pg.restart()
        elif outage == "backends-terminated":  # every connection of the shim, LISTEN included
            killed = own_pg.psql("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                 f"WHERE datname = '{db}' AND pid <> pg_backend_pid()")
            assert int(killed) >= 2, killed
        else:
            own_pg.stop("fast")
            time.sleep(2.0)
            own_pg.start()
        up = time.monotonic()
        run_until_acked_again(writers, up, at_least=max(t0 + 6.0, up + 2.0))
        stop_threads(writers + readers)
        print(f"PostgreSQL {outage}: down {up - down:.2f} s")

        errors = [e for t in writers + readers for e in t.errors]
        assert all(code == "UNAVAILABLE" for code, _ in errors), f"non-UNAVAILABLE failures: {errors[:10]}"
        assert not readers[0].wrong, readers[0].wrong[:5]
        after = acked_since(writers, up)
        assert before > 0 and after > 0, f"puts acknowledged before/after the outage: {before}/{after}"
        if outage != "restart":
            assert errors or max(w.slowest for w in writers) > 1.0, "a 2 s outage went unnoticed?"
        assert shim.proc.poll() is None, "the shim exited:\n" + "\n".join(shim.log[-30:])

        last = max(rev for w in writers for _, _, rev, _ in w.acked)
        assert watcher.wait_for(last, 20), (
            f"watcher stuck at {watcher.next_rev - 1} < {last}; breaks {watcher.breaks}, cancels {watcher.cancels}")
        check_acked(writers, watcher, final_range(shim.channel))
        assert not watcher.cancels, watcher.cancels
    finally:
        for t in writers + readers:
            t.stop_.set()
        watcher.close()
        summary(f"PostgreSQL {outage}", writers, readers, [watcher])


def test_shim_killed_and_restarted_under_load(shim_factory):
    shim = shim_factory()
    watcher = Watcher(shim.channel, current_revision(shim.channel) + 1)
    writers = [Writer(shim.channel, f"k{i}", call_timeout=5.0) for i in range(4)]
    readers = [Reader(shim.channel, writers, call_timeout=5.0)]
    try:
        watcher.start()
        assert watcher.created.wait(10), "watch not created"
        for t in writers + readers:
            t.start()
        time.sleep(1.5)
        before = acked_since(writers, 0)
        shim.kill()
        killed_at = max((rev for w in writers for _, _, rev, _ in w.acked), default=0)
        time.sleep(0.3)
        shim.start()
        up = time.monotonic()
        run_until_acked_again(writers, up, at_least=up + 2.0)
        stop_threads(writers + readers)

        after = acked_since(writers, up)
        assert before > 0 and after > 0, f"puts acknowledged before/after the restart: {before}/{after}"
        assert any(w.errors for w in writers), "no writer noticed the kill"
        errors = [e for t in writers + readers for e in t.errors]
        assert all(code == "UNAVAILABLE" for code, _ in errors), f"non-UNAVAILABLE failures: {errors[:10]}"
        assert not readers[0].wrong, readers[0].wrong[:5]

        last = max(rev for w in writers for _, _, rev, _ in w.acked)
        assert last > killed_at
        assert watcher.wait_for(last, 20), (
            f"watcher stuck at {watcher.next_rev - 1} < {last}; breaks {watcher.breaks}, cancels {watcher.cancels}")
        assert watcher.breaks, "the watch stream survived a SIGKILL of its server?"
        check_acked(writers, watcher, final_range(shim.channel))
        assert not watcher.cancels, watcher.cancels
    finally:
        for t in writers + readers:
            t.stop_.set()
        watcher.close()
        summary("shim SIGKILL", writers, readers, [watcher])


def test_two_shims_on_one_database(shim_factory):
    """Also: a put acknowledged by one shim is read back at once through the other (each
    reader takes the latest acknowledged put of every writer, both shims', in turn)."""
    a = shim_factory()
    b = shim_factory(datastore=a.datastore)
    start = current_revision(a.channel) + 1
    watchers = [Watcher(a.channel, start, resume=False), Watcher(b.channel, start, resume=False)]
    writers = [Writer(s.channel, f"{name}{i}") for s, name in ((a, "a"), (b, "b")) for i in range(2)]
    readers = [Reader(a.channel, writers), Reader(b.channel, writers)]
    try:
        for wt in watchers:
            wt.start()
            assert wt.created.wait(10), "watch not created"
        for t in writers + readers:
            t.start()
        time.sleep(3.0)
        stop_threads(writers + readers)
        assert all(w.acked for w in writers), [(w.name, len(w.acked)) for w in writers]
        errors = [e for t in writers + readers for e in t.errors]
        assert not errors, errors[:10]
        wrong = [x for r in readers for x in r.wrong]
        assert not wrong, f"{len(wrong)} stale or wrong reads, e.g. {wrong[:5]}"

        last = max(rev for w in writers for _, _, rev, _ in w.acked)
        ranges = [final_range(a.channel), final_range(b.channel)]
        assert ranges[0].header.revision == ranges[1].header.revision, [r.header.revision for r in ranges]
        assert ranges[0].header.revision >= last
        assert [(k.key, k.value, k.mod_revision) for k in ranges[0].kvs] == \
            [(k.key, k.value, k.mod_revision) for k in ranges[1].kvs]
        for name, wt in zip("ab", watchers):
            assert wt.wait_for(last, 20), (
                f"watcher on {name} stuck at {wt.next_rev - 1} < {last}; breaks {wt.breaks}, cancels {wt.cancels}")
        for wt in watchers:
            check_acked(writers, wt, ranges[0])
        cut = [[ev for ev in wt.events if ev[0] <= last] for wt in watchers]
        assert cut[0] == cut[1], "the two shims' watchers saw different histories"
        assert not any(wt.breaks or wt.cancels for wt in watchers), [(wt.breaks, wt.cancels) for wt in watchers]
    finally:
        for t in writers + readers:
            t.stop_.set()
        for wt in watchers:
            wt.close()
        summary("two shims", writers, readers, watchers)


def test_one_of_two_shims_killed(shim_factory):
    """Shim a is killed with SIGKILL and started again while writers go on through both: the
    writers on b never fail, and a's re-watching watcher catches up with everything, including
    what b acknowledged while a was down."""
    a = shim_factory()
    b = shim_factory(datastore=a.datastore)
    watcher = Watcher(a.channel, current_revision(a.channel) + 1)
    on_a = [Writer(a.channel, "a0", call_timeout=5.0)]
    on_b = [Writer(b.channel, f"b{i}", call_timeout=5.0) for i in range(2)]
    writers = on_a + on_b
    readers = [Reader(b.channel, writers, call_timeout=5.0)]
    try:
        watcher.start()
        assert watcher.created.wait(10), "watch not created"
        for t in writers + readers:
            t.start()
        time.sleep(1.0)
        a.kill()
        down = time.monotonic()
        time.sleep(0.5)
        a.start()
        up = time.monotonic()
        run_until_acked_again(on_a, up, at_least=up + 1.5)
        stop_threads(writers + readers)

        assert not [e for t in on_b + readers for e in t.errors], "shim b failed while a was down"
        assert not readers[0].wrong, readers[0].wrong[:5]
        assert acked_since(on_b, down) - acked_since(on_b, up) > 0, "nothing written through b while a was down"
        assert acked_since(on_a, up) > 0
        assert all(code == "UNAVAILABLE" for w in on_a for code, _ in w.errors), on_a[0].errors[:10]
        last = max(rev for w in writers for _, _, rev, _ in w.acked)
        assert watcher.wait_for(last, 20), (
            f"watcher stuck at {watcher.next_rev - 1} < {last}; breaks {watcher.breaks}, cancels {watcher.cancels}")
        assert watcher.breaks
        check_acked(writers, watcher, final_range(a.channel))
        assert not watcher.cancels, watcher.cancels
    finally:
        for t in writers + readers:
            t.stop_.set()
        watcher.close()
        summary("one of two shims SIGKILL", writers, readers, [watcher])
