"""etcd API v3 ``Watch`` service: one bidirectional stream carries many watchers.

Per stream (etcd 3.5 semantics, api/v3rpc/watch.go):
- create: answered with ``created`` and the header revision; ``start_revision`` 0 means
  "after the current revision"; an older one replays history from the log first; a
  compacted one is cancelled with ``compact_revision`` (a negative one too, as etcd does:
  ``compact_revision`` -1 when nothing was compacted yet); ``watch_id`` 0 lets the server
  choose. A create etcd refuses is answered with ``watch_id`` -1, ``created`` and
  ``canceled``, and its ``cancel_reason``: :data:`ERR_EMPTY_RANGE` (range end <= key) or
  :data:`ERR_DUPLICATE_ID` (an explicit ``watch_id`` already in use on the stream).
- cancel: answered with ``canceled`` (nothing for an unknown id, as etcd).
- progress_request: answered with ``watch_id`` -1 and a header revision R once every
  watcher of the stream is synced, meaning every event up to R has been sent.
- ``progress_notify`` watchers get an empty response every
  ``--watch-progress-notify-interval`` when they received no event in that interval.
Events reach the client in revision order, each exactly once. Watchers created with
``fragment`` get responses of ``--max-request-bytes`` plus 512 KiB or more split as etcd's
sendFragments does.
The stream lives until the client cancels it: after the client half-closes its side
(no more requests) events keep coming, as in etcd.
"""

from __future__ import annotations

import asyncio
import logging

from k8s_sql.shim import metrics
from k8s_sql.shim.api.convert import event_pb, field_size, watch_filters
from k8s_sql.shim.api.header import Headers
from k8s_sql.shim.etcdpb import rpc_pb2, rpc_pb2_grpc
from k8s_sql.shim.settings import GRPC_OVERHEAD_BYTES
from k8s_sql.shim.storage.base import FROM_KEY, CompactedError, Event

log = logging.getLogger(__name__)

#: etcd's -1 watch id (clientv3.InvalidWatchID): a progress response for every watcher of
#: the stream, or a create that was refused.
INVALID_WATCH_ID = -1
#: etcd's cancel reasons (mvcc/watcher.go).
ERR_EMPTY_RANGE = "mvcc: watcher range is empty"
ERR_DUPLICATE_ID = "mvcc: duplicate watch ID provided on the WatchStream"
_EVENTS_FIELD = rpc_pb2.WatchResponse.DESCRIPTOR.fields_by_name["events"].number


class _Watcher:
    """One watcher of a stream: its storage subscription and the task sending its events."""

    def __init__(self, stream: "_Stream", watch_id: int, req: rpc_pb2.WatchCreateRequest):
        self.stream = stream
        self.id = watch_id
        self.progress_notify = req.progress_notify
        self.fragment = req.fragment
        self.active = True  # an event was sent since the last progress tick
        self.retired = False  # cancelled by compaction: no more events, the id stays taken
        self.sub = None  # the storage Subscription, once created

    async def pump(self) -> None:
        """Send the subscription's events until the watch is cancelled or compacted away."""
        try:
            async for events, revision in self.sub:
                self.active = True
                self.stream.send_events(self, events, revision)
        except CompactedError as e:
            # etcd stops the watcher but keeps its id on the stream until the client cancels it
            self.retired = True
            # 0 only reaches here for a negative start revision: etcd's "never compacted" is -1
            self.stream.out.put_nowait(rpc_pb2.WatchResponse(
                header=self.stream.header(0), watch_id=self.id, canceled=True,
                compact_revision=e.compact_revision or -1))
        finally:
            self.sub.close()

    @property
    def synced(self) -> bool:
        """Every event up to the storage's watch revision has been queued for the client."""
        return self.retired or self.sub.synced


