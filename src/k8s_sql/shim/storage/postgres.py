"""The PostgreSQL backend: etcd's mvcc store and lessor on top of psycopg 3.

Reads run as single statements on pooled autocommit connections (one snapshot, one round
trip, retried once on a fresh connection after a dropped one); writes go through the
group-commit :class:`~.writer.Writer`; watches through the :class:`~.watchhub.WatchHub`.
The connection is one libpq conninfo/URI ("" = the PG* environment), so TLS to PostgreSQL is
configured the libpq way (sslmode=verify-full, sslrootcert, sslcert, sslkey).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from k8s_sql.shim.aio import cancel_tasks
from k8s_sql.shim.storage import queries
from k8s_sql.shim.storage.apply import Applier, is_read_only
from k8s_sql.shim.storage.base import (
    Backend, CompactedError, DeleteOp, DeleteResult, FutureRevisionError, LeaseExistsError,
    InternalError, LeaseTTLTooLargeError, PutOp, PutResult, RangeOp, RangeResult, StorageError, TxnOp, TxnResult,
    UnavailableError)
from k8s_sql.shim.storage.base import Event, EventKind, HashKVScan, SnapshotScan
from k8s_sql.shim.storage.batch import encode
from k8s_sql.shim.storage.ranges import read_range
from k8s_sql.shim.storage.readlease import ReadLease
from k8s_sql.shim.storage.schema import migrate
from k8s_sql.shim.storage.watchhub import Subscription, WatchHub
from k8s_sql.shim.storage.writer import Writer, datastore_failed, first_line

log = logging.getLogger(__name__)

#: Seconds a request waits for a PostgreSQL connection before failing with UNAVAILABLE
#: (during an outage requests queue this long, then clients get a clear error, not a hang).
POOL_WAIT = 5.0
#: etcd's largest lease TTL in seconds (lease.MaxLeaseTTL).
MAX_LEASE_TTL = 9_000_000_000
#: etcd's minimum lease TTL with default election settings: ceil(1.5 * 1000 ms * 1.5 / 1000).
MIN_LEASE_TTL = 2


async def _stream_events(conn, sql: str, params, consume: Callable[[list[Event]], None], batch: int = 1000) -> None:
    """Run ``sql`` (rows of :data:`.queries.HASH_COLUMNS`) and pass its rows to ``consume``
    as Events, ``batch`` at a time, without holding the whole result in memory."""
    events: list[Event] = []
    async for r in conn.cursor().stream(sql, params, size=batch):
        kind = EventKind.DELETE if r[2] else EventKind.PUT
        events.append(Event(r[0], r[1], kind, queries.kv_from_row(r, 3), None))
        if len(events) >= batch:
            consume(events)
            events = []
    if events:
        consume(events)


def _unavailable(e: BaseException) -> UnavailableError:
    return UnavailableError(f"datastore unavailable: {first_line(e)}")


class PostgresBackend(Backend):
    """etcd API v3 storage in PostgreSQL.

    Args:
        conninfo: libpq connection URI or key=value string ("" = PG* environment).
        pool_size: most pooled connections for reads (the writer and watch catch-ups share it).
        lease_check_interval: seconds between scans for expired leases.
    Use ``await backend.open()`` before and ``await backend.close()`` after.
    """

    def __init__(self, conninfo: str = "", pool_size: int = 8, lease_check_interval: float = 0.5):
        self.conninfo = conninfo
        self.pool = AsyncConnectionPool(conninfo, min_size=2, max_size=max(pool_size, 3), open=False,
                                        kwargs={"autocommit": True}, name="k8s-sql",
                                        timeout=POOL_WAIT)
        self.hub = WatchHub(self.pool, conninfo)
        self.writer = Writer(self.pool, on_commit=self.hub.committed, want_events=lambda: bool(self.hub.watchers))
        self.lease_check_interval = lease_check_interval
        self.read_lease = ReadLease(self.pool)
        self._tasks: list[asyncio.Task] = []

    async def open(self, timeout: float = 30.0) -> None:
        """Connect, migrate the schema, start the writer, watch hub and lease expiry.

        Raises UnavailableError when PostgreSQL cannot be reached within ``timeout`` seconds.
        """
        try:
            await self.pool.open(wait=True, timeout=timeout)
        except Exception as e:
            await self.pool.close()
            try:  # the pool only says it timed out: ask libpq why
                conn = await psycopg.AsyncConnection.connect(self.conninfo, connect_timeout=5)
                await conn.close()
            except Exception as why:
                e = why
            raise _unavailable(e) from e
        async with self.pool.connection() as conn:
            await migrate(conn)
        self.writer.start()
        await self.hub.start(await self.current_revision())
        self._tasks.append(asyncio.get_running_loop().create_task(self._expire_leases(), name="k8s-sql-leases"))
        await self.read_lease.confirm()
        self._tasks.append(asyncio.get_running_loop().create_task(self.read_lease.run(), name="k8s-sql-read-lease"))

    async def close(self) -> None:
        """Stop background tasks and close every connection."""
        await cancel_tasks(self._tasks)
        await self.hub.close()
        await self.writer.close()
        await self.pool.close()

    async def _read(self, fn: Callable[[Any], Awaitable[Any]], retry: bool = True) -> Any:
        """Run ``fn(conn)`` on a pooled connection; retry once when the connection was dead
        (reads are idempotent; not with ``retry`` False, for reads whose rows a caller consumes
        as they come). Raises UnavailableError when the datastore failed, and
        InternalError when the read failed for a reason of its own (a SQL error or a bug)."""
        for attempt in ((1, 2) if retry else (2,)):
            try:
                async with self.pool.connection() as conn:
                    return await fn(conn)
            except StorageError:
                raise
            except Exception as e:
                if not datastore_failed(e):
                    if isinstance(e, psycopg.Error):
                        log.warning("a read failed: %s", first_line(e))
                    else:
                        log.exception("a read failed (a bug in its handling)")
                    raise InternalError(f"request failed: {type(e).__name__}: {first_line(e)}") from e
                if attempt == 2 or not isinstance(e, (psycopg.OperationalError, psycopg.InterfaceError)):
                    raise _unavailable(e) from e
                # the pool discards the broken connection on return: try a fresh one

    async def _one(self, sql: str, params=None):
        async def q(conn):
            return await (await conn.execute(sql, params, prepare=True)).fetchone()
        return await self._read(q)

    # --- Backend read API (maintenance, health, metrics) ---

    async def current_revision(self) -> int:
        return (await self._one(queries.CURRENT_REVISION))[0]

    async def compact_revision(self) -> int:
        return (await self._one(queries.COMPACT_REVISION))[0]

    async def db_size_bytes(self) -> int:
        row = await self._one(queries.DB_SIZE)
        return int(row[0])

    async def ping(self) -> None:
        await self._one(queries.PING)

    # --- consistency hashes (Maintenance.HashKV, Maintenance.Hash) ---

    async def hash_kv_events(self, revision: int, consume: Callable[[list[Event]], None]) -> HashKVScan:
        async def q(conn):
            async with conn.transaction():
                await conn.execute(queries.SNAPSHOT)
                current, compact = await (await conn.execute(queries.REVISIONS)).fetchone()
                if 0 < revision <= compact:
                    raise CompactedError(compact)
                if revision > current:
                    raise FutureRevisionError()
                params = {"rev": revision or current, "compact": compact}
                live = queries.ANY_LIVE_NOW if params["rev"] == current else queries.ANY_LIVE_AT
                any_live = (await (await conn.execute(live, params)).fetchone())[0]
                await _stream_events(conn, queries.hash_kv_rows(any_live), params, consume)
                return HashKVScan(current, compact, params["rev"])
        return await self._read(q, retry=False)

    async def stored_state(self, consume: Callable[[list[Event]], None]) -> tuple[int, list[tuple[int, int]]]:
        async def q(conn):
            async with conn.transaction():
                await conn.execute(queries.SNAPSHOT)
                current = (await (await conn.execute(queries.CURRENT_REVISION)).fetchone())[0]
                await _stream_events(conn, queries.ALL_LOG_ROWS, None, consume)
                leases = await (await conn.execute(queries.ALL_LEASES)).fetchall()
                return current, [(lid, ttl) for lid, ttl in leases]
        return await self._read(q, retry=False)

    # --- snapshot (Maintenance.Snapshot) ---

    async def snapshot_scan(self, produce):
        async def q(conn):
            async with conn.transaction():
                await conn.execute(queries.SNAPSHOT)
                current, compact = await (await conn.execute(queries.REVISIONS)).fetchone()
                leases = await (await conn.execute(queries.ALL_LEASES)).fetchall()
                scan = SnapshotScan(current, compact, [(lid, ttl) for lid, ttl in leases])

                async def versions(batch: int = 1000):
                    events: list[Event] = []
                    async for r in conn.cursor().stream(queries.SNAPSHOT_LOG_ROWS, {"compact": compact}, size=batch):
                        kind = EventKind.DELETE if r[2] else EventKind.PUT
                        events.append(Event(r[0], r[1], kind, queries.kv_from_row(r, 3), None))
                        if len(events) >= batch:
                            yield events
                            events = []
                    if events:
                        yield events
                return await produce(scan, versions)
        return await self._read(q, retry=False)

    # --- KV ---

    async def range(self, op: RangeOp) -> RangeResult:
        """etcd API v3 KV.Range (linearizable: a read sees every write acknowledged before it).

        Raises CompactedError, FutureRevisionError, UnavailableError.
        """
        revision, compact, res = await self._read(lambda conn: read_range(conn, op))
        self.read_lease.check()
        if op.revision > 0:
            if op.revision > revision:
                raise FutureRevisionError()
            if op.revision < compact:
                raise CompactedError(compact)
        return res

    async def put(self, op: PutOp) -> PutResult:
        """etcd API v3 KV.Put. Raises KeyNotFoundError, LeaseNotFoundError, InternalError (a
        failure of this request's own), UnavailableError."""
        return await self.writer.submit(encode(op))

    async def delete_range(self, op: DeleteOp) -> DeleteResult:
        """etcd API v3 KV.DeleteRange. Raises InternalError, UnavailableError."""
        return await self.writer.submit(encode(op))

    async def txn(self, op: TxnOp) -> TxnResult:
        """etcd API v3 KV.Txn; read-only txns run in a REPEATABLE READ snapshot outside the
        writer. Raises the StorageError of a failing check, InternalError, or UnavailableError."""
        if is_read_only(op):
            async def q(conn):
                async with conn.transaction():
                    await conn.execute(queries.SNAPSHOT)
                    rev, compact = await (await conn.execute(queries.REVISIONS)).fetchone()
                    return await Applier(conn, rev, compact).txn(op)
            res = await self._read(q)
            self.read_lease.check()
            return res
        return await self.writer.submit(encode(op) or (lambda a: a.txn(op)))

    async def compact(self, revision: int) -> int:
        """etcd API v3 KV.Compact (physical). Returns the header revision.

        Raises CompactedError, FutureRevisionError, UnavailableError.
        """
        async def req(a: Applier):
            await a.compact(revision)
            return a.begin
        return await self.writer.submit(req)

    # --- watch (etcd API v3 Watch) ---

    def subscribe(self, key: bytes, range_end: bytes, start_revision: int, prev_kv: bool,
                  filters: frozenset[EventKind]) -> Subscription:
        """Events of etcd's range (``key``, ``range_end``) from ``start_revision`` on, as a
        :class:`~.watchhub.Subscription` (an async iterator; ``filters``: kinds not wanted)."""
        return self.hub.subscribe(key, range_end, start_revision, prev_kv, filters)

    def watch_revision(self) -> int:
        """The revision up to which every event has been handed to the subscriptions."""
        return self.hub.position

    async def watch_progress(self) -> int:
        """Wait (at most 5 s) until every event up to the store revision has been handed to
        the subscriptions; return :meth:`watch_revision` (etcd's progress notification)."""
        try:
            target = await self.current_revision()
        except StorageError:
            target = self.hub.position  # PostgreSQL is down: the hub's view is the best we have
        await self.hub.wait_for(target)
        return self.hub.position

    # --- leases (etcd API v3 Lease) ---

    async def lease_grant(self, ttl: int, lease_id: int = 0) -> tuple[int, int, int]:
        """Grant a lease of ``ttl`` seconds (at least :data:`MIN_LEASE_TTL`); ``lease_id`` 0 =
        choose one. Returns (id, ttl, header revision).

        Raises LeaseExistsError, LeaseTTLTooLargeError, UnavailableError.
        """
        if ttl > MAX_LEASE_TTL:
            raise LeaseTTLTooLargeError()
        ttl = max(ttl, MIN_LEASE_TTL)
        for _ in range(5):
            lid = lease_id or random.randint(1, 2**63 - 1)
            row = await self._one(queries.LEASE_GRANT, {"id": lid, "ttl": ttl})
            if row[0] is not None:
                return lid, ttl, row[1]
            if lease_id:
                raise LeaseExistsError()
        raise UnavailableError("could not choose a free lease ID")

    async def lease_revoke(self, lease_id: int) -> int:
        """Revoke a lease and delete its keys at one revision. Returns the header revision.

        Raises LeaseNotFoundError, UnavailableError.
        """
        async def req(a: Applier):
            await a.revoke(lease_id)
            return a.view_revision
        return await self.writer.submit(req)

    async def lease_keepalive(self, lease_id: int) -> tuple[int, int]:
        """Renew a lease to its full TTL. Returns (ttl, header revision); ttl 0 = not found."""
        row = await self._one(queries.LEASE_KEEPALIVE, {"id": lease_id})
        return (row[0] or 0), row[1]

    async def lease_time_to_live(self, lease_id: int, keys: bool) -> tuple[int, int, list[bytes], int]:
        """Remaining seconds (truncated, -1 = not found), granted TTL, attached keys (if
        asked, in key order) and the header revision."""
        row = await self._one(queries.LEASE_TIME_TO_LIVE, {"id": lease_id, "keys": keys})
        granted, remaining, revision, attached = row
        if granted is None or remaining < 0:
            return -1, 0, [], revision
        return remaining, granted, [bytes(k) for k in (attached or [])], revision

    async def leases(self) -> tuple[list[int], int]:
        """IDs of all granted leases and the header revision (etcd Lease.LeaseLeases)."""
        async def q(conn):
            rows = await (await conn.execute(queries.LEASES, prepare=True)).fetchall()
            return rows
        rows = await self._read(q)
        return [r[1] for r in rows if r[1] is not None], rows[0][0]

    async def _expire_leases(self) -> None:
        """Revoke expired leases (with delete events for their keys). Safe with several shim
        processes: the revoke re-checks expiry inside the writer's locked transaction."""
        while True:
            await asyncio.sleep(self.lease_check_interval)
            try:
                row_ids = await self._read(lambda conn: self._expired(conn))
                for lid in row_ids:
                    await self.writer.submit(lambda a, lid=lid: a.revoke(lid, only_expired=True))
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.debug("lease expiry pass failed: %s", e)

    @staticmethod
    async def _expired(conn) -> list[int]:
        rows = await (await conn.execute(queries.EXPIRED_LEASES, prepare=True)).fetchall()
        return [r[0] for r in rows]
