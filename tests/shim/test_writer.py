"""The group-commit writer isolates a request that fails in a way etcd has no answer for.

Through the etcd API every request the shim knows to refuse is refused before it writes
(test_isolation.py); what is left are failures nobody foresaw: a SQL error of one request or
a bug in its handling. Such requests cannot be sent through gRPC, so here the writer of a
real :class:`PostgresBackend` on a real PostgreSQL gets them directly, as request functions
that first write and then fail (a division by zero in PostgreSQL, a Python KeyError) — the
only stand-ins, for bugs. The innocent requests of their batches must commit, the failing
ones fail alone with InternalError (gRPC UNKNOWN) and leave nothing behind; only a lost
connection fails a whole batch, with UnavailableError (UNAVAILABLE, retry).
"""

from __future__ import annotations

import asyncio

import pytest

from k8s_sql.shim.storage.base import InternalError, PutOp, RangeOp, UnavailableError
from k8s_sql.shim.storage.postgres import PostgresBackend
from k8s_sql.shim.storage.writer import MAX_RERUNS


def run(dsn: str, scenario):
    async def main():
        backend = PostgresBackend(dsn, lease_check_interval=3600)
        await backend.open(timeout=30)
        try:
            return await scenario(backend)
        finally:
            await backend.close()
    return asyncio.run(main())


async def sql_error(a):
    await a.put(PutOp(b"/bad/sql", b"written before the error"))
    await a.conn.execute("SELECT 1 / 0")


async def bug(a):
    await a.put(PutOp(b"/bad/bug", b"written before the bug"))
    return {}["missing"]


async def lost_connection(a):
    await a.conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")


def test_a_failing_request_fails_alone(shim_db):
    async def scenario(backend):
        start = await backend.current_revision()
        for wave in range(5):
            calls = [backend.put(PutOp(b"/ok/%d-%d" % (wave, i), b"v")) for i in range(30)]
            calls.insert(10, backend.writer.submit(sql_error))
            calls.insert(20, backend.writer.submit(bug))
            results = await asyncio.gather(*calls, return_exceptions=True)
            failed = [r for r in results if isinstance(r, BaseException)]
            assert len(failed) == 2 and all(isinstance(e, InternalError) for e in failed), failed
            assert "division by zero" in str(results[10]) and "KeyError" in str(results[20])
        got = await backend.range(RangeOp(b"/", b"0"))
        assert [kv.key for kv in got.kvs] == sorted(b"/ok/%d-%d" % (w, i) for w in range(5) for i in range(30))
        assert got.revision == start + 150  # one revision per innocent put, none for the failed ones
        assert backend.writer.reruns >= 10  # each batch ran again without its failed requests
    run(shim_db, scenario)