class _Stream:
    """State of one Watch stream: its watchers and the queue of responses to send."""

    def __init__(self, servicer: "WatchServicer"):
        self.backend = servicer.backend
        self.header = servicer.header
        self.fragment_bytes = servicer.fragment_bytes
        self.out: asyncio.Queue = asyncio.Queue()
        self.watchers: dict[int, _Watcher] = {}
        self.next_id = 0
        self.tasks: set[asyncio.Task] = set()

    def spawn(self, coro) -> asyncio.Task:
        t = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)
        return t

    def send_events(self, w: _Watcher, events: list[Event], revision: int) -> None:
        resp = rpc_pb2.WatchResponse(header=self.header(revision), watch_id=w.id,
                                     events=[event_pb(e) for e in events])
        limit = self.fragment_bytes
        if not w.fragment or len(resp.events) < 2 or resp.ByteSize() < limit:
            self.out.put_nowait(resp)
            return
        # etcd sendFragments: add events while the response stays below the limit (at
        # least one each); every part but the last has ``fragment`` set
        base = rpc_pb2.WatchResponse(header=resp.header, watch_id=w.id, fragment=True).ByteSize()
        part, size = [], base
        for ev in resp.events:
            n = field_size(_EVENTS_FIELD, ev.ByteSize())
            if part and size + n >= limit:
                self.out.put_nowait(rpc_pb2.WatchResponse(header=resp.header, watch_id=w.id, events=part,
                                                          fragment=True))
                part, size = [], base
            part.append(ev)
            size += n
        self.out.put_nowait(rpc_pb2.WatchResponse(header=resp.header, watch_id=w.id, events=part))

    def drop(self, w: _Watcher) -> None:
        if self.watchers.pop(w.id, None) is not None:
            metrics.WATCHERS.dec()
        if w.sub is not None:
            w.sub.close()

    async def create(self, req: rpc_pb2.WatchCreateRequest) -> None:
        """etcd WatchCreateRequest."""
        try:
            current = await self.backend.current_revision()
        except Exception:
            current = self.backend.watch_revision()  # PostgreSQL is down: the best we know
        key = req.key or b"\0"
        watch_id = req.watch_id
        refused = None
        if req.range_end and req.range_end != FROM_KEY and key >= req.range_end:
            refused = ERR_EMPTY_RANGE
        elif watch_id and watch_id in self.watchers:
            refused = ERR_DUPLICATE_ID
        if refused:
            self.out.put_nowait(rpc_pb2.WatchResponse(header=self.header(current), watch_id=INVALID_WATCH_ID,
                                                      created=True, canceled=True, cancel_reason=refused))
            return
        if not watch_id:
            while self.next_id in self.watchers:
                self.next_id += 1
            watch_id = self.next_id
            self.next_id += 1
        w = _Watcher(self, watch_id, req)
        self.watchers[watch_id] = w
        metrics.WATCHERS.inc()
        self.out.put_nowait(rpc_pb2.WatchResponse(header=self.header(current), watch_id=watch_id, created=True))
        # etcd: an empty key watches from the smallest key (b"\0")
        w.sub = self.backend.subscribe(key, req.range_end, req.start_revision or current + 1, req.prev_kv,
                                       watch_filters(req.filters))
        self.spawn(w.pump())

    def cancel(self, watch_id: int) -> None:
        """etcd WatchCancelRequest."""
        w = self.watchers.get(watch_id)
        if w is None:
            return
        self.drop(w)
        self.out.put_nowait(rpc_pb2.WatchResponse(header=self.header(self.backend.watch_revision()),
                                                  watch_id=watch_id, canceled=True))

    async def progress(self) -> None:
        """etcd 3.5 WatchProgressRequest: answer once all watchers are synced, with a
        revision up to which every event has been sent."""
        await self.backend.watch_progress()
        while not all(w.synced for w in self.watchers.values()):
            await asyncio.sleep(0.01)
        self.out.put_nowait(rpc_pb2.WatchResponse(header=self.header(self.backend.watch_revision()),
                                                  watch_id=INVALID_WATCH_ID))

    async def ticker(self, interval: float) -> None:
        """Progress notifications for watchers created with progress_notify."""
        while True:
            await asyncio.sleep(interval)
            for w in list(self.watchers.values()):
                if w.progress_notify and not w.retired and w.synced:
                    if not w.active:
                        self.out.put_nowait(rpc_pb2.WatchResponse(
                            header=self.header(self.backend.watch_revision()), watch_id=w.id))
                    w.active = False

    def close(self) -> None:
        for w in list(self.watchers.values()):
            self.drop(w)
        for t in list(self.tasks):
            t.cancel()


class WatchServicer(rpc_pb2_grpc.WatchServicer):
    """etcd API v3 Watch over the storage's subscriptions (``backend.subscribe``)."""

    def __init__(self, backend, settings):
        self.backend = backend
        self.header = Headers(settings)
        self.progress_interval = settings.watch_progress_notify_interval
        self.fragment_bytes = settings.max_request_bytes + GRPC_OVERHEAD_BYTES  # etcd's, see sendFragments

    async def Watch(self, request_iterator, context):
        stream = _Stream(self)
        metrics.WATCH_STREAMS.inc()
        done = object()

        async def read() -> None:
            # the client's half-close ends this loop, not the stream: etcd keeps sending
            # events until the call is cancelled; a broken stream (or a bug) ends the call
            try:
                async for req in request_iterator:
                    which = req.WhichOneof("request_union")
                    if which == "create_request":
                        await stream.create(req.create_request)
                    elif which == "cancel_request":
                        stream.cancel(req.cancel_request.watch_id)
                    elif which == "progress_request":
                        stream.spawn(stream.progress())
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.debug("watch stream ends: %s", e)
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
