"""Python workloads speaking the etcd v3 API with ``k8s_sql.shim.etcdpb`` stubs (etcd and shim alike).

* :func:`kubernetes_run` — what kube-apiserver does to a resource type: create N objects of
  2 KiB under ``/registry/configmaps/<ns>/<name>`` with create-if-absent txns, list them in
  pages of 500 at one revision, update each once with compare-on-mod_revision txns, delete
  each the same way, while a watcher (prev_kv, from the list's revision) must see every event.
* :func:`watch_lag` — put-to-event latency with the watcher and the writer on different
  endpoints (two shim processes on one database) or different connections (etcd).

asyncio with bounded concurrency; times in seconds, lags in milliseconds.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time

import grpc

from k8s_sql.shim.etcdpb import rpc_pb2, rpc_pb2_grpc

MB = 1 << 20


def _prefix_end(prefix: bytes) -> bytes:
    b = bytearray(prefix)
    b[-1] += 1
    return bytes(b)


def _pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


def _channel(endpoint: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(endpoint, options=[("grpc.max_receive_message_length", 16 * MB),
                                                         ("grpc.use_local_subchannel_pool", 1)])


async def _bounded(n: int, concurrency: int, fn) -> None:
    sem = asyncio.Semaphore(concurrency)

    async def one(i):
        async with sem:
            await fn(i)
    await asyncio.gather(*(one(i) for i in range(n)))


async def _watch_events(conn, endpoint, prefix, start_rev, want, timeout):
    channel = _channel(endpoint)
    stop = asyncio.Event()

    async def requests():  # keep the request stream open until the end
        yield rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(
            key=prefix, range_end=_prefix_end(prefix), start_revision=start_rev, prev_kv=True))
        await stop.wait()
    call = rpc_pb2_grpc.WatchStub(channel).Watch(requests())
    received, missing_prev = [], 0

    async def consume():
        nonlocal missing_prev
        first = True
        while len(received) < want:
            resp = await call.read()
            if resp is grpc.aio.EOF:
                return
            if first:
                conn.send(bool(resp.created))
                first = False
            now = time.monotonic()
            for ev in resp.events:
                if not ev.HasField("prev_kv"):
                    missing_prev += 1
                received.append((ev.kv.key, ev.type, now))
    try:
        await asyncio.wait_for(consume(), timeout)
    except asyncio.TimeoutError:
        pass
    stop.set()
    call.cancel()
    await channel.close()
    conn.send((received, missing_prev))


def _watcher_main(conn, endpoint, prefix, start_rev, want, timeout):
    """Watcher process: sends True once created, then ``(events, missing_prev_kv)``."""
    asyncio.run(_watch_events(conn, endpoint, prefix, start_rev, want, timeout))


async def _kubernetes_run(endpoint: str, n: int, tag: str, concurrency: int, conns: int) -> dict[str, float]:
    channels = [_channel(endpoint) for _ in range(conns)]
    kvs = [rpc_pb2_grpc.KVStub(c) for c in channels]
    prefix = f"/registry/configmaps/{tag}-".encode()
    keys = [prefix + f"ns{i % 20}/cm-{i:06d}".encode() for i in range(n)]
    value = b"v" * 2048
    mod_rev = [0] * n
    out: dict[str, float] = {}

    async def create(i):
        k = keys[i]
        r = await kvs[i % conns].Txn(rpc_pb2.TxnRequest(
            compare=[rpc_pb2.Compare(key=k, target=rpc_pb2.Compare.MOD, result=rpc_pb2.Compare.EQUAL, mod_revision=0)],
            success=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=k, value=value))],
            failure=[rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=k))]))
        if not r.succeeded:
            raise RuntimeError(f"create {k!r}: already exists")
        mod_rev[i] = r.header.revision

    t = time.monotonic()
    await _bounded(n, concurrency, create)
    out["k8s_create_s"] = time.monotonic() - t

    # List in pages of 500 at the first page's revision.
    t = time.monotonic()
    rev, key, seen = 0, prefix, 0
    while True:
        r = await kvs[0].Range(rpc_pb2.RangeRequest(key=key, range_end=_prefix_end(prefix), limit=500, revision=rev))
        rev = rev or r.header.revision
        seen += len(r.kvs)
        if not r.more:
            break
        key = r.kvs[-1].key + b"\x00"
    out["k8s_list_s"] = time.monotonic() - t
    if seen != n:
        raise RuntimeError(f"list saw {seen} of {n} objects")

    # Watcher from the list's revision with prev_kv, in its own process so the 64 writers'
    # client work does not delay it: must see n updates and n deletes.
    want = 2 * n
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    watcher = ctx.Process(target=_watcher_main, args=(child, endpoint, prefix, rev + 1, want, 120.0), daemon=True)
    watcher.start()
    if not await asyncio.get_running_loop().run_in_executor(None, parent.recv):
        raise RuntimeError("watcher was not created")
    acked: dict[tuple[bytes, int], float] = {}

    async def update(i):
        k = keys[i]
        r = await kvs[i % conns].Txn(rpc_pb2.TxnRequest(
            compare=[rpc_pb2.Compare(key=k, target=rpc_pb2.Compare.MOD, result=rpc_pb2.Compare.EQUAL,
                                     mod_revision=mod_rev[i])],
            success=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=k, value=value[::-1] + b"u"))],
            failure=[rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=k))]))
        if not r.succeeded:
            raise RuntimeError(f"update {k!r}: mod_revision conflict")
        mod_rev[i] = r.header.revision
        acked[(k, 0)] = time.monotonic()

    async def delete(i):
        k = keys[i]
        r = await kvs[i % conns].Txn(rpc_pb2.TxnRequest(
            compare=[rpc_pb2.Compare(key=k, target=rpc_pb2.Compare.MOD, result=rpc_pb2.Compare.EQUAL,
                                     mod_revision=mod_rev[i])],
            success=[rpc_pb2.RequestOp(request_delete_range=rpc_pb2.DeleteRangeRequest(key=k))],
            failure=[rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=k))]))
        if not r.succeeded:
            raise RuntimeError(f"delete {k!r}: mod_revision conflict")
        acked[(k, 1)] = time.monotonic()

    t = time.monotonic()
    await _bounded(n, concurrency, update)
    out["k8s_update_s"] = time.monotonic() - t
    t = time.monotonic()
    await _bounded(n, concurrency, delete)
    out["k8s_delete_s"] = time.monotonic() - t
    received, missing_prev = await asyncio.get_running_loop().run_in_executor(None, parent.recv)
    watcher.join(10)
    for c in channels:
        await c.close()
    lags = [max(0.0, (t - acked[(k, typ)]) * 1000) for k, typ, t in received if (k, typ) in acked]
    out["k8s_watch_events_missing"] = float(want - len(received))
    out["k8s_watch_missing_prev_kv"] = float(missing_prev)
    out["k8s_watch_lag_p99_ms"] = _pct(lags, 99)
    out["k8s_watch_lag_max_ms"] = max(lags) if lags else float("nan")
    return out


def kubernetes_run(endpoint: str, n: int, tag: str, concurrency: int = 64, conns: int = 8) -> dict[str, float]:
    """The Kubernetes-shaped run against ``endpoint`` (host:port); ``tag`` keeps runs apart.

    Returns phase times (``k8s_create_s``, ``k8s_list_s``, ``k8s_update_s``, ``k8s_delete_s``),
    the watcher's lag (``k8s_watch_lag_p99_ms``, ``k8s_watch_lag_max_ms``: event received minus
    write acknowledged, 0 if earlier) and ``k8s_watch_events_missing`` (must be 0). Raises RuntimeError when a
    create/update/delete txn fails or the list misses objects.
    """
    return asyncio.run(_kubernetes_run(endpoint, n, tag, concurrency, conns))


async def _watch_lag(write_ep: str, watch_ep: str, n: int, rate: float, tag: str) -> dict[str, float]:
    wch, rch = _channel(write_ep), _channel(watch_ep)
    kv, watch = rpc_pb2_grpc.KVStub(wch), rpc_pb2_grpc.WatchStub(rch)
    prefix = f"/bench/watchlag/{tag}/".encode()
    queue: asyncio.Queue = asyncio.Queue()
    await queue.put(rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(
        key=prefix, range_end=_prefix_end(prefix))))

    async def requests():
        while True:
            item = await queue.get()
            if item is None:
                return
            yield item
    call = watch.Watch(requests())
    created = await call.read()
    if not created.created:
        raise RuntimeError("watch was not created")
    sent: dict[bytes, float] = {}
    lags: list[float] = []

    async def consume():
        while True:
            resp = await call.read()
            if resp is grpc.aio.EOF:
                return
            now = time.monotonic()
            for ev in resp.events:
                s = sent.get(ev.kv.key)
                if s is not None:
                    lags.append((now - s) * 1000)
            if len(lags) >= n:
                return
    consumer = asyncio.create_task(consume())
    await kv.Range(rpc_pb2.RangeRequest(key=prefix))  # warm the writer's connection
    for i in range(n):
        k = prefix + b"%06d" % i
        sent[k] = time.monotonic()
        await kv.Put(rpc_pb2.PutRequest(key=k, value=b"x" * 256))
        await asyncio.sleep(1 / rate)
    try:
        await asyncio.wait_for(consumer, timeout=30)
    except asyncio.TimeoutError:
        pass
    await queue.put(None)
    call.cancel()
    await wch.close()
    await rch.close()
    return {"p50": _pct(lags, 50), "p99": _pct(lags, 99), "missing": float(n - len(lags))}


def watch_lag(write_ep: str, watch_ep: str, n: int, rate: float, tag: str) -> dict[str, float]:
    """Put-to-event latency (ms) with puts sent to ``write_ep`` and the watch on ``watch_ep``.

    ``n`` serial puts at about ``rate`` per second. Returns ``p50``, ``p99`` (ms) and ``missing``
    (events not received within 30 s after the last put).
    """
    return asyncio.run(_watch_lag(write_ep, watch_ep, n, rate, tag))
