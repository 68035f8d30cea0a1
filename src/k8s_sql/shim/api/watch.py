"""etcd API v3 ``Watch`` service: one bidirectional stream carries many watchers.

Per stream (etcd 3.5 semantics, api/v3rpc/watch.go):
- create: answered with ``created`` and the header revision; ``start_revision`` 0 means
  "after the current revision"; an older one replays history from the log first; a
  compacted one is cancelled with ``compact_revision``; ``watch_id`` 0 lets the server choose.
- cancel: answered with ``canceled`` (nothing for an unknown id, as etcd).
- progress_request: answered with ``watch_id`` -1 and a header revision R once every
  watcher of the stream is synced, meaning every event up to R has been sent.
- ``progress_notify`` watchers get an empty response every
  ``--watch-progress-notify-interval`` when they received no event in that interval.
Events reach the client in revision order, each exactly once.
"""

from __future__ import annotations

import asyncio
import logging

from k8s_sql.shim import metrics
from k8s_sql.shim.api import convert
from k8s_sql.shim.etcdpb import kv_pb2, rpc_pb2, rpc_pb2_grpc
from k8s_sql.shim.storage.base import CompactedError, Event

log = logging.getLogger(__name__)

#: etcd's default --max-request-bytes; a fragmenting watcher splits responses above it.
MAX_RESPONSE_BYTES = 1572864
#: etcd's -1 watch id: a progress response for every watcher of the stream.
ALL_WATCHERS = -1


def event_pb(e: Event) -> kv_pb2.Event:
    out = kv_pb2.Event(type=e.kind, kv=convert.kv_pb(e.kv))
    if e.prev_kv is not None:
        out.prev_kv.CopyFrom(convert.kv_pb(e.prev_kv))
    return out


class _Watcher:
    """One watcher of a stream; the hub calls :meth:`deliver` and :meth:`compacted`."""

    def __init__(self, stream: "_Stream", watch_id: int, req: rpc_pb2.WatchCreateRequest, start: int):
        self.stream = stream
        self.id = watch_id
        self.key = req.key or b"\0"  # etcd: an empty key watches from the smallest key
        self.range_end = req.range_end
        self.start = start
        self.prev_kv = req.prev_kv
        self.filters = set(req.filters)
        self.progress_notify = req.progress_notify
        self.fragment = req.fragment
        self.active = True  # an event was sent since the last progress tick

    def deliver(self, events: list[Event], revision: int) -> None:
        self.active = True
        self.stream.send_events(self, events, revision)

    def compacted(self, compact_revision: int) -> None:
        self.stream.drop(self)
        self.stream.out.put_nowait(rpc_pb2.WatchResponse(
            header=self.stream.header(0), watch_id=self.id, canceled=True, compact_revision=compact_revision))


