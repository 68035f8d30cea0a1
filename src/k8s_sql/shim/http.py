"""The shim's plain-HTTP endpoint: ``/health``, ``/version``, ``/metrics``, ``/livez``, ``/readyz``.

It plays the role of etcd's ``--listen-metrics-urls`` listener (kubeadm's etcd pods probe
``http://127.0.0.1:2381/health`` there) and listens on ``settings.metrics_addr``
(``http://127.0.0.1:2381`` or ``127.0.0.1:2381``), loopback by default, without TLS:

- ``GET /health`` — etcd's JSON, ``{"health":"true","reason":""}`` with 200 when a
  PostgreSQL round trip succeeds within :data:`HEALTH_TIMEOUT` seconds, else 503 and
  ``{"health":"false","reason":"..."}`` (the reason names the failure, not secrets).
- ``GET /version`` — ``{"etcdserver":"3.5.16","etcdcluster":"3.5.0"}``: the emulated etcd
  version (``settings.emulated_etcd_version``) and its ``major.minor.0`` cluster version.
- ``GET /metrics`` — Prometheus text exposition of :data:`k8s_sql.shim.metrics.REGISTRY`.
- ``GET /livez`` — ``ok`` while the event loop answers (the process is not wedged);
  ``/readyz`` — ``ok`` / 503 with the same PostgreSQL probe as ``/health``.

Why a separate port and not etcd's trick of serving HTTP/1.1 on the gRPC client port:
etcd multiplexes both protocols on one listener (cmux, Go's net/http). ``grpc.aio`` runs
on gRPC's C core, which owns its listening socket and speaks only HTTP/2, so an HTTP/1.1
``GET /version`` to the client port (as kubeadm's ExternalEtcdVersion preflight check
sends, with client certificates) fails at the protocol level. Serving it there would mean
putting a TLS-terminating proxy in front of gRPC, one more hop on every request. So
``/version`` is served here; where kubeadm still runs that check, it has to be skipped
with ``--ignore-preflight-errors=ExternalEtcdVersion``.

The server is a minimal HTTP/1.1 responder on :func:`asyncio.start_server` (no new
dependency; one request per connection, GET/HEAD only), sharing the shim's event loop so
the health probe uses the same backend and connection pool as the gRPC services.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from k8s_sql.shim import metrics

#: Seconds a health probe waits for PostgreSQL before answering 503.
HEALTH_TIMEOUT = 3.0
#: A probe result is reused for this many seconds, so a scrape storm does not hit PostgreSQL.
HEALTH_CACHE = 1.0
_MAX_REQUEST = 8192  # bytes of request line + headers we read


def parse_addr(addr: str) -> tuple[str, int]:
    """``http://127.0.0.1:2381`` or ``127.0.0.1:2381`` or ``[::1]:2381`` -> ``(host, port)``.

    Raises:
        ValueError: no port, or a scheme other than http (this listener has no TLS).
    """
    text = addr if "://" in addr else "http://" + addr
    parts = urlsplit(text)
    if parts.scheme != "http":
        raise ValueError(f"metrics address {addr!r}: only http:// is served (plain HTTP on loopback)")
    if parts.port is None or not parts.hostname:
        raise ValueError(f"metrics address {addr!r} needs a host and a port, e.g. http://127.0.0.1:2381")
    return parts.hostname, parts.port


def cluster_version(server_version: str) -> str:
    """etcd's cluster version for a server version: ``3.5.16`` -> ``3.5.0``."""
    major, minor = server_version.split(".")[:2]
    return f"{major}.{minor}.0"


@dataclass
class _Probe:
    ok: bool
    reason: str
    at: float


