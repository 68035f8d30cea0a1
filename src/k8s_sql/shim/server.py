"""Wiring and lifecycle of ``k8s-sql shim serve``: backend, gRPC services, listeners, loops.

Listeners follow etcd's ``--listen-client-urls``: ``https://IP:PORT`` (TLS; mTLS with
``--client-cert-auth``), ``http://IP:PORT`` (plain, for local tests), ``unix:///path``
(plain) and ``unixs:///path`` (TLS). With ``workers`` > 1, that many processes serve the same
ports (SO_REUSEPORT) against the same database; PostgreSQL coordinates them. The CLI's default
``--workers auto`` is one per CPU the shim may use (``workers.py``: cgroup quota, else CPUs).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys

import grpc
from grpc_health.v1 import health, health_pb2_grpc

from k8s_sql.errors import K8sSqlError
from k8s_sql.shim import metrics
from k8s_sql.shim.api.auth import AuthServicer
from k8s_sql.shim.api.kv import KVServicer
from k8s_sql.shim.api.lease import LeaseServicer
from k8s_sql.shim.api.maintenance import ClusterServicer, MaintenanceServicer
from k8s_sql.shim.api.watch import WatchServicer
from k8s_sql.shim.etcdpb import rpc_pb2_grpc
from k8s_sql.shim.safety import read_file
from k8s_sql.shim.settings import GRPC_OVERHEAD_BYTES, ShimSettings
from k8s_sql.shim.storage.base import CompactedError, UnavailableError
from k8s_sql.shim.storage.postgres import PostgresBackend

log = logging.getLogger("k8s_sql.shim")

#: etcd's gRPC send limit (math.MaxInt32). Its receive limit is --max-request-bytes plus
#: GRPC_OVERHEAD_BYTES; the size check itself is etcd's, on the request (api/validation.py).
MAX_SEND_BYTES = 2**31 - 1
_WORKER_ENV = "K8S_SQL_SHIM_WORKER_SETTINGS"


def server_credentials(s: ShimSettings) -> grpc.ServerCredentials:
    """TLS credentials from the settings' cert/key (and CA for client certificates)."""
    key, cert = read_file(s.key_file, "--key-file"), read_file(s.cert_file, "--cert-file")
    ca = read_file(s.trusted_ca_file, "--trusted-ca-file") if s.trusted_ca_file else None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=s.client_cert_auth)


def bind(server, s: ShimSettings) -> list[str]:
    """Add a port to ``server`` for each client URL. Returns the gRPC addresses bound.

    Raises K8sSqlError when an address cannot be bound (in use, not local).
    """
    bound = []
    for url in s.listen_client_urls:
        scheme, _, rest = url.partition("://")
        addr = f"unix:{rest}" if scheme in ("unix", "unixs") else rest
        try:
            if scheme in ("https", "unixs"):
                port = server.add_secure_port(addr, server_credentials(s))
            else:
                port = server.add_insecure_port(addr)
        except RuntimeError:
            port = 0
        if port == 0:
            raise K8sSqlError(f"cannot listen on {url}", where="--listen-client-urls",
                              hint="the port is in use or the address is not on this host")
        bound.append(addr)
    return bound


