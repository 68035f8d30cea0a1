"""Schema migrations keep the data: a database at schema version 2 (before keys were indexed
by their head) with keys, history and a lease is migrated by a real shim backend on open,
and then serves the same answers, plus keys longer than a btree entry. Real PostgreSQL."""

from __future__ import annotations

import asyncio

import psycopg

from k8s_sql.shim.storage.base import PutOp, RangeOp
from k8s_sql.shim.storage.postgres import PostgresBackend
from k8s_sql.shim.storage.schema import MIGRATIONS, SCHEMA_VERSION


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
