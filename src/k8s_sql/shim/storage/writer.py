"""Group commit: concurrent write requests share one PostgreSQL transaction.

One writer task per shim process drains a queue of pending requests. Each batch is one
transaction: it locks the ``meta`` row (the revision counter — this also orders the batches
of every other shim process on the database, old shims' included), applies the requests
one after another, each at its own revision and seeing the effects of the ones before,
writes the new revision, sends ``pg_notify`` (delivered to every shim's watch hub on commit)
and commits once: one fsync for the whole batch. Answers go out only after the commit, so an
acknowledged write is durable.

Put, DeleteRange and kube-apiserver's guarded txns (:mod:`.batch`) are applied by the
database function of schema migration 4: a batch of only those is one statement, so one
round trip, with no per-request SQL from Python. A batch of one such request (what a
sequential client makes) goes to migration 5's variant without the function's exception
block, a subtransaction that costs 10-25% of a single write (bench/PROFILE.md). Any other
request (a general txn, compaction, a lease revoke) runs through an
:class:`~.apply.Applier` in an explicit transaction, in which runs of the former still go
to the function together.

A request fails alone. Requests check everything etcd refuses before they write, so a
refused one (a StorageError such as a missing lease) leaves no trace and the batch goes on.
Any other failure of a request — a SQL error of its own, or a bug in its handling — leaves
the transaction unusable: it is rolled back and the batch runs again without that request,
which is answered with :class:`InternalError` (etcd's UNKNOWN); the others commit as if it
had not been there. (The batch function catches such a failure itself, undoes the batch and
names the request.) After :data:`MAX_RERUNS` such reruns the batch runs with a savepoint (a
subtransaction inside the function) around each request instead, so a batch full of failing
requests costs at most that. Only when the datastore itself fails (see :func:`datastore_failed`) does the whole batch fail,
with :class:`UnavailableError`, the code clients retry; nothing of the batch is stored then.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg

from k8s_sql.shim.storage import queries
from k8s_sql.shim.storage.apply import Applier
from k8s_sql.shim.storage.base import Event, InternalError, KeyValue, StorageError, UnavailableError
from k8s_sql.shim.storage.batch import FAILED, OK, Encoded, arrays, refusal

log = logging.getLogger(__name__)

#: Most requests one transaction carries.
MAX_BATCH = 256
#: Reruns of a batch without its failed requests before it runs with a savepoint per request.
MAX_RERUNS = 2

#: SQLSTATE classes that mean the datastore, not the request, failed: connection exception,
#: transaction rollback (serialization failure, deadlock), insufficient resources (disk
#: full, out of memory, too many connections), operator intervention (shutdown, statement
#: timeout), system error (I/O).
_DATASTORE_CLASSES = ("08", "40", "53", "57", "58")
#: ... and single codes: read-only transaction (the server is a standby), lock timeout.
_DATASTORE_CODES = ("25006", "55P03")

Request = Callable[[Applier], Awaitable[Any]]


def datastore_failed(e: BaseException, conn=None) -> bool:
    """True when ``e`` means the datastore cannot serve now (retry later), False when it is
    one request's own failure.

    ``conn`` (a psycopg connection) counts as failed once it is broken. Errors without a
    SQLSTATE are the datastore's when psycopg raises them as Operational/InterfaceError
    (connection lost, pool timeout), a request's otherwise (e.g. a parameter it cannot send).
    """
    if conn is not None and conn.broken:
        return True
    if isinstance(e, OSError):
        return True
    if not isinstance(e, psycopg.Error):
        return False
    state = e.sqlstate
    if state is None:
        return isinstance(e, (psycopg.OperationalError, psycopg.InterfaceError))
    return state[:2] in _DATASTORE_CLASSES or state in _DATASTORE_CODES


def first_line(e: BaseException) -> str:
    """``e``'s message, first line only (PostgreSQL adds DETAIL/HINT lines), or its type."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class _Failed(Exception):
    """Request ``index`` of the batch failed and left the transaction unusable; ``error`` is
    its answer."""

    def __init__(self, index: int, error: StorageError):
        super().__init__(str(error))
        self.index, self.error = index, error


