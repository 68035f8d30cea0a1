"""Every query the shim's API issues is served by an index on a log of 100,000 rows.

The tables are filled with 50,000 keys (two versions each, Kubernetes-like names) and 200
keys of 3,000 bytes (longer than the indexed head of 1,024 bytes) in a fresh database of the
session PostgreSQL, ANALYZEd, and each statement is EXPLAINed with realistic values: no
sequential scan of ``log`` or ``kv`` anywhere (the way Kine's LIKE prefix queries degrade on
big tables). The statements are the production ones, imported from ``storage/queries.py``."""

from __future__ import annotations

import json

import psycopg
import pytest

from k8s_sql.shim.storage import queries
from k8s_sql.shim.storage.schema import migrate

KEYS = 50_000
LONG_KEYS = 200
#: 3,000 bytes that do not compress (so the keys really are longer than a btree entry may be).
LONG = bytes((i * 7919 + i // 256) % 256 for i in range(3000))
LONG_SQL = "'\\x" + LONG.hex() + "'::bytea"


@pytest.fixture(scope="module")
def big_db(pg):
    dsn = pg.create_database("shim_explain")

    import asyncio

    async def setup():
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await migrate(conn)
    asyncio.run(setup())
    with psycopg.connect(dsn, autocommit=True) as conn:
        # revision 2..50001: creates; 50002..100001: updates (keys in namespaces of 100)
        conn.execute(f"""
            INSERT INTO log (revision, sub, key, value, create_revision, version, lease, deleted, prev_revision)
            SELECT i + 1, 0, convert_to('/registry/pods/ns-' || (i % 500) || '/pod-' || i, 'UTF8'),
                   convert_to(repeat('x', 200), 'UTF8'), i + 1, 1, 0, false, NULL
            FROM generate_series(1, {KEYS}) i""")
        conn.execute(f"""
            INSERT INTO log (revision, sub, key, value, create_revision, version, lease, deleted, prev_revision)
            SELECT {KEYS} + i + 1, 0, convert_to('/registry/pods/ns-' || (i % 500) || '/pod-' || i, 'UTF8'),
                   convert_to(repeat('y', 200), 'UTF8'), i + 1, 2, CASE WHEN i % 10 = 0 THEN i ELSE 0 END, false, i + 1
            FROM generate_series(1, {KEYS}) i""")
        conn.execute(f"""
            INSERT INTO log (revision, sub, key, value, create_revision, version, lease, deleted, prev_revision)
            SELECT 2 * {KEYS} + i + 1, 0, convert_to('/registry/long/', 'UTF8') || {LONG_SQL} || int4send(i),
                   convert_to('v', 'UTF8'), 2 * {KEYS} + i + 1, 1, 0, false, NULL
            FROM generate_series(1, {LONG_KEYS}) i""")
        conn.execute("INSERT INTO kv SELECT DISTINCT ON (key) key, value, create_revision, revision, version, lease "
                     "FROM log ORDER BY key, revision DESC")
        conn.execute(f"UPDATE meta SET revision = {2 * KEYS + LONG_KEYS + 1}")
        conn.execute("INSERT INTO lease SELECT i, 60, now() + interval '60 s' FROM generate_series(1, 1000) i")
        conn.execute("ANALYZE")
    return dsn


def plan(dsn: str, sql: str, params: dict) -> list[str]:
    """Node types and relations of the plan, e.g. ['Index Scan on log', ...]."""
    with psycopg.connect(dsn) as conn:
        cur = psycopg.ClientCursor(conn)
        cur.execute("EXPLAIN (FORMAT JSON) " + sql, params)
        tree = cur.fetchone()[0]
        if isinstance(tree, str):
            tree = json.loads(tree)
        conn.rollback()
    nodes = []

    def walk(n):
        nodes.append(f"{n['Node Type']} on {n.get('Relation Name', '-')}")
        for c in n.get("Plans", []):
            walk(c)
    walk(tree[0]["Plan"])
    return nodes


NS = b"/registry/pods/ns-7/"
LONG_NS = b"/registry/long/"
P = {"key": NS, "end": NS[:-1] + b"0", "rev": KEYS + 10, "after": KEYS * 2 - 50, "after_sub": 2**31 - 1,
     "upto": 2**62, "now": None, "lease": 40, "id": 40, "value": b"v", "iv": False, "il": False, "sub": 0}

STATEMENTS = {
    "range one key": (queries.range_with_meta(b"", False, False, 0, False, True), dict(P, key=NS + b"pod-7")),
    "range prefix, limit, count": (queries.range_with_meta(NS[:-1] + b"0", False, False, 501, True, True), P),
    "range from key": (queries.range_with_meta(b"\0", False, True, 501, False, True), P),
    "count prefix": (queries.range_with_meta(NS[:-1] + b"0", False, False, 0, True, False), P),
    "range prefix at a revision": (queries.range_with_meta(NS[:-1] + b"0", True, False, 501, True, True), P),
    "range one key at a revision": (queries.range_with_meta(b"", True, False, 0, False, True),
                                    dict(P, key=NS + b"pod-7")),
    "watch hub tail": (queries.events_after(None, True, 1000), P),
    "watch catch-up of a prefix": (queries.events_after(NS[:-1] + b"0", True, 1000), dict(P, after=KEYS)),
    "txn compare read": (queries.current_rows(b"", False, 0), dict(P, key=NS + b"pod-7")),
    "put": (queries.PUT, dict(P, key=NS + b"pod-7", rev=2 * KEYS + 2)),
    "delete prefix": (queries.delete_rows(queries.key_predicate(NS[:-1] + b"0"), True), dict(P, rev=2 * KEYS + 2)),
    "delete a lease's keys": (queries.delete_rows(queries.LEASE_KEYS, False), dict(P, rev=2 * KEYS + 2)),
    "lease lookup": (queries.LEASE_EXISTS, P),
    "expired leases": (queries.EXPIRED_LEASES, P),
    "a lease's keys": (queries.LEASE_TIME_TO_LIVE, dict(P, keys=True)),
    "expired lease revoke": (queries.REVOKE_EXPIRED, P),
    "range one long key": (queries.range_with_meta(b"", False, False, 0, False, True),
                           dict(P, key=LONG_NS + LONG + (7).to_bytes(4, "big"))),
    "range between long keys": (queries.range_with_meta(b"x", False, False, 501, True, True),
                                dict(P, key=LONG_NS + LONG + (7).to_bytes(4, "big"),
                                     end=LONG_NS + LONG + (30).to_bytes(4, "big"))),
    "range of long keys at a revision": (queries.range_with_meta(b"x", True, False, 501, True, True),
                                         dict(P, key=LONG_NS + LONG, end=LONG_NS + LONG + b"\xff", rev=2 * KEYS + 50)),
    "put of a long key": (queries.PUT, dict(P, key=LONG_NS + LONG + (7).to_bytes(4, "big"), rev=2 * KEYS + 300)),
    "compaction": (queries.COMPACT_SUPERSEDED, dict(P, rev=KEYS + 1000, **{"from": KEYS})),
    "compaction's tombstones": (queries.COMPACT_TOMBSTONES, dict(P, rev=KEYS + 1000, **{"from": KEYS})),
}


@pytest.mark.parametrize("name", list(STATEMENTS))
def test_no_sequential_scan(big_db, name):
    sql, params = STATEMENTS[name]
    nodes = plan(big_db, sql, params)
    seq = [n for n in nodes if n.startswith("Seq Scan on") and not n.endswith(" meta")]
    assert not seq, f"{name}: {nodes}"
    assert any("Index" in n for n in nodes), f"{name}: no index used: {nodes}"


def test_batch_function_uses_indexes(big_db):
    """The statements inside the batch write function (schema migration 4) — a put, a
    guarded update, a one-key delete, a prefix delete — are planned on the same tables; the
    plans come from PostgreSQL's auto_explain (nested statements, sent to the client as LOG
    notices), in a transaction that is rolled back."""
    from k8s_sql.shim.storage.base import Compare, DeleteOp, PutOp, RangeOp, TxnOp
    from k8s_sql.shim.storage.batch import arrays, encode

    key = NS + b"pod-7"
    batch = [encode(PutOp(key, b"v")), encode(PutOp(LONG_NS + LONG + (7).to_bytes(4, "big"), b"v")),
             encode(TxnOp([Compare(key, b"", 2, 0, 0)], [PutOp(key, b"w")], [RangeOp(key)])),
             encode(DeleteOp(key)), encode(DeleteOp(NS, NS[:-1] + b"0", prev_kv=True)),
             encode(DeleteOp(b"/registry/pods/ns-99/", b"\0")),
             encode(DeleteOp(LONG_NS + LONG + (7).to_bytes(4, "big"), LONG_NS + LONG + (30).to_bytes(4, "big")))]
    plans: list[dict] = []
    with psycopg.connect(big_db) as conn:
        conn.add_notice_handler(lambda d: plans.append(json.loads(d.message_primary[d.message_primary.index("{"):]))
                                if d.message_primary and "Plan" in d.message_primary else None)
        conn.execute("LOAD 'auto_explain'")
        for setting in ("log_min_duration = 0", "log_nested_statements = on", "log_format = json"):
            conn.execute(f"SET auto_explain.{setting}")
        conn.execute("SET client_min_messages = log")
        rows = conn.execute(queries.WRITE_BATCH, arrays(batch, False)).fetchall()
        conn.rollback()
    assert rows[-1][0] == 0 and all(r[1] == 0 for r in rows if r[1] is not None), rows
    nodes = []

    def walk(n):
        nodes.append(f"{n['Node Type']} on {n.get('Relation Name', '-')}")
        for c in n.get("Plans", []):
            walk(c)
    for p in plans:
        walk(p["Plan"])
    assert any(n.endswith(" on kv") for n in nodes) and any(n.endswith(" on log") for n in nodes), nodes
    seq = [n for n in nodes if n.startswith("Seq Scan on") and not n.endswith(" meta")]
    assert not seq, nodes
