"""The writer hands its committed events to the local watch hub (no read back from the log).

The events a live watcher gets that way must be exactly those a watcher replaying the same
revisions from the log gets (the path every watch from an older revision, and every other
shim process on the database, takes): same revisions, order, kinds, kvs and prev_kvs. The
writes cover what the batch function applies (puts of new and existing keys, ignore_value,
ignore_lease, leases, deletes of one key and of ranges, kube-apiserver's guarded txns, a
failed compare, refusals), one at a time and in concurrent batches, interleaved with a
second backend (another shim process) whose commits the hub must read from the log. Real
PostgreSQL, two real :class:`PostgresBackend` instances.
"""

from __future__ import annotations

import asyncio

from k8s_sql.shim.storage.base import (
    Compare, CompareResult, CompareTarget, DeleteOp, KeyNotFoundError, PutOp, RangeOp, TxnOp)
from k8s_sql.shim.storage.postgres import PostgresBackend

EVERY_KEY = b"\x00"


async def open_backend(dsn: str) -> PostgresBackend:
    backend = PostgresBackend(dsn, lease_check_interval=3600)
    await backend.open(timeout=30)
    return backend


async def collect(sub, upto: int, timeout: float = 20.0) -> list:
    """Events of ``sub`` until one at revision ``upto`` arrived."""
    events: list = []
    async with asyncio.timeout(timeout):
        async for batch, _ in sub:
            events.extend(batch)
            if events and events[-1].revision >= upto:
                return events
    return events


def guarded(key: bytes, mod: int, op) -> TxnOp:
    """kube-apiserver's guarded write: compare mod_revision, then op, else get the key."""
    return TxnOp([Compare(key, b"", CompareTarget.MOD, CompareResult.EQUAL, mod)], [op], [RangeOp(key)])


async def writes(a: PostgresBackend, b: PostgresBackend) -> None:
    lease, _, _ = await a.lease_grant(600)
    await a.put(PutOp(b"/r/one", b"1"))
    await a.put(PutOp(b"/r/one", b"2", prev_kv=True))
    await a.put(PutOp(b"/r/one", lease=lease, ignore_value=True))
    await a.put(PutOp(b"/r/one", b"3", ignore_lease=True))
    try:
        await a.put(PutOp(b"/r/missing", ignore_value=True))
    except KeyNotFoundError:
        pass
    await b.put(PutOp(b"/r/other", b"from b"))  # another process: the hub reads it from the log
    await a.put(PutOp(b"/r/two", b"x" * 2000))
    created = await a.txn(TxnOp([Compare(b"/r/obj", b"", CompareTarget.MOD, CompareResult.EQUAL, 0)],
                                [PutOp(b"/r/obj", b"v1")], []))
    updated = await a.txn(guarded(b"/r/obj", created.revision, PutOp(b"/r/obj", b"v2")))
    assert updated.succeeded
    stale = await a.txn(guarded(b"/r/obj", created.revision, PutOp(b"/r/obj", b"lost")))
    assert not stale.succeeded  # a failed compare: a get, no event
    await a.delete_range(DeleteOp(b"/r/nothing"))  # deletes nothing: no event
    await a.txn(guarded(b"/r/obj", updated.revision, DeleteOp(b"/r/obj")))
    # concurrent requests make multi-request batches; b's commits land between a's
    calls = []
    for i in range(40):
        calls.append(a.put(PutOp(b"/r/batch/%02d" % i, b"v%d" % i)))
        if i % 10 == 3:
            calls.append(b.put(PutOp(b"/r/batch/b%d" % i, b"b")))
        if i % 7 == 5:
            calls.append(a.delete_range(DeleteOp(b"/r/batch/%02d" % (i - 5))))
    await asyncio.gather(*calls)
    await asyncio.gather(*(a.put(PutOp(b"/r/batch/%02d" % i, b"again")) for i in range(0, 40, 3)))
    await a.delete_range(DeleteOp(b"/r/batch/", b"/r/batch0", prev_kv=True))
    await a.delete_range(DeleteOp(b"/r/", EVERY_KEY))


def test_handed_over_events_equal_the_logs(shim_db):
    async def scenario():
        a, b = await open_backend(shim_db), await open_backend(shim_db)
        handed = []
        committed = a.hub.committed

        def spy(start, revision, events):
            handed.append((start == a.hub.position, events is not None))
            committed(start, revision, events)
        a.hub.committed = spy
        a.writer.on_commit = spy
        try:
            start = await a.current_revision()
            live = a.subscribe(b"/", EVERY_KEY, start + 1, True, frozenset())
            plain = a.subscribe(b"/r/", b"/r0", start + 1, False, frozenset())
            await writes(a, b)
            end = await a.current_revision()
            got, got_plain = await collect(live, end), await collect(plain, end)
            replay = b.subscribe(b"/", EVERY_KEY, start + 1, True, frozenset())
            logged = await collect(replay, end)
            for s in (live, plain, replay):
                s.close()
            assert [(e.revision, e.sub) for e in logged] == sorted({(e.revision, e.sub) for e in logged})
            assert len(logged) > 60 and logged[-1].revision == end
            assert got == logged
            assert got_plain == [e if e.prev_kv is None else type(e)(e.revision, e.sub, e.kind, e.kv, None)
                                 for e in logged]
            # most of a's batches followed the hub's position directly and carried their events
            assert sum(1 for follows, built in handed if follows and built) >= len(handed) // 2, handed
            remaining = await a.range(RangeOp(b"/", EVERY_KEY))
            assert remaining.kvs == []
        finally:
            await a.close()
            await b.close()
    asyncio.run(scenario())
