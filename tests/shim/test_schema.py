"""Schema migrations keep the data: a database at schema version 2 (before keys were indexed
by their head) with keys, history and a lease is migrated by a real shim backend on open,
and then serves the same answers, plus keys longer than a btree entry. Real PostgreSQL.

Forward compatibility during a rolling upgrade: a database migrated by a newer shim (made
here by registering one more migration in this process, as a newer release would ship it)
still starts a real ``k8s-sql shim serve`` process of this tree when the newer schema's
``min_compatible`` is at most this tree's schema version, and is refused with both versions
named when it is higher."""

from __future__ import annotations

import asyncio
import uuid

import psycopg
import pytest

from k8s_sql.shim.storage.base import PutOp, RangeOp
from k8s_sql.shim.storage.postgres import PostgresBackend
from k8s_sql.errors import K8sSqlError
from k8s_sql.shim.etcdpb import rpc_pb2, rpc_pb2_grpc
from k8s_sql.shim.storage import schema
from k8s_sql.shim.storage.schema import MIGRATIONS, MIN_COMPATIBLE, SCHEMA_VERSION
from etcd_server import secure_channel


def test_migration_to_head_indexes_keeps_the_data(shim_db):
    with psycopg.connect(shim_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE schema_version (version int NOT NULL)")
        for version, sql in enumerate(MIGRATIONS[:2], 1):
            conn.execute(sql)
            conn.execute("INSERT INTO schema_version VALUES (%s)", (version,))
        # revisions 2..4: put /a, put /b, put /a again (as the version-2 shim wrote them)
        conn.execute("""
            INSERT INTO log VALUES (2, 0, '/a', 'a1', 2, 1, 0, false, NULL), (3, 0, '/b', 'b1', 3, 1, 0, false, NULL),
                                   (4, 0, '/a', 'a2', 2, 2, 0, false, 2);
            INSERT INTO kv VALUES ('/a', 'a2', 2, 4, 2, 0), ('/b', 'b1', 3, 3, 1, 0);
            UPDATE meta SET revision = 4""")

    async def check():
        backend = PostgresBackend(shim_db, lease_check_interval=3600)
        await backend.open(timeout=30)
        try:
            now = await backend.range(RangeOp(b"/", b"0"))
            assert [(kv.key, kv.value, kv.version, kv.mod_revision) for kv in now.kvs] == [
                (b"/a", b"a2", 2, 4), (b"/b", b"b1", 1, 3)]
            past = await backend.range(RangeOp(b"/a", revision=3))
            assert [(kv.value, kv.mod_revision) for kv in past.kvs] == [(b"a1", 2)]
            again = await backend.put(PutOp(b"/b", b"b2", prev_kv=True))
            assert again.revision == 5 and again.prev_kv.value == b"b1"
            long = b"/long/" + bytes(range(256)) * 16
            await backend.put(PutOp(long, b"L"))
            got = await backend.range(RangeOp(b"/", b"0", keys_only=True))
            assert [kv.key for kv in got.kvs] == [b"/a", b"/b", long]
        finally:
            await backend.close()
    asyncio.run(check())
    with psycopg.connect(shim_db) as conn:
        assert conn.execute("SELECT max(version) FROM schema_version").fetchone()[0] == SCHEMA_VERSION
        # rows of the old shim (no min_compatible column then) are filled in from the declarations
        rows = conn.execute("SELECT version, min_compatible FROM schema_version ORDER BY version").fetchall()
        assert rows == [(v, MIN_COMPATIBLE[v]) for v in range(1, SCHEMA_VERSION + 1)]


#: An additive migration, as a newer release could ship one (a table nobody reads).
EXTRA_MIGRATION = "CREATE TABLE test_newer_release (id int PRIMARY KEY)"


def migrate_as_newer_release(dsn: str, min_compatible: int, monkeypatch) -> int:
    """Migrate ``dsn`` with one more migration registered (declaring ``min_compatible``), as
    the shim of the next schema version would; returns that version. The registration is
    undone before returning: the shim started afterwards is this tree's."""
    newer = SCHEMA_VERSION + 1
    with monkeypatch.context() as m:
        m.setattr(schema, "MIGRATIONS", [*MIGRATIONS, EXTRA_MIGRATION])
        m.setattr(schema, "MIN_COMPATIBLE", {**MIN_COMPATIBLE, newer: min_compatible})
        m.setattr(schema, "SCHEMA_VERSION", newer)
        schema.check_declarations(schema.MIGRATIONS, schema.MIN_COMPATIBLE)

        async def run():
            conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
            try:
                return await schema.migrate(conn)
            finally:
                await conn.close()
        assert asyncio.run(run()) == 0
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT version, min_compatible FROM schema_version ORDER BY version DESC "
                            "LIMIT 1").fetchone() == (newer, min_compatible)
    return newer


