"""Prometheus metrics of the shim, served by :mod:`k8s_sql.shim.http` on ``/metrics``.

Naming: where etcd has a metric with the same meaning, the shim uses etcd's name, so
dashboards and alerts written for etcd keep working (``etcd_mvcc_db_total_size_in_bytes``,
``etcd_debugging_mvcc_current_revision``, ``etcd_debugging_mvcc_compact_revision``,
``etcd_debugging_mvcc_watcher_total``, ``grpc_server_handled_total`` /
``grpc_server_handling_seconds`` as go-grpc-prometheus names them). Metrics with no etcd
equivalent start with ``k8s_sql_``.

All objects live in :data:`REGISTRY` (not prometheus-client's global one), so several
shims in one test process do not collide and ``/metrics`` shows only the shim's series.
"""

from __future__ import annotations

import asyncio
import inspect
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

#: gRPC calls finished, by service (``etcdserverpb.KV``), method (``Range``) and status code name (``OK``).
GRPC_HANDLED = Counter(
    "grpc_server_handled_total", "Total number of RPCs completed on the server, regardless of success or failure.",
    ["grpc_type", "grpc_service", "grpc_method", "grpc_code"], registry=REGISTRY)

#: Duration of unary gRPC calls in seconds, by service and method.
GRPC_SECONDS = Histogram(
    "grpc_server_handling_seconds", "Histogram of response latency (seconds) of gRPC handled by the server.",
    ["grpc_type", "grpc_service", "grpc_method"], registry=REGISTRY,
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))

#: Open watchers (one per watch id on a Watch stream).
WATCHERS = Gauge("etcd_debugging_mvcc_watcher_total", "Total number of watchers.", registry=REGISTRY)

#: Open Watch streams (gRPC bidirectional streams).
WATCH_STREAMS = Gauge("etcd_debugging_mvcc_watch_stream_total", "Total number of watch streams.", registry=REGISTRY)

#: The store's current revision (etcd's header.revision).
CURRENT_REVISION = Gauge("etcd_debugging_mvcc_current_revision", "The current revision of store.", registry=REGISTRY)

#: The revision up to which history is compacted.
COMPACT_REVISION = Gauge("etcd_debugging_mvcc_compact_revision", "The revision of the last compaction in store.",
                         registry=REGISTRY)

#: Size of the shim's PostgreSQL database in bytes (``pg_database_size``).
DB_SIZE = Gauge("etcd_mvcc_db_total_size_in_bytes", "Total size of the underlying database physically allocated "
                "in bytes.", registry=REGISTRY)

#: Whether the last PostgreSQL health probe succeeded (1) or not (0).
DATASTORE_UP = Gauge("k8s_sql_datastore_up", "1 if the last PostgreSQL health probe succeeded, else 0.",
                     registry=REGISTRY)

#: Leases currently granted and not expired.
LEASES = Gauge("k8s_sql_leases", "Number of leases granted and not yet expired or revoked.", registry=REGISTRY)


def observe_rpc(service: str, method: str, code: str, seconds: float, kind: str = "unary") -> None:
    """Record one finished gRPC call.

    Args:
        service: full gRPC service name, e.g. ``etcdserverpb.KV``.
        method: method name, e.g. ``Range``.
        code: ``grpc.StatusCode`` name, e.g. ``OK``, ``OUT_OF_RANGE``.
        seconds: wall time of the call in seconds (recorded for unary calls only, as
            go-grpc-prometheus does; a stream's lifetime is not a latency).
        kind: ``unary`` or ``bidi_stream``.
    """
    GRPC_HANDLED.labels(kind, service, method, code).inc()
    if kind == "unary":
        GRPC_SECONDS.labels(kind, service, method).observe(seconds)


async def refresh_from_backend(backend) -> None:
    """Update the revision and size gauges from the backend (etcd API semantics: current
    and compacted revision; size in bytes). Errors leave the gauges as they were, except
    :data:`DATASTORE_UP`, which becomes 0."""
    try:
        CURRENT_REVISION.set(await backend.current_revision())
        COMPACT_REVISION.set(await backend.compact_revision())
        DB_SIZE.set(await backend.db_size_bytes())
    except Exception:
        DATASTORE_UP.set(0)
        return
    DATASTORE_UP.set(1)


def interceptor():
    """A ``grpc.aio.ServerInterceptor`` that records every call with :func:`observe_rpc`
    (pass it in ``grpc.aio.server(interceptors=[...])``). Unary calls get a latency; streams
    are counted when they end. The status code is ``OK``, the code an abort set, or
    ``UNKNOWN`` for an unexpected exception (as gRPC itself reports it).
    """
    import grpc

    def code_of(context, exc: BaseException | None) -> str:
        code = context.code() if hasattr(context, "code") else None
        if code is not None:
            return code.name if isinstance(code, grpc.StatusCode) else str(code)
        if exc is None:
            return "OK"
        if isinstance(exc, asyncio.CancelledError):
            return "CANCELLED"
        return "UNKNOWN"

    def split(method: str) -> tuple[str, str]:
        service, _, name = method.lstrip("/").partition("/")
        return service, name

    def wrap_unary(fn, service, name):
        async def handler(request, context):
            start, exc = time.perf_counter(), None
            try:
                return await fn(request, context)
            except BaseException as e:
                exc = e
                raise
            finally:
                observe_rpc(service, name, code_of(context, exc), time.perf_counter() - start)
        return handler

    def wrap_stream(fn, service, name, kind):
        # grpc.aio stream handlers are either async generators or coroutines using
        # context.write(); keep the same shape, the two APIs must not be mixed.
        if inspect.isasyncgenfunction(fn):
            async def gen_handler(request_or_iterator, context):
                exc = None
                try:
                    async for item in fn(request_or_iterator, context):
                        yield item
                except BaseException as e:
                    exc = e
                    raise
                finally:
                    observe_rpc(service, name, code_of(context, exc), 0.0, kind)
            return gen_handler

        async def handler(request_or_iterator, context):
            exc = None
            try:
                return await fn(request_or_iterator, context)
            except BaseException as e:
                exc = e
                raise
            finally:
                observe_rpc(service, name, code_of(context, exc), 0.0, kind)
        return handler

    class _Interceptor(grpc.aio.ServerInterceptor):
        async def intercept_service(self, continuation, details):
            handler = await continuation(details)
            if handler is None:
                return None
            service, name = split(details.method)
            if handler.unary_unary:
                return grpc.unary_unary_rpc_method_handler(
                    wrap_unary(handler.unary_unary, service, name),
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer)
            if handler.stream_stream:
                return grpc.stream_stream_rpc_method_handler(
                    wrap_stream(handler.stream_stream, service, name, "bidi_stream"),
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer)
            if handler.unary_stream:
                return grpc.unary_stream_rpc_method_handler(
                    wrap_stream(handler.unary_stream, service, name, "server_stream"),
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer)
            return handler  # client streaming: etcd's API has none

    return _Interceptor()