class HttpEndpoint:
    """The running listener returned by :func:`serve_http`: ``.host``, ``.port`` (the
    bound port, useful with port 0) and ``await .close()``."""

    def __init__(self, settings, backend):
        self.settings = settings
        self.backend = backend
        self.host = ""
        self.port = 0
        self._server: asyncio.base_events.Server | None = None
        self._probe: _Probe | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> "HttpEndpoint":
        host, port = parse_addr(self.settings.metrics_addr)
        self._server = await asyncio.start_server(self._handle, host, port, limit=_MAX_REQUEST)
        self.host, self.port = self._server.sockets[0].getsockname()[:2]
        return self

    async def close(self) -> None:
        """Stop listening and wait for the open connections' handlers to finish."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def probe(self) -> tuple[bool, str]:
        """``(ok, reason)`` of a PostgreSQL round trip (``backend.ping()``), cached
        :data:`HEALTH_CACHE` seconds; updates the ``k8s_sql_datastore_up`` gauge."""
        async with self._lock:
            now = time.monotonic()
            if self._probe and now - self._probe.at < HEALTH_CACHE:
                return self._probe.ok, self._probe.reason
            try:
                async with asyncio.timeout(HEALTH_TIMEOUT):  # not wait_for: it can swallow a cancel on 3.11
                    await self.backend.ping()
                ok, reason = True, ""
            except asyncio.TimeoutError:
                ok, reason = False, f"datastore: no answer from PostgreSQL within {HEALTH_TIMEOUT:g}s"
            except Exception as exc:  # any failure means "not healthy"; say which
                ok, reason = False, f"datastore: {type(exc).__name__}: {_first_line(exc)}"
            metrics.DATASTORE_UP.set(1 if ok else 0)
            self._probe = _Probe(ok, reason, time.monotonic())
            return ok, reason

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                async with asyncio.timeout(10):
                    head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, ConnectionError):
                return
            line = head.split(b"\r\n", 1)[0].decode("latin-1")
            parts = line.split()
            if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
                await self._send(writer, 400, "text/plain", b"bad request\n")
                return
            method, target = parts[0], parts[1]
            path = urlsplit(target).path
            if method not in ("GET", "HEAD"):
                await self._send(writer, 405, "text/plain", b"method not allowed\n", head_only=False,
                                 extra=[("Allow", "GET, HEAD")])
                return
            status, ctype, body = await self._route(path)
            await self._send(writer, status, ctype, body, head_only=method == "HEAD")
        except Exception:
            # A broken client connection must never take the shim down.
            pass
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except Exception:
                pass

    async def _route(self, path: str) -> tuple[int, str, bytes]:
        if path == "/health":
            ok, reason = await self.probe()
            body = json.dumps({"health": "true" if ok else "false", "reason": reason}).encode()
            return (200 if ok else 503), "application/json", body
        if path == "/version":
            v = self.settings.emulated_etcd_version
            return 200, "application/json", json.dumps({"etcdserver": v, "etcdcluster": cluster_version(v)}).encode()
        if path == "/metrics":
            await metrics.refresh_from_backend(self.backend)
            return 200, CONTENT_TYPE_LATEST, generate_latest(metrics.REGISTRY)
        if path == "/livez":
            return 200, "text/plain; charset=utf-8", b"ok"
        if path == "/readyz":
            ok, reason = await self.probe()
            return (200, "text/plain; charset=utf-8", b"ok") if ok else (503, "text/plain; charset=utf-8",
                                                                       f"not ready: {reason}".encode())
        return 404, "text/plain", b"404 page not found\n"

    @staticmethod
    async def _send(writer, status: int, ctype: str, body: bytes, head_only: bool = False, extra=()) -> None:
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
                  503: "Service Unavailable"}[status]
        headers = [f"HTTP/1.1 {status} {reason}", f"Content-Type: {ctype}", f"Content-Length: {len(body)}",
                   "Connection: close", *(f"{k}: {v}" for k, v in extra)]
        writer.write(("\r\n".join(headers) + "\r\n\r\n").encode("latin-1") + (b"" if head_only else body))
        await writer.drain()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else "unknown error"


async def serve_http(settings, backend) -> HttpEndpoint:
    """Start the HTTP endpoint on ``settings.metrics_addr`` in the running event loop.

    Args:
        settings: a :class:`k8s_sql.shim.settings.ShimSettings` (uses ``metrics_addr``,
            ``emulated_etcd_version``).
        backend: the storage backend (uses ``ping()``, ``current_revision()``,
            ``compact_revision()``, ``db_size_bytes()``).

    Returns:
        the :class:`HttpEndpoint`; ``await endpoint.close()`` stops it.

    Raises:
        ValueError: ``metrics_addr`` is malformed. OSError: the port is taken.
    """
    return await HttpEndpoint(settings, backend).start()


async def grpc_health_loop(backend, health_servicer, interval: float = 5.0, service: str = "") -> None:
    """Keep the gRPC health service (``grpc.health.v1``) in step with PostgreSQL: every
    ``interval`` seconds ``backend.ping()`` sets ``service`` ("" = the whole server) to
    SERVING or NOT_SERVING. Runs until cancelled.

    ``health_servicer`` is a ``grpc_health.v1.health.aio.HealthServicer``.
    """
    from grpc_health.v1 import health_pb2

    while True:
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT):  # not wait_for: it can swallow a cancel on 3.11
                await backend.ping()
            status = health_pb2.HealthCheckResponse.SERVING
        except asyncio.CancelledError:
            raise
        except Exception:
            status = health_pb2.HealthCheckResponse.NOT_SERVING
        await health_servicer.set(service, status)
        await asyncio.sleep(interval)
