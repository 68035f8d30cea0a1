"""Group commit: concurrent write requests share one PostgreSQL transaction.

One writer task per shim process drains a queue of pending requests. For each batch it
opens a transaction, locks the ``meta`` row (the revision counter — this also orders the
batches of every other shim process on the database), applies the requests one after
another, each at its own revision and seeing the effects of the ones before, writes the new
revision, sends ``pg_notify`` (delivered to every shim's watch hub on commit) and commits
once: one fsync for the whole batch. Answers go out only after the commit, so an
acknowledged write is durable; if anything fails before the commit, every request of the
batch fails with :class:`UnavailableError` and nothing of it is stored.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg

from k8s_sql.shim.storage.apply import Applier
from k8s_sql.shim.storage.base import StorageError, UnavailableError

log = logging.getLogger(__name__)

#: LISTEN/NOTIFY channel announcing new revisions.
NOTIFY_CHANNEL = "k8s_sql_revision"
#: Most requests one transaction carries.
MAX_BATCH = 256

Request = Callable[[Applier], Awaitable[Any]]


class Writer:
    """Serialises write requests into batched transactions.

    Args:
        pool: a psycopg_pool AsyncConnectionPool (autocommit connections).
        on_commit: called with the new store revision after each commit that changed it
            (the local watch hub uses it to skip the NOTIFY round trip).
    """

    def __init__(self, pool, on_commit: Callable[[int], None] | None = None):
        self.pool = pool
        self.on_commit = on_commit
        self.queue: asyncio.Queue[tuple[Request, asyncio.Future]] = asyncio.Queue()
        self._task: asyncio.Task | None = None
        self.batches = 0
        self.requests = 0

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

    async def submit(self, request: Request) -> Any:
        """Run ``request(applier)`` in the next batch and return its result after the commit.

        Raises the request's StorageError, or UnavailableError when the batch failed.
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
        results: list[tuple[asyncio.Future, bool, Any]] = []
        try:
            async with self.pool.connection() as conn:
                async with conn.transaction():
                    cur = await conn.execute("SELECT revision, compact_revision FROM meta FOR UPDATE", prepare=True)
                    revision, compact = await cur.fetchone()
                    start = revision
                    for req, fut in batch:
                        applier = Applier(conn, revision, compact)
                        try:
                            res = await req(applier)
                        except StorageError as e:
                            results.append((fut, False, e))
                            continue
                        if applier.changes:
                            revision += 1
                        compact = applier.compact_revision
                        results.append((fut, True, res))
                    if revision != start:
                        # one round trip for both (a data-modifying CTE runs even when unreferenced)
                        await conn.execute("WITH m AS (UPDATE meta SET revision = %s) SELECT pg_notify(%s, %s)",
                                           (revision, NOTIFY_CHANNEL, str(revision)), prepare=True)
        except (psycopg.Error, OSError) as e:
            log.warning("write batch of %d failed: %s", len(batch), e)
            err = UnavailableError(f"datastore unavailable: {str(e).strip().splitlines()[0] if str(e) else type(e).__name__}")
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(err)
            return
        except BaseException as e:  # a bug or cancellation: never leave callers hanging
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(e if isinstance(e, Exception) else UnavailableError("shim is shutting down"))
            if not isinstance(e, Exception):
                raise
            log.exception("write batch failed")
            return
        self.batches += 1
        self.requests += len(batch)
        if revision != start and self.on_commit:
            self.on_commit(revision)
        for fut, ok, res in results:
            if fut.done():
                continue
            if ok:
                fut.set_result(res)
            else:
                fut.set_exception(res)