class _Stream:
    """State of one Watch stream: its watchers and the queue of responses to send."""

    def __init__(self, servicer: "WatchServicer"):
        self.backend = servicer.backend
        self.hub = servicer.backend.hub
        self.header = servicer.header
        self.out: asyncio.Queue = asyncio.Queue()
        self.watchers: dict[int, _Watcher] = {}
        self.next_id = 0
        self.tasks: set[asyncio.Task] = set()

    def spawn(self, coro) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)

    def send_events(self, w: _Watcher, events: list[Event], revision: int) -> None:
        pbs = [event_pb(e) for e in events]
        if w.fragment:
            chunks, cur, size = [], [], 0
            for ev in pbs:
                n = ev.ByteSize()
                if cur and size + n > MAX_RESPONSE_BYTES:
                    chunks.append(cur)
                    cur, size = [], 0
                cur.append(ev)
                size += n
            chunks.append(cur)
        else:
            chunks = [pbs]
        for i, chunk in enumerate(chunks):
            self.out.put_nowait(rpc_pb2.WatchResponse(header=self.header(revision), watch_id=w.id, events=chunk,
                                                      fragment=i < len(chunks) - 1))

    def drop(self, w: _Watcher) -> None:
        if self.watchers.pop(w.id, None) is not None:
            metrics.WATCHERS.dec()
        self.hub.remove(w)

    async def create(self, req: rpc_pb2.WatchCreateRequest) -> None:
        """etcd WatchCreateRequest."""
        try:
            current = await self.backend.current_revision()
        except Exception:
            current = self.hub.position  # PostgreSQL is down: the hub's view is the best we have
        key = req.key or b"\0"
        if req.range_end and req.range_end != b"\0" and key >= req.range_end:
            self.out.put_nowait(rpc_pb2.WatchResponse(header=self.header(current), watch_id=-1, created=True,
                                                      canceled=True, cancel_reason="mvcc: watcher range is empty"))
            return
        watch_id = req.watch_id
        if watch_id and watch_id in self.watchers:
            self.out.put_nowait(rpc_pb2.WatchResponse(
                header=self.header(current), watch_id=watch_id, created=True, canceled=True,
                cancel_reason="mvcc: duplicate watch ID provided on the WatchStream"))
            return
        if not watch_id:
            while self.next_id in self.watchers:
                self.next_id += 1
            watch_id = self.next_id
            self.next_id += 1
        w = _Watcher(self, watch_id, req, req.start_revision or current + 1)
        self.watchers[watch_id] = w
        metrics.WATCHERS.inc()
        self.out.put_nowait(rpc_pb2.WatchResponse(header=self.header(current), watch_id=watch_id, created=True))
        upto = self.hub.add(w)
        if w.start <= upto:
            self.spawn(self._catch_up(w, upto))

    async def _catch_up(self, w: _Watcher, upto: int) -> None:
        while True:
            try:
                await self.hub.catch_up(w, upto)
                break
            except CompactedError as e:
                w.compacted(e.compact_revision)
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:  # PostgreSQL unavailable: retry, the watcher keeps its place
                log.warning("watch %d catch-up failed (%s); retrying", w.id, e)
                await asyncio.sleep(0.5)
                if w.id not in self.watchers:
                    return
        self.hub.synced(w)

    def cancel(self, watch_id: int) -> None:
        """etcd WatchCancelRequest."""
        w = self.watchers.get(watch_id)
        if w is None:
            return
        self.drop(w)
        self.out.put_nowait(rpc_pb2.WatchResponse(header=self.header(self.hub.position), watch_id=watch_id,
                                                  canceled=True))

    async def progress(self) -> None:
        """etcd 3.5 WatchProgressRequest: answer once all watchers are synced, with a
        revision up to which every event has been sent."""
        try:
            target = await self.backend.current_revision()
        except Exception:
            target = self.hub.position
        await self.hub.wait_for(target)
        while not all(self.hub.is_synced(w) for w in self.watchers.values()):
            await asyncio.sleep(0.01)
        self.out.put_nowait(rpc_pb2.WatchResponse(header=self.header(self.hub.position), watch_id=ALL_WATCHERS))

    async def ticker(self, interval: float) -> None:
        """Progress notifications for watchers created with progress_notify."""
        while True:
            await asyncio.sleep(interval)
            for w in list(self.watchers.values()):
                if w.progress_notify and self.hub.is_synced(w):
                    if not w.active:
                        self.out.put_nowait(rpc_pb2.WatchResponse(header=self.header(self.hub.position),
                                                                  watch_id=w.id))
                    w.active = False

    def close(self) -> None:
        for w in list(self.watchers.values()):
            self.drop(w)
        for t in list(self.tasks):
            t.cancel()


class WatchServicer(rpc_pb2_grpc.WatchServicer):
    """etcd API v3 Watch over the backend's watch hub."""

    def __init__(self, backend, settings):
        self.backend = backend
        self.header = convert.Headers(settings)
        self.progress_interval = settings.watch_progress_notify_interval

    async def Watch(self, request_iterator, context):
        stream = _Stream(self)
        metrics.WATCH_STREAMS.inc()
        done = object()

        async def read() -> None:
            try:
                async for req in request_iterator:
                    which = req.WhichOneof("request_union")
                    if which == "create_request":
                        await stream.create(req.create_request)
                    elif which == "cancel_request":
                        stream.cancel(req.cancel_request.watch_id)
                    elif which == "progress_request":
                        stream.spawn(stream.progress())
            finally:
                stream.out.put_nowait(done)

        stream.spawn(read())
        if self.progress_interval > 0:
            stream.spawn(stream.ticker(self.progress_interval))
        try:
            while True:
                item = await stream.out.get()
                if item is done:
                    break
                yield item
        finally:
            stream.close()
            metrics.WATCH_STREAMS.dec()
