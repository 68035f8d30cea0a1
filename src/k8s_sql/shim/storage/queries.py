"""SQL text for reads of the ``kv`` and ``log`` tables (see :mod:`.schema`).

Every key range of the etcd API becomes one of three predicates, all index range scans on
bytea (never ``LIKE``): one key, every key >= key (range_end b"\\0"), or [key, range_end).
"""

from __future__ import annotations

from k8s_sql.shim.storage.base import FROM_KEY, KeyValue

KV_COLUMNS = "key, value, create_revision, mod_revision, version, lease"


def key_predicate(range_end: bytes, column: str = "key") -> str:
    """SQL condition on ``column`` for etcd's (key, range_end) using params %(key)s/%(end)s."""
    if not range_end:
        return f"{column} = %(key)s"
    if range_end == FROM_KEY:
        return f"{column} >= %(key)s"
    return f"{column} >= %(key)s AND {column} < %(end)s"


def current_rows(range_end: bytes, keys_only: bool, limit: int) -> str:
    """Live keys in the range from ``kv``, ordered by key (etcd API v3 KV.Range at the current revision)."""
    value = "''::bytea AS value" if keys_only else "value"
    lim = f" LIMIT {int(limit)}" if limit > 0 else ""
    return (f"SELECT key, {value}, create_revision, mod_revision, version, lease FROM kv "
            f"WHERE {key_predicate(range_end)} ORDER BY key{lim}")


def historical_rows(range_end: bytes, keys_only: bool, limit: int) -> str:
    """Keys live at revision %(rev)s, from ``log``: each key's latest version <= rev unless deleted."""
    value = "''::bytea AS value" if keys_only else "value"
    lim = f" LIMIT {int(limit)}" if limit > 0 else ""
    return (f"SELECT key, {value}, create_revision, mod_revision, version, lease FROM ("
            f"SELECT DISTINCT ON (key) key, value, create_revision, revision AS mod_revision, version, lease, deleted "
            f"FROM log WHERE {key_predicate(range_end)} AND revision <= %(rev)s ORDER BY key, revision DESC, sub DESC"
            f") h WHERE NOT deleted ORDER BY key{lim}")


def count_rows(range_end: bytes, historical: bool) -> str:
    """Number of live keys in the range (etcd RangeResponse.count)."""
    if not historical:
        return f"SELECT count(*) FROM kv WHERE {key_predicate(range_end)}"
    return (f"SELECT count(*) FROM (SELECT DISTINCT ON (key) deleted FROM log WHERE {key_predicate(range_end)} "
            f"AND revision <= %(rev)s ORDER BY key, revision DESC, sub DESC) h WHERE NOT deleted")


def range_with_meta(range_end: bytes, historical: bool, keys_only: bool, limit: int, count: bool,
                    rows: bool) -> str:
    """One statement (so one snapshot) returning meta's revision and compact_revision, the
    total count (or NULL), and the rows: ``revision, compact_revision, count, <KV_COLUMNS>``.
    Without rows, a single row with NULL kv columns comes back."""
    if not historical:
        count_sql = f"({count_rows(range_end, False)})" if count else "NULL::bigint"
        inner = current_rows(range_end, keys_only, limit) if rows else ""
    else:
        # a read at the current revision (kube-apiserver's later list pages) is answered from
        # kv; only older revisions go through the log. Each branch runs only when chosen.
        count_sql = (f"CASE WHEN %(rev)s >= m.revision THEN ({count_rows(range_end, False)}) "
                     f"ELSE ({count_rows(range_end, True)}) END") if count else "NULL::bigint"
        cur = current_rows(range_end, keys_only, limit).replace(" ORDER BY", " AND %(rev)s >= m.revision ORDER BY", 1)
        old = historical_rows(range_end, keys_only, limit).replace(" ORDER BY key, revision DESC",
                                                                  " AND %(rev)s < m.revision ORDER BY key, revision DESC", 1)
        inner = f"({cur}) UNION ALL ({old})"
    if not rows:
        return f"SELECT m.revision, m.compact_revision, {count_sql} FROM meta m"
    return (f"SELECT m.revision, m.compact_revision, {count_sql}, r.key, r.value, r.create_revision, "
            f"r.mod_revision, r.version, r.lease FROM meta m LEFT JOIN LATERAL ({inner}) r ON true")


#: Events after %(after)s (revision, sub order) with the previous version of each key:
#: revision, sub, deleted, key, value, create_revision, version, lease,
#: then prev: value, create_revision, mod_revision, version, lease (NULL when none).
EVENT_COLUMNS = ("l.revision, l.sub, l.deleted, l.key, l.value, l.create_revision, l.version, l.lease, "
                 "p.value, p.create_revision, p.revision, p.version, p.lease")


def events_after(range_end: bytes | None, with_prev: bool, limit: int) -> str:
    """Log rows with (revision, sub) > (%(after)s, %(after_sub)s) and revision <= %(upto)s, optionally
    restricted to a key range (``range_end`` None = all keys), joined with meta's
    compact_revision and revision so a reader sees the compaction in the same snapshot."""
    where = "(l.revision, l.sub) > (%(after)s, %(after_sub)s) AND l.revision <= %(upto)s"
    if range_end is not None:
        where += " AND " + key_predicate(range_end, "l.key")
    prev = ("LEFT JOIN log p ON p.key = l.key AND p.revision = l.prev_revision AND NOT p.deleted" if with_prev
            else "LEFT JOIN log p ON false")
    return (f"SELECT m.compact_revision, m.revision, e.* FROM meta m LEFT JOIN LATERAL ("
            f"SELECT {EVENT_COLUMNS} FROM log l {prev} WHERE {where} ORDER BY l.revision, l.sub LIMIT {int(limit)}"
            f") e ON true")


def kv_from_row(row, offset: int = 0) -> KeyValue:
    """A :class:`KeyValue` from ``KV_COLUMNS`` starting at ``row[offset]``."""
    k, v, c, m, ver, lease = row[offset:offset + 6]
    return KeyValue(bytes(k), bytes(v), c, m, ver, lease)
