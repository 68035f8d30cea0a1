"""The watch hub: one tail of the ``log`` table per shim process, fanned out to watchers.

Because every writer locks the revision counter, commit order equals revision order: a
snapshot that contains revision N contains every revision below it. The hub therefore
reads "every event after the last revision I dispatched" and can never skip one that
commits later. It wakes on ``pg_notify`` from any shim process (LISTEN on its own
connection) and every ``poll_interval`` seconds as a fallback; after a PostgreSQL restart it
reconnects and continues from its position, so watchers lose nothing. This process's writer
hands over what it committed (:meth:`WatchHub.committed`): the batch's events, dispatched
without reading them back from the log when they follow the hub's position directly.

Watchers are :class:`Subscription` objects (:meth:`WatchHub.subscribe`), async iterators
of event batches, so the gRPC layer only translates them to protobuf. A watcher starting at
an older revision first catches up from the log (:meth:`catch_up`) while the hub buffers its
live events; then the buffer is flushed and it is synced. If compaction overtakes a watcher,
its iteration raises CompactedError with the compact revision (etcd cancels the watch).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

import psycopg

from k8s_sql.shim.aio import cancel_tasks, wait_event
from k8s_sql.shim.storage import base, queries
from k8s_sql.shim.storage.base import CompactedError, Event, EventKind, KeyValue, in_range

log = logging.getLogger(__name__)

PAGE = 1000
_MAX_SUB = 2**31 - 1
_MAX_REV = 2**63 - 1


class Watcher(Protocol):
    """What the hub needs from a watcher (a :class:`Subscription`).

    key/range_end: etcd's watch range (range_end b"" = one key, b"\\0" = from key);
    start: first revision wanted; prev_kv; filters: the event kinds not wanted.
    """

    key: bytes
    range_end: bytes
    start: int
    prev_kv: bool
    filters: frozenset[EventKind]

    def deliver(self, events: list[Event], revision: int) -> None:
        """Queue events (ascending revision) for the client; ``revision`` = header revision."""

    def compacted(self, compact_revision: int) -> None:
        """The watcher fell behind compaction: it ends with ``compact_revision``."""


class Subscription(base.Subscription):
    """One watcher's events (etcd API v3 Watch), made by :meth:`WatchHub.subscribe`: an
    async iterator of ``(events, revision)`` batches in revision order, each event once,
    ``revision`` being the header revision to send them with. Iteration raises
    CompactedError when compaction removed events it still needed (etcd then cancels the
    watch with that compact revision). :meth:`close` ends it."""

    def __init__(self, hub: "WatchHub", key: bytes, range_end: bytes, start: int, prev_kv: bool,
                 filters: frozenset[EventKind]):
        self.hub = hub
        self.key, self.range_end, self.start, self.prev_kv, self.filters = key, range_end, start, prev_kv, filters
        self._queue: asyncio.Queue = asyncio.Queue()
        self._task: asyncio.Task | None = None
        self._closed = False

    def deliver(self, events: list[Event], revision: int) -> None:
        self._queue.put_nowait((events, revision))

    def compacted(self, compact_revision: int) -> None:
        self.hub.remove(self)
        self._queue.put_nowait(CompactedError(compact_revision))

    def __aiter__(self) -> "Subscription":
        return self

    async def __anext__(self) -> tuple[list[Event], int]:
        item = await self._queue.get()
        if item is None:
            raise StopAsyncIteration
        if isinstance(item, CompactedError):
            raise item
        return item

    @property
    def synced(self) -> bool:
        """True when every event up to the hub's position has been taken from the iterator
        (no catch-up from the log pending, nothing queued)."""
        return self.hub.is_synced(self) and self._queue.empty()

    def close(self) -> None:
        """Stop the subscription (the client cancelled the watch or the stream ended): the
        iteration ends."""
        if self._closed:
            return
        self._closed = True
        self.hub.remove(self)
        if self._task is not None:
            self._task.cancel()
        self._queue.put_nowait(None)


def select(w: Watcher, events: list[Event]) -> list[Event]:
    """The events ``w`` wants: in its range, at or after its start revision, not filtered."""
    out = []
    for e in events:
        if e.revision < w.start or not in_range(e.kv.key, w.key, w.range_end) or e.kind in w.filters:
            continue
        out.append(e if w.prev_kv or e.prev_kv is None else Event(e.revision, e.sub, e.kind, e.kv, None))
    return out


def event_from_row(row, offset: int = 2) -> Event:
    """An :class:`Event` from :data:`queries.EVENT_COLUMNS` starting at ``row[offset]``."""
    (rev, sub, deleted, key, value, create, version, lease,
     pvalue, pcreate, pmod, pversion, plaese) = row[offset:offset + 13]
    key = bytes(key)
    if deleted:
        kv = KeyValue(key, b"", 0, rev, 0, 0)
    else:
        kv = KeyValue(key, bytes(value), create, rev, version, lease)
    prev = KeyValue(key, bytes(pvalue), pcreate, pmod, pversion, plaese) if pmod is not None else None
    return Event(rev, sub, EventKind.DELETE if deleted else EventKind.PUT, kv, prev)


class WatchHub:
    """Tails the log and dispatches events to registered watchers.

    Args:
        pool: the backend's AsyncConnectionPool (for reads).
        conninfo: libpq conninfo for the dedicated LISTEN connection.
        poll_interval: seconds between fallback polls.
    Attributes:
        position: the last revision dispatched to every watcher.
    """

    def __init__(self, pool, conninfo: str, poll_interval: float = 1.0):
        self.pool = pool
        self.conninfo = conninfo
        self.poll_interval = poll_interval
        self.position = 0
        self.watchers: set = set()
        self._buffers: dict = {}  # watcher -> events held back while it catches up
        self._wake = asyncio.Event()
        self._advanced = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    async def start(self, revision: int) -> None:
        """Start tailing after ``revision`` (the store revision at start)."""
        self.position = revision
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._listen(), name="k8s-sql-listen"),
                       loop.create_task(self._tail(), name="k8s-sql-watch-hub")]

    async def close(self) -> None:
        """Stop the hub's tasks."""
        await cancel_tasks(self._tasks)

    def committed(self, start: int, revision: int, events: list[Event] | None) -> None:
        """This process's writer committed revisions ``start``+1 .. ``revision``, writing
        ``events`` (ascending revision, prev_kv set; None = not built). With no watcher the
        hub only moves its position (commit order is revision order: nothing below it is
        missing), saving a read per write; with the events of the revisions right after its
        position it dispatches them; else it wakes the tail to read the log."""
        if not self.watchers:
            if revision > self.position:
                self.position = revision
                self._advanced.set()
        elif events is not None and start == self.position:
            if events:
                self._dispatch(events)
            self.position = revision
            self._advanced.set()
        else:
            self._wake.set()

    # --- registration ---

    def subscribe(self, key: bytes, range_end: bytes, start: int, prev_kv: bool,
                  filters: frozenset[EventKind]) -> Subscription:
        """A :class:`Subscription` to the events in etcd's range (``key``, ``range_end``)
        from revision ``start`` on, older ones read from the log first (retried while
        PostgreSQL is unreachable), with prev_kv if asked, without the ``filters`` kinds."""
        sub = Subscription(self, key, range_end, start, prev_kv, filters)
        upto = self.add(sub)
        if start <= upto:
            sub._task = asyncio.get_running_loop().create_task(self._catch_up(sub, upto))
        return sub

    async def _catch_up(self, sub: Subscription, upto: int) -> None:
        while True:
            try:
                await self.catch_up(sub, upto)
                break
            except CompactedError as e:
                sub.compacted(e.compact_revision)
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:  # PostgreSQL unavailable: retry, the watcher keeps its place
                log.warning("watch catch-up failed (%s); retrying", e)
                await asyncio.sleep(0.5)
                if sub not in self.watchers:
                    return
        self.synced(sub)

    def add(self, w: Watcher) -> int:
        """Register ``w``. Returns the hub position X: if ``w.start <= X`` the caller must
        :meth:`catch_up` up to X and then call :meth:`synced`; later events are buffered."""
        self.watchers.add(w)
        if w.start <= self.position:
            self._buffers[w] = []
        return self.position

    def remove(self, w: Watcher) -> None:
        """Unregister ``w`` (cancel or stream end)."""
        self.watchers.discard(w)
        self._buffers.pop(w, None)

    def synced(self, w: Watcher) -> None:
        """End ``w``'s catch-up: deliver what was buffered meanwhile."""
        held = self._buffers.pop(w, None)
        if held and w in self.watchers:
            w.deliver(held, held[-1].revision)

    def is_synced(self, w: Watcher) -> bool:
        """True when ``w`` receives live events directly (not catching up)."""
        return w not in self._buffers

    async def catch_up(self, w: Watcher, upto: int) -> None:
        """Deliver ``w``'s events with revision in [w.start, upto] from the log, in pages.

        Raises CompactedError when compaction removed part of that history (etcd cancels
        such a watch with compact_revision), and psycopg errors when PostgreSQL is down.
        """
        after, after_sub = w.start - 1, _MAX_SUB
        params = {"key": w.key, "end": w.range_end, "upto": upto}
        sql = queries.events_after(w.range_end, w.prev_kv, PAGE)
        while after < upto:
            async with self.pool.connection() as conn:
                rows = await (await conn.execute(sql, dict(params, after=after, after_sub=after_sub))).fetchall()
            compact = rows[0][0]
            if compact > after + 1:
                raise CompactedError(compact)
            events = [event_from_row(r) for r in rows if r[2] is not None]
            wanted = select(w, events)
            if wanted:
                w.deliver(wanted, upto)
            if len(events) < PAGE:
                return
            after, after_sub = events[-1].revision, events[-1].sub

    async def wait_for(self, revision: int, timeout: float = 5.0) -> bool:
        """Wait until every event up to ``revision`` has been dispatched. Returns False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.position < revision:
            self._wake.set()
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            self._advanced.clear()
            await wait_event(self._advanced, min(remaining, 0.1))
        return True

    # --- tailing ---

    async def _listen(self) -> None:
        delay = 0.2
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True)
                async with conn:
                    await conn.execute(queries.LISTEN)
                    delay = 0.2
                    self._wake.set()  # catch up on whatever happened while we were away
                    async for n in conn.notifies():
                        if n.payload.isdigit() and int(n.payload) <= self.position:
                            continue  # already dispatched (our own commit, handed over by the writer)
                        self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("LISTEN connection lost (%s); reconnecting in %.1fs", e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _tail(self) -> None:
        while True:
            await wait_event(self._wake, self.poll_interval)
            self._wake.clear()
            try:
                await self._fetch()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("watch hub cannot read the log (%s); retrying", e)
                await asyncio.sleep(0.5)
                self._wake.set()

    async def _fetch(self) -> None:
        if not self.watchers:  # nobody to deliver to: just move along with the store revision
            async with self.pool.connection() as conn:
                revision = (await (await conn.execute(queries.CURRENT_REVISION, prepare=True)).fetchone())[0]
            if not self.watchers:  # a watcher added meanwhile needs the events: read them below
                if revision > self.position:
                    self.position = revision
                    self._advanced.set()
                return
        while True:
            with_prev = any(w.prev_kv for w in self.watchers)
            sql = queries.events_after(None, with_prev, PAGE)
            params = {"after": self.position, "after_sub": _MAX_SUB, "upto": _MAX_REV}
            async with self.pool.connection() as conn:
                rows = await (await conn.execute(sql, params, prepare=True)).fetchall()
            compact = rows[0][0]
            if compact > self.position + 1:
                self._overtaken(compact)
                continue
            events = [event_from_row(r) for r in rows if r[2] is not None]
            if not events:
                return
            full = len(events) == PAGE
            if full:
                last = events[-1].revision
                trimmed = [e for e in events if e.revision != last]
                if trimmed:
                    events = trimmed
                else:  # one revision larger than a page: read all of it
                    async with self.pool.connection() as conn:
                        sql_all = queries.events_after(None, with_prev, 2**31 - 1)
                        rows = await (await conn.execute(sql_all, dict(params, upto=last))).fetchall()
                    events = [event_from_row(r) for r in rows if r[2] is not None]
            events = [e for e in events if e.revision > self.position]  # a hand-off may have sent some meanwhile
            if events:
                self._dispatch(events)
            if not full:
                return

    def _dispatch(self, events: list[Event]) -> None:
        revision = events[-1].revision
        for w in list(self.watchers):
            wanted = select(w, events)
            if not wanted:
                continue
            held = self._buffers.get(w)
            if held is not None:
                held.extend(wanted)
            else:
                w.deliver(wanted, revision)
        self.position = revision
        self._advanced.set()

    def _overtaken(self, compact: int) -> None:
        """Compaction passed the hub (e.g. it was disconnected): cancel watchers that needed
        the lost history and continue from the compact revision."""
        log.warning("compaction at %d overtook the watch hub at %d", compact, self.position)
        for w in list(self.watchers):
            if w.start < compact:
                self.remove(w)
                w.compacted(compact)
        self.position = compact - 1