@pytest.mark.parametrize("failing", [1, 5])
def test_a_request_failing_in_the_batch_function_fails_alone(shim_db, failing):
    """Puts, deletes and guarded txns go through the batch write function (schema migration
    4), a whole batch in one call. A trigger that raises for keys under /trap/ stands in
    for an SQL failure nobody foresaw. With one such request per batch the batch runs again
    without it; with five it runs with a subtransaction per request (after MAX_RERUNS)."""
    from k8s_sql.shim.storage.base import Compare, DeleteOp, TxnOp

    async def scenario(backend):
        async with backend.pool.connection() as conn:
            await conn.execute("CREATE FUNCTION trap() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                               "IF NEW.key >= '/trap/'::bytea AND NEW.key < '/trap0'::bytea THEN "
                               "RAISE EXCEPTION 'trapped %', convert_from(NEW.key, 'UTF8'); END IF; "
                               "RETURN NEW; END $$")
            await conn.execute("CREATE TRIGGER trap BEFORE INSERT OR UPDATE ON kv FOR EACH ROW "
                               "EXECUTE FUNCTION trap()")
        await backend.put(PutOp(b"/f/doomed", b"v"))
        start = await backend.current_revision()
        calls = [backend.put(PutOp(b"/f/%02d" % i, b"v")) for i in range(20)]
        calls.append(backend.txn(TxnOp([Compare(b"/f/new", b"", 2, 0, 0)], [PutOp(b"/f/new", b"v")], [])))
        calls.append(backend.delete_range(DeleteOp(b"/f/doomed", prev_kv=True)))
        for n in range(failing):
            calls.insert(3 + 3 * n, backend.put(PutOp(b"/trap/%d" % n, b"v")))
        results = await asyncio.gather(*calls, return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        assert len(errors) == failing and all(isinstance(e, InternalError) and "trapped /trap/" in str(e)
                                              for e in errors), errors
        assert results[-2].succeeded and [kv.key for kv in results[-1].prev_kvs] == [b"/f/doomed"]
        got = await backend.range(RangeOp(b"/f/", b"/f0"))
        assert [kv.key for kv in got.kvs] == sorted([b"/f/%02d" % i for i in range(20)] + [b"/f/new"])
        assert got.revision == start + 22  # one revision per innocent request, none for the failed ones
        revisions = sorted(r.revision for r in results if not isinstance(r, BaseException))
        assert revisions == list(range(start + 1, start + 23))  # each its own, in commit order
        assert not (await backend.range(RangeOp(b"/trap/", b"/trap0"))).kvs
        assert backend.writer.reruns == min(failing, MAX_RERUNS)  # then a subtransaction per request
    run(shim_db, scenario)


def test_a_lone_request_failing_in_the_database_fails_alone(shim_db):
    """A batch of one request (a sequential client's) goes to the batch function without its
    exception block (schema migration 5): a failure of the request's own still answers it
    with InternalError naming the error, stores nothing, and the next request goes through.
    The trigger under /trap/ stands in for an SQL failure nobody foresaw."""
    async def scenario(backend):
        async with backend.pool.connection() as conn:
            await conn.execute("CREATE FUNCTION trap() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                               "RAISE EXCEPTION 'trapped %', convert_from(NEW.key, 'UTF8'); END $$")
            await conn.execute("CREATE TRIGGER trap BEFORE INSERT ON kv FOR EACH ROW "
                               "WHEN (NEW.key >= '/trap/'::bytea) EXECUTE FUNCTION trap()")
        start = await backend.current_revision()
        with pytest.raises(InternalError, match="P0001: trapped /trap/1"):
            await backend.put(PutOp(b"/trap/1", b"v"))
        assert await backend.current_revision() == start
        assert not (await backend.range(RangeOp(b"/trap/", b"/trap0"))).kvs
        assert (await backend.put(PutOp(b"/ok/1", b"v"))).revision == start + 1
    run(shim_db, scenario)


def test_only_a_lost_connection_fails_the_whole_batch(shim_db):
    async def scenario(backend):
        start = await backend.current_revision()
        calls = [backend.put(PutOp(b"/gone/%d" % i, b"v")) for i in range(20)]
        calls.insert(5, backend.writer.submit(lost_connection))
        results = await asyncio.gather(*calls, return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        assert isinstance(results[5], UnavailableError) and all(isinstance(e, UnavailableError) for e in errors)
        # the writer goes on with fresh connections; nothing of the failed batch was stored
        after = await backend.put(PutOp(b"/after", b"v"))
        stored = await backend.range(RangeOp(b"/gone/", b"/gone0", count_only=True))
        assert stored.count == len(results) - len(errors)
        assert after.revision == start + stored.count + 1
    run(shim_db, scenario)


@pytest.mark.parametrize("sqlstate, datastore", [("08006", True), ("40001", True), ("53100", True), ("57014", True),
                                                 ("25006", True), ("22012", False), ("54000", False),
                                                 ("23505", False), ("XX000", False)])
def test_which_errors_are_the_datastores(shim_db, sqlstate, datastore):
    """PostgreSQL raises each SQLSTATE for real (RAISE ... USING ERRCODE); the writer calls
    it the datastore's failure only for the connection, resource, shutdown and retry classes."""
    import psycopg

    from k8s_sql.shim.storage.writer import datastore_failed
    with psycopg.connect(shim_db, autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as e:
            conn.execute(f"DO $$ BEGIN RAISE EXCEPTION 'test' USING ERRCODE = '{sqlstate}'; END $$")
        assert e.value.sqlstate == sqlstate
        assert datastore_failed(e.value, conn) is datastore