class Shim:
    """A running shim: ``await Shim(settings).start()``, then ``await shim.stop()``."""

    def __init__(self, settings: ShimSettings, reuse_port: bool = False):
        self.settings = settings
        self.reuse_port = reuse_port
        self.backend = PostgresBackend(settings.datastore)
        self.server = None
        self.http = None
        self.tasks: list[asyncio.Task] = []

    async def start(self) -> "Shim":
        """Open the datastore (migrating its schema), then listen.

        Raises UnavailableError (PostgreSQL unreachable) or K8sSqlError (listeners).
        """
        s = self.settings
        await self.backend.open(timeout=s.datastore_timeout)
        options = [("grpc.max_send_message_length", MAX_SEND_BYTES),
                   ("grpc.max_receive_message_length", s.max_request_bytes + GRPC_OVERHEAD_BYTES),
                   ("grpc.so_reuseport", 1 if self.reuse_port else 0),
                   ("grpc.keepalive_permit_without_calls", 1),
                   ("grpc.http2.min_ping_interval_without_data_ms", 5000)]
        self.server = grpc.aio.server(interceptors=[metrics.interceptor()], options=options)
        rpc_pb2_grpc.add_KVServicer_to_server(KVServicer(self.backend, s), self.server)
        rpc_pb2_grpc.add_WatchServicer_to_server(WatchServicer(self.backend, s), self.server)
        rpc_pb2_grpc.add_LeaseServicer_to_server(LeaseServicer(self.backend, s), self.server)
        rpc_pb2_grpc.add_MaintenanceServicer_to_server(MaintenanceServicer(self.backend, s), self.server)
        rpc_pb2_grpc.add_ClusterServicer_to_server(ClusterServicer(self.backend, s), self.server)
        rpc_pb2_grpc.add_AuthServicer_to_server(AuthServicer(self.backend, s), self.server)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, self.server)
        bind(self.server, s)
        await self.server.start()
        loop = asyncio.get_running_loop()
        from k8s_sql.shim.http import grpc_health_loop, serve_http
        self.tasks.append(loop.create_task(grpc_health_loop(self.backend, health_servicer)))
        self.tasks.append(loop.create_task(self._metrics_loop()))
        if s.compaction_interval > 0:
            self.tasks.append(loop.create_task(self._compaction_loop(s.compaction_interval)))
        if s.metrics_addr:
            self.http = await serve_http(s, self.backend)
        return self

    async def stop(self, grace: float = 2.0) -> None:
        """Stop listening (letting calls finish for ``grace`` seconds) and close the datastore."""
        for t in self.tasks:
            t.cancel()
        if self.http:
            await self.http.close()
        if self.server:
            await self.server.stop(grace)
        await self.backend.close()

    async def _metrics_loop(self) -> None:
        while True:
            await metrics.refresh_from_backend(self.backend)
            await asyncio.sleep(5)

    async def _compaction_loop(self, interval: float) -> None:
        """etcd's periodic auto-compaction: keep at least ``interval`` seconds of history by
        compacting to the revision seen one interval ago."""
        previous = None
        while True:
            await asyncio.sleep(interval)
            try:
                if previous is not None:
                    await self.backend.compact(previous)
                    log.info("compacted to revision %d", previous)
                previous = await self.backend.current_revision()
            except CompactedError:
                previous = await self.backend.current_revision()  # another shim compacted further
            except Exception as e:
                log.warning("auto-compaction failed: %s", e)


async def _serve(settings: ShimSettings, reuse_port: bool) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    shim = Shim(settings, reuse_port)
    try:
        await shim.start()
    except UnavailableError as e:
        await shim.stop(0)
        raise K8sSqlError(f"cannot reach PostgreSQL: {e}", where="--datastore",
                          hint="check the URI (host, sslmode=verify-full, sslrootcert, sslcert, sslkey) or the PG* "
                               "environment, and that the server is up") from e
    except BaseException:
        await shim.stop(0)
        raise
    log.info("serving the etcd v3 API on %s (datastore revision %d)", ", ".join(settings.listen_client_urls),
             shim.backend.watch_revision())
    print(f"k8s-sql shim ready: {', '.join(settings.listen_client_urls)}", file=sys.stderr, flush=True)
    await stop.wait()
    log.info("shutting down")
    await shim.stop()


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop when it is installed, else asyncio's default one.

    The shim is CPU-bound in gRPC's and psycopg's per-request event-loop work; uvloop serves
    about 20% more requests per CPU second (bench/PROFILE.md).
    """
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run(settings: ShimSettings) -> None:
    """Run the shim until SIGTERM/SIGINT; with ``settings.workers`` > 1, also start that many
    minus one worker processes on the same ports (only this process serves metrics).

    Raises K8sSqlError for settings that cannot work or an unreachable datastore.
    """
    settings.validate()
    children = []
    if settings.workers > 1:
        worker = dataclasses.replace(settings, workers=1, metrics_addr="")
        env = dict(os.environ, **{_WORKER_ENV: json.dumps(dataclasses.asdict(worker)),
                                  _WORKER_ENV + "_PARENT": str(os.getpid())})
        for _ in range(settings.workers - 1):
            children.append(subprocess.Popen([sys.executable, "-m", "k8s_sql.shim.server"], env=env))
    try:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            runner.run(_serve(settings, reuse_port=settings.workers > 1))
    finally:
        for c in children:
            c.terminate()
        for c in children:
            try:
                c.wait(10)
            except subprocess.TimeoutExpired:
                c.kill()


def _die_with_parent(parent: int) -> None:
    """SIGTERM this worker when the process that started it dies, even by SIGKILL (Linux
    PR_SET_PDEATHSIG), so no orphan keeps serving the port."""
    import ctypes
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before prctl
        sys.exit(0)


def _worker_main() -> None:
    _die_with_parent(int(os.environ.pop(_WORKER_ENV + "_PARENT", "0")))
    settings = ShimSettings(**json.loads(os.environ.pop(_WORKER_ENV)))
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s shim-worker %(levelname)s %(message)s")
    try:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            runner.run(_serve(settings, reuse_port=True))
    except K8sSqlError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    _worker_main()