class Writer:
    """Serialises write requests into batched transactions.

    Args:
        pool: a psycopg_pool AsyncConnectionPool (autocommit connections).
        on_commit: called as ``on_commit(start, revision, events)`` after each commit that
            changed the store revision from ``start`` to ``revision``; ``events`` are the
            batch's watch events in revision order when ``want_events()`` was true and every
            request of the batch went through the batch function, else None (the local
            watch hub then reads them from the log; either way it skips the NOTIFY).
        want_events: asked once per batch: should the batch build its watch events?
    Attributes:
        batches: committed batches; reruns: times a batch ran again without a failed
            request (bench/isolation.py reads both).
    """

    def __init__(self, pool, on_commit: Callable[[int, int, list[Event] | None], None] | None = None,
                 want_events: Callable[[], bool] = lambda: False):
        self.pool = pool
        self.on_commit = on_commit
        self.want_events = want_events
        self.queue: asyncio.Queue[tuple[Request | Encoded, asyncio.Future]] = asyncio.Queue()
        self._task: asyncio.Task | None = None
        self.batches = 0
        self.reruns = 0

    def start(self) -> None:
        """Start the writer task in the running loop."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="k8s-sql-writer")

    async def close(self) -> None:
        """Stop the writer; queued requests fail with UnavailableError."""
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        while not self.queue.empty():
            _, fut = self.queue.get_nowait()
            if not fut.done():
                fut.set_exception(UnavailableError("shim is shutting down"))

    async def submit(self, request: Request | Encoded) -> Any:
        """Run ``request`` in the next batch and return its result after the commit: an
        :class:`~.batch.Encoded` request through the batch write function, a function
        ``request(applier)`` through an :class:`~.apply.Applier`.

        Raises the request's StorageError (InternalError for any other failure of its own),
        or UnavailableError when the datastore failed.
        """
        fut = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((request, fut))
        return await fut

    async def _run(self) -> None:
        while True:
            batch = [await self.queue.get()]
            while len(batch) < MAX_BATCH and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            batch = [(req, fut) for req, fut in batch if not fut.cancelled()]
            if batch:
                await self._apply(batch)

    async def _apply(self, batch) -> None:
        failed: dict[int, StorageError] = {}  # batch index -> answer of a request left out
        try:
            while True:
                try:
                    results, revision, start, events = await self._transaction(batch, failed,
                                                                               len(failed) >= MAX_RERUNS)
                    break
                except _Failed as f:
                    failed[f.index] = f.error
                    self.reruns += 1
        except Exception as e:  # the datastore failed, or the batch's own statements did
            if datastore_failed(e):
                log.warning("write batch of %d failed: %s", len(batch), first_line(e))
            else:
                log.exception("write batch of %d failed", len(batch))
            err = UnavailableError(f"datastore unavailable: {first_line(e)}")
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(err)
            return
        except BaseException:  # cancelled: never leave callers hanging
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(UnavailableError("shim is shutting down"))
            raise
        self.batches += 1
        if revision != start and self.on_commit:
            self.on_commit(start, revision, events)
        for i, (ok, res) in enumerate(results):
            fut = batch[i][1]
            if fut.done():
                continue
            if ok:
                fut.set_result(res)
            else:
                fut.set_exception(res)

    async def _transaction(self, batch, failed: dict[int, StorageError],
                           savepoints: bool) -> tuple[list, int, int, list[Event] | None]:
        """Apply ``batch`` but the requests in ``failed`` in one transaction, each request in a
        savepoint (a subtransaction of the batch function) if ``savepoints``. Returns ([(ok,
        result or error)] in batch order, revision after, revision before, the watch events
        or None; see the class doc). Raises _Failed (only without savepoints) or the
        datastore's error.

        A batch of encoded requests only (the usual case) is one statement, so one round
        trip and its own transaction; any other request makes it an explicit transaction
        where runs of encoded requests still go to the function together.
        """
        results: list = [(False, failed[i]) if i in failed else None for i in range(len(batch))]
        live = [i for i in range(len(batch)) if i not in failed]
        if not live:
            return results, 0, 0, None
        async with self.pool.connection() as conn:
            if all(isinstance(batch[i][0], Encoded) for i in live):
                events = [] if self.want_events() else None
                revision, start = await self._call(conn, batch, live, results, savepoints, events)
                return results, revision, start, events
            async with conn.transaction():
                cur = await conn.execute(queries.LOCK_META, prepare=True)
                revision, compact = await cur.fetchone()
                start, dirty, j = revision, False, 0
                while j < len(live):
                    if isinstance(batch[live[j]][0], Encoded):
                        run = []
                        while j < len(live) and isinstance(batch[live[j]][0], Encoded):
                            run.append(live[j])
                            j += 1
                        if dirty:  # the function takes the revision from meta
                            await conn.execute(queries.SET_REVISION, {"rev": revision}, prepare=True)
                            dirty = False
                        revision, _ = await self._call(conn, batch, run, results, savepoints)
                        continue
                    i = live[j]
                    j += 1
                    applier = Applier(conn, revision, compact)
                    if savepoints:
                        ok, res = await self._with_savepoint(conn, batch[i][0], applier)
                    else:
                        ok, res = await self._direct(conn, i, batch[i][0], applier)
                    if ok:
                        if applier.changes:
                            revision += 1
                            dirty = True
                        compact = applier.compact_revision
                    results[i] = (ok, res)
                if dirty:
                    await conn.execute(queries.SET_REVISION_NOTIFY, {"rev": revision, "channel": queries.NOTIFY_CHANNEL,
                                                                     "payload": str(revision)}, prepare=True)
        return results, revision, start, None

    @staticmethod
    async def _call(conn, batch, indexes: list[int], results: list, isolate: bool,
                    events: list[Event] | None = None) -> tuple[int, int]:
        """Run the encoded requests ``batch[i] for i in indexes`` through the batch function
        and fill their ``results`` (and ``events``, when given, with the watch events they
        wrote). Returns (revision after, revision before). Raises _Failed for a request that
        failed alone when not ``isolate``."""
        params = arrays([batch[i][0] for i in indexes], isolate, prev_kvs=events is not None)
        if len(indexes) == 1 and not isolate:
            # one request (a sequential client's): the function without the subtransaction
            # that only serves to name the failed request of several
            try:
                rows = await (await conn.execute(queries.WRITE_ONE, params[:-1], prepare=True)).fetchall()
            except psycopg.Error as e:
                if datastore_failed(e, conn):
                    raise
                raise _Failed(indexes[0], _own_failure(f"{e.sqlstate}: {first_line(e)}" if e.sqlstate else e)) from e
        else:
            rows = await (await conn.execute(queries.WRITE_BATCH, params, prepare=True)).fetchall()
        kvs: list[KeyValue] = []
        for i, code, rev, ok, n, *kv, err in rows:
            if i == 0:  # the summary, always last
                if any(results[j] is None for j in indexes):
                    raise RuntimeError("the batch function left a request unanswered")
                return rev, n
            if code is None:  # a kv of the request answered next
                kvs.append(KeyValue(bytes(kv[0]), bytes(kv[1]), kv[2], kv[3], kv[4], kv[5]))
                continue
            index = indexes[i - 1]
            if code == OK:
                results[index] = (True, batch[index][0].result(rev, ok, n, kvs))
                if events is not None:
                    events.extend(batch[index][0].events(rev, ok, kvs))
            elif code == FAILED:
                error = _own_failure(err)
                if not isolate:
                    raise _Failed(index, error)
                results[index] = (False, error)
            else:
                results[index] = (False, refusal(code))
            kvs = []
        raise RuntimeError("the batch function returned no summary")

    @staticmethod
    async def _direct(conn, index: int, req: Request, applier: Applier) -> tuple[bool, Any]:
        try:
            return True, await req(applier)
        except StorageError as e:
            if applier.changes:  # it wrote before failing: only a rollback undoes that
                raise _Failed(index, e) from e
            return False, e
        except Exception as e:
            if datastore_failed(e, conn):
                raise
            raise _Failed(index, _own_failure(e)) from e

    @staticmethod
    async def _with_savepoint(conn, req: Request, applier: Applier) -> tuple[bool, Any]:
        try:
            async with conn.transaction():  # a savepoint inside the batch's transaction
                return True, await req(applier)
        except StorageError as e:
            return False, e
        except Exception as e:
            if datastore_failed(e, conn):
                raise
            return False, _own_failure(e)


def _own_failure(e: Exception | str) -> InternalError:
    """Log a request's own failure (with the traceback of a bug; a string is the SQLSTATE
    and message the batch function caught) and make its answer."""
    if isinstance(e, str):
        log.warning("a write request failed alone: %s", e)
        return InternalError(f"request failed: {e}")
    if isinstance(e, psycopg.Error):
        log.warning("a write request failed alone: %s", first_line(e))
    else:
        log.error("a write request failed alone (a bug in its handling)", exc_info=e)
    return InternalError(f"request failed: {type(e).__name__}: {first_line(e)}")
