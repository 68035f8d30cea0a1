"""A Watch stream driven from a test thread, for the shim and for etcd alike."""

from __future__ import annotations

import queue
import threading

import grpc

from k8s_sql.shim.etcdpb import rpc_pb2, rpc_pb2_grpc


class WatchStream:
    """One bidirectional Watch call: ``send``/``create`` requests, ``next`` responses.

    ``close_send()`` half-closes the client side (no more requests) and leaves the call
    open; ``close()`` cancels it. ``error`` holds the call's final RpcError, if any.
    """

    def __init__(self, channel: grpc.Channel, timeout: float | None = None):
        self.requests: queue.Queue = queue.Queue()
        self.responses: queue.Queue = queue.Queue()
        self.error: grpc.RpcError | None = None
        self.ended = threading.Event()
        self.call = rpc_pb2_grpc.WatchStub(channel).Watch(iter(self.requests.get, None), timeout=timeout)
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        try:
            for r in self.call:
                self.responses.put(r)
        except grpc.RpcError as e:
            self.error = e
        finally:
            self.ended.set()

    def send(self, **kw) -> None:
        self.requests.put(rpc_pb2.WatchRequest(**kw))

    def create(self, key: bytes, **kw) -> rpc_pb2.WatchResponse:
        """Create a watcher and return the ``created`` answer."""
        self.send(create_request=rpc_pb2.WatchCreateRequest(key=key, **kw))
        r = self.next()
        assert r.created
        return r

    def next(self, timeout: float = 10.0) -> rpc_pb2.WatchResponse:
        return self.responses.get(timeout=timeout)

    def events(self, n: int, timeout: float = 10.0) -> list:
        """The next ``n`` events as (watch_id, event)."""
        out = []
        while len(out) < n:
            r = self.next(timeout)
            out += [(r.watch_id, e) for e in r.events]
        return out

    def close_send(self) -> None:
        self.requests.put(None)

    def close(self) -> None:
        self.requests.put(None)
        self.call.cancel()