def test_a_shim_starts_on_a_newer_schema_it_is_compatible_with(pg, shim_factory, monkeypatch):
    """A control plane whose old shim restarts after another one upgraded the schema with an
    additive migration (min_compatible kept): it starts, warns, serves, and leaves the newer
    schema as it is."""
    dsn = pg.create_database(f"shim_{uuid.uuid4().hex[:10]}")
    newer = migrate_as_newer_release(dsn, MIN_COMPATIBLE[SCHEMA_VERSION], monkeypatch)
    shim = shim_factory(datastore=dsn)
    with secure_channel(shim) as channel:
        kv = rpc_pb2_grpc.KVStub(channel)
        put = kv.Put(rpc_pb2.PutRequest(key=b"/registry/ns/a", value=b"v"), timeout=10)
        got = kv.Range(rpc_pb2.RangeRequest(key=b"/registry/ns/a"), timeout=10)
    assert put.header.revision == 2 and [x.value for x in got.kvs] == [b"v"]
    warning = [ln for ln in shim.log if "WARNING" in ln and "schema" in ln]
    assert warning and f"version {newer}, newer than this shim's {SCHEMA_VERSION}" in warning[0], shim.log
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT max(version) FROM schema_version").fetchone()[0] == newer
        assert conn.execute("SELECT to_regclass('test_newer_release') IS NOT NULL").fetchone()[0]


def test_a_schema_that_needs_a_newer_shim_is_refused(pg, shim_factory, monkeypatch):
    """A migration that raised min_compatible above this shim's version: the shim exits 1
    before serving, naming both versions and what to do; the database is untouched."""
    dsn = pg.create_database(f"shim_{uuid.uuid4().hex[:10]}")
    newer = migrate_as_newer_release(dsn, SCHEMA_VERSION + 1, monkeypatch)
    with pytest.raises(RuntimeError, match="shim did not start") as e:
        shim_factory(datastore=dsn)
    text = str(e.value)
    assert (f"the datastore's shim schema is version {newer}, which needs a shim of schema version {newer} or "
            f"newer; this shim's is {SCHEMA_VERSION}") in " ".join(text.split()), text
    assert "k8s-sql upgrade node" in text and "Traceback" not in text
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT version, min_compatible FROM schema_version ORDER BY version DESC "
                            "LIMIT 1").fetchone() == (newer, newer)


def test_every_migration_declares_min_compatible():
    schema.check_declarations(MIGRATIONS, MIN_COMPATIBLE)
    with pytest.raises(K8sSqlError, match=f"migration {SCHEMA_VERSION + 1} declares min_compatible None"):
        schema.check_declarations([*MIGRATIONS, EXTRA_MIGRATION], MIN_COMPATIBLE)
    last = MIN_COMPATIBLE[SCHEMA_VERSION]
    with pytest.raises(K8sSqlError, match=f"between {last} and {SCHEMA_VERSION + 1}"):  # not below the previous
        schema.check_declarations([*MIGRATIONS, EXTRA_MIGRATION], {**MIN_COMPATIBLE, SCHEMA_VERSION + 1: last - 1})
    with pytest.raises(K8sSqlError, match=f"between {last} and {SCHEMA_VERSION + 1}"):  # not above itself
        schema.check_declarations([*MIGRATIONS, EXTRA_MIGRATION],
                                  {**MIN_COMPATIBLE, SCHEMA_VERSION + 1: SCHEMA_VERSION + 2})
