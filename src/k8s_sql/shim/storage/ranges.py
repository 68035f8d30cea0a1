"""etcd API v3 KV.Range, the one implementation (the backend's reads and the ranges inside
a txn): one prepared statement (:func:`.queries.range_with_meta`), then etcd's
post-processing (:func:`.mvcc.finish_range`)."""

from __future__ import annotations

from k8s_sql.shim.storage import mvcc, queries
from k8s_sql.shim.storage.base import RangeOp, RangeResult


async def read_range(conn, op: RangeOp, now: int | None = None) -> tuple[int, int, RangeResult]:
    """Run ``op`` on ``conn`` (psycopg AsyncConnection). Returns (store revision, compact
    revision) as ``meta`` says in the statement's snapshot, and the result with that
    revision in its header. Revision checks (CompactedError, FutureRevisionError) are the
    caller's.

    ``now``: the revision the caller's state is at, when it differs from ``meta`` (inside
    the writer's transaction, where ``kv`` already holds the batch's and the request's own
    changes): reads at ``op.revision`` below it go through the log. None = meta's revision.
    """
    historical = op.revision > 0
    sql_limit = mvcc.sql_limit(op)
    sql = queries.range_with_meta(op.range_end, historical, mvcc.skip_values(op), sql_limit,
                                  op.count_only or sql_limit > 0, rows=not op.count_only)
    params = {"key": op.key, "end": op.range_end, "rev": op.revision, "now": now}
    rows = await (await conn.execute(sql, params, prepare=True)).fetchall()
    revision, compact, count = rows[0][0], rows[0][1], rows[0][2]
    if op.count_only:
        return revision, compact, RangeResult(revision, [], False, count)
    kvs = [queries.kv_from_row(r, 3) for r in rows if r[3] is not None]
    if count is None:
        count = len(kvs)
    kvs, more = mvcc.finish_range(op, kvs)
    return revision, compact, RangeResult(revision, kvs, more, count)
