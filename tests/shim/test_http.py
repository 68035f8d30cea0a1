"""The shim's plain-HTTP endpoint: ``/health``, ``/version``, ``/metrics``, ``/livez``, ``/readyz``.

Two ways in:
- against the running shim (the ``shim`` fixture: a real ``k8s-sql shim serve`` process);
- :func:`k8s_sql.shim.http.serve_http` on its own PostgreSQL (``TempPostgres``), which is
  then stopped to see ``/health`` turn 503 and back. There the backend is a four-method
  adapter (ping, current/compact revision, size) over a real psycopg connection, because
  the test needs a PostgreSQL it may stop without disturbing the session's one.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from dataclasses import dataclass

import psycopg
import pytest

from k8s_sql.shim.http import cluster_version, parse_addr, serve_http
from pgcluster import TempPostgres


def get(url: str) -> tuple[int, str, str]:
    """``(status, content type, body)`` of a GET."""
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read().decode()


async def aget(url: str) -> tuple[int, str, str]:
    return await asyncio.to_thread(get, url)


class SqlBackend:
    """The Backend read API over one PostgreSQL database, with the revisions in a table."""

    def __init__(self, dsn: str):
        self.dsn = dsn

    async def _one(self, sql: str):
        async with await psycopg.AsyncConnection.connect(self.dsn, connect_timeout=2) as conn:
            cur = await conn.execute(sql)
            return (await cur.fetchone())[0]

    async def ping(self) -> None:
        await self._one("SELECT 1")

    async def current_revision(self) -> int:
        return await self._one("SELECT current FROM revs")

    async def compact_revision(self) -> int:
        return await self._one("SELECT compacted FROM revs")

    async def db_size_bytes(self) -> int:
        return await self._one("SELECT pg_database_size(current_database())")


@dataclass
class Settings:
    metrics_addr: str
    emulated_etcd_version: str = "3.5.21"


@pytest.fixture(scope="module")
def own_pg():
    cluster = TempPostgres().init().start()
    yield cluster
    cluster.destroy()


async def test_health_version_metrics_follow_postgres(own_pg):
    dsn = own_pg.create_database("httptest")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE revs (current bigint, compacted bigint)")
        conn.execute("INSERT INTO revs VALUES (1234, 1000)")
    endpoint = await serve_http(Settings("http://127.0.0.1:0"), SqlBackend(dsn))
    base = f"http://127.0.0.1:{endpoint.port}"
    try:
        status, ctype, body = await aget(base + "/health")
        assert (status, ctype, json.loads(body)) == (200, "application/json", {"health": "true", "reason": ""})
        status, _, body = await aget(base + "/version")
        assert status == 200 and json.loads(body) == {"etcdserver": "3.5.21", "etcdcluster": "3.5.0"}
        status, ctype, body = await aget(base + "/metrics")
        assert status == 200 and ctype.startswith("text/plain")
        assert "etcd_debugging_mvcc_current_revision 1234.0" in body
        assert "etcd_debugging_mvcc_compact_revision 1000.0" in body
        size = [float(line.split()[1]) for line in body.splitlines()
                if line.startswith("etcd_mvcc_db_total_size_in_bytes ")]
        assert size and size[0] > 1_000_000  # an empty PostgreSQL database is several MB
        assert (await aget(base + "/livez"))[0::2] == (200, "ok")
        assert (await aget(base + "/readyz"))[0::2] == (200, "ok")
        assert (await aget(base + "/nope"))[0] == 404

        own_pg.stop()
        await asyncio.sleep(1.1)  # past the probe cache
        status, _, body = await aget(base + "/health")
        health = json.loads(body)
        assert status == 503 and health["health"] == "false"
        assert health["reason"].startswith("datastore: ")
        assert (await aget(base + "/readyz"))[0] == 503
        assert (await aget(base + "/livez"))[0] == 200  # the process itself is fine
        assert "k8s_sql_datastore_up 0.0" in (await aget(base + "/metrics"))[2]

        own_pg.start()
        await asyncio.sleep(1.1)
        status, _, body = await aget(base + "/health")
        assert status == 200 and json.loads(body)["health"] == "true"
    finally:
        await endpoint.close()
        if not own_pg.is_running():
            own_pg.start()


def test_addresses_and_cluster_version():
    assert parse_addr("http://127.0.0.1:2381") == ("127.0.0.1", 2381)
    assert parse_addr("127.0.0.1:2381") == ("127.0.0.1", 2381)
    assert parse_addr("[::1]:2381") == ("::1", 2381)
    with pytest.raises(ValueError, match="only http://"):
        parse_addr("https://127.0.0.1:2381")
    with pytest.raises(ValueError, match="needs a host and a port"):
        parse_addr("127.0.0.1")
    assert cluster_version("3.5.21") == "3.5.0"


def shim_metrics_url(shim) -> str:
    url = getattr(shim, "metrics_url", None) or shim.settings.metrics_addr
    return url if "://" in url else "http://" + url


def test_running_shim_serves_etcd_json(shim):
    base = shim_metrics_url(shim).rstrip("/")
    status, _, body = get(base + "/health")
    assert status == 200 and json.loads(body) == {"health": "true", "reason": ""}
    status, _, body = get(base + "/version")
    version = json.loads(body)
    assert status == 200 and version["etcdcluster"] == cluster_version(version["etcdserver"])
    assert version["etcdserver"].startswith("3.")
    status, _, body = get(base + "/metrics")
    assert status == 200
    assert "etcd_debugging_mvcc_current_revision" in body
    assert "etcd_mvcc_db_total_size_in_bytes" in body


async def test_grpc_health_follows_postgres(own_pg):
    """grpc.health.v1 over a real grpc.aio server, set by :func:`grpc_health_loop`."""
    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    from k8s_sql.shim.http import grpc_health_loop

    dsn = own_pg.superuser_dsn()
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    loop_task = asyncio.create_task(grpc_health_loop(SqlBackend(dsn), servicer, interval=0.1))

    async def status_becomes(want) -> bool:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            for _ in range(200):
                try:
                    if (await stub.Check(health_pb2.HealthCheckRequest(service=""))).status == want:
                        return True
                except grpc.aio.AioRpcError:
                    pass  # NOT_FOUND until the first probe
                await asyncio.sleep(0.05)
        return False

    try:
        assert await status_becomes(health_pb2.HealthCheckResponse.SERVING)
        own_pg.stop()
        assert await status_becomes(health_pb2.HealthCheckResponse.NOT_SERVING)
        own_pg.start()
        assert await status_becomes(health_pb2.HealthCheckResponse.SERVING)
    finally:
        loop_task.cancel()
        await server.stop(None)
        if not own_pg.is_running():
            own_pg.start()


async def test_metrics_interceptor_counts_calls_by_code():
    """A real grpc.aio server with the interceptor; calls from a real client."""
    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    from prometheus_client import generate_latest

    from k8s_sql.shim import metrics

    server = grpc.aio.server(interceptors=[metrics.interceptor()])
    servicer = health.aio.HealthServicer()
    await servicer.set("ok", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()

    def count(method: str, code: str) -> float:
        v = metrics.REGISTRY.get_sample_value("grpc_server_handled_total", {
            "grpc_type": "unary", "grpc_service": "grpc.health.v1.Health", "grpc_method": method, "grpc_code": code})
        return v or 0.0

    ok0, nf0 = count("Check", "OK"), count("Check", "NOT_FOUND")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            assert (await stub.Check(health_pb2.HealthCheckRequest(service="ok"))).status == 1
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Check(health_pb2.HealthCheckRequest(service="missing"))
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        await server.stop(None)
    assert count("Check", "OK") == ok0 + 1
    assert count("Check", "NOT_FOUND") == nf0 + 1
    text = generate_latest(metrics.REGISTRY).decode()
    assert 'grpc_server_handling_seconds_count{grpc_method="Check",grpc_service="grpc.health.v1.Health",' \
           'grpc_type="unary"}' in text
