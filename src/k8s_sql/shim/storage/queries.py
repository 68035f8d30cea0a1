"""SQL text for reads of the ``kv`` and ``log`` tables (see :mod:`.schema`).

Every key range of the etcd API becomes one of three predicates, all index range scans on
bytea (never ``LIKE``): one key, every key >= key (range_end b"\\0"), or [key, range_end).

Keys are indexed by their head, the first :data:`KEY_HEAD_BYTES` bytes (etcd accepts keys
far longer than a btree entry). Cutting keys to a fixed length keeps their order (``a < b``
implies ``head(a) <= head(b)``), so a condition on the key implies one on the head, which
the index serves. When the bound ``k`` is shorter than the head, the head condition is
exact by itself (``key >= k`` iff ``head >= k``, ``key < k`` iff ``head < k``, ``key = k``
iff ``head = k``); only a longer bound needs the key rechecked. The conditions say so in
SQL (``octet_length(k) < 1024 OR ...``), which PostgreSQL folds away when it plans with the
values, so its row estimates come from the head's statistics alone, as they would for the
key. ``ORDER BY head, key`` sorts like ``ORDER BY key`` and reads the index in order (equal
heads, which only keys longer than the head can share, are sorted among themselves).
"""

from __future__ import annotations

from k8s_sql.shim.storage.base import FROM_KEY, KeyValue

KV_COLUMNS = "key, value, create_revision, mod_revision, version, lease"

#: Bytes of a key the indexes hold (schema migration 3 spells the same number). Kubernetes
#: keys are far shorter, so for them the head is the whole key.
KEY_HEAD_BYTES = 1024


def key_head(expr: str) -> str:
    """SQL for the indexed head of the bytea ``expr`` (the indexes' expression)."""
    return f"substring({expr} from 1 for {KEY_HEAD_BYTES})"


def key_order(column: str = "key") -> str:
    """ORDER BY terms that sort like ``column`` and follow the head indexes."""
    return f"{key_head(column)}, {column}"


def same_key(a: str, b: str) -> str:
    """SQL condition: key columns ``a`` and ``b`` are equal (through the head index)."""
    return f"{key_head(a)} = {key_head(b)} AND {a} = {b}"


def _by_length(bound: str, short: str, long: str) -> str:
    # ``short`` when the bound is shorter than the head, else ``long``
    n = f"octet_length({bound})"
    if short == "true":
        return f"({n} < {KEY_HEAD_BYTES} OR {long})"
    return f"({n} >= {KEY_HEAD_BYTES} OR {short}) AND ({n} < {KEY_HEAD_BYTES} OR {long})"


def key_predicate(range_end: bytes, column: str = "key") -> str:
    """SQL condition on ``column`` for etcd's (key, range_end) using params %(key)s/%(end)s."""
    head = key_head(column)
    if not range_end:
        return f"{head} = {key_head('%(key)s')} AND {_by_length('%(key)s', 'true', f'{column} = %(key)s')}"
    low = f"{head} >= {key_head('%(key)s')} AND {_by_length('%(key)s', 'true', f'{column} >= %(key)s')}"
    if range_end == FROM_KEY:
        return low
    return (f"{low} AND {head} <= {key_head('%(end)s')} AND "
            f"{_by_length('%(end)s', f'{head} <> %(end)s', f'{column} < %(end)s')}")


def _and(extra: str) -> str:
    return f" AND {extra}" if extra else ""


def _limit(limit: int) -> str:
    return f" LIMIT {int(limit)}" if limit > 0 else ""


def current_rows(range_end: bytes, keys_only: bool, limit: int, extra: str = "") -> str:
    """Live keys in the range from ``kv``, ordered by key (etcd API v3 KV.Range at the current
    revision); ``extra`` is one more SQL condition."""
    value = "''::bytea AS value" if keys_only else "value"
    return (f"SELECT key, {value}, create_revision, mod_revision, version, lease FROM kv "
            f"WHERE {key_predicate(range_end)}{_and(extra)} ORDER BY {key_order()}{_limit(limit)}")


def _latest_versions(range_end: bytes, columns: str, extra: str) -> str:
    # each key's latest version at revision %(rev)s, deletes included
    return (f"SELECT DISTINCT ON ({key_order()}) {columns} FROM log "
            f"WHERE {key_predicate(range_end)} AND revision <= %(rev)s{_and(extra)} "
            f"ORDER BY {key_order()}, revision DESC, sub DESC")


def historical_rows(range_end: bytes, keys_only: bool, limit: int, extra: str = "") -> str:
    """Keys live at revision %(rev)s, from ``log``: each key's latest version <= rev unless deleted."""
    value = "''::bytea AS value" if keys_only else "value"
    latest = _latest_versions(range_end, f"key, {value}, create_revision, revision AS mod_revision, version, "
                                         "lease, deleted", extra)
    return (f"SELECT key, value, create_revision, mod_revision, version, lease FROM ({latest}) h "
            f"WHERE NOT deleted ORDER BY {key_order()}{_limit(limit)}")


def count_rows(range_end: bytes, historical: bool) -> str:
    """Number of live keys in the range (etcd RangeResponse.count)."""
    if not historical:
        return f"SELECT count(*) FROM kv WHERE {key_predicate(range_end)}"
    return f"SELECT count(*) FROM ({_latest_versions(range_end, 'key, deleted', '')}) h WHERE NOT deleted"


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
        cur = current_rows(range_end, keys_only, limit, "%(rev)s >= m.revision")
        old = historical_rows(range_end, keys_only, limit, "%(rev)s < m.revision")
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
    prev = (f"LEFT JOIN log p ON p.revision = l.prev_revision AND {same_key('p.key', 'l.key')} AND NOT p.deleted"
            if with_prev else "LEFT JOIN log p ON false")
    return (f"SELECT m.compact_revision, m.revision, e.* FROM meta m LEFT JOIN LATERAL ("
            f"SELECT {EVENT_COLUMNS} FROM log l {prev} WHERE {where} ORDER BY l.revision, l.sub LIMIT {int(limit)}"
            f") e ON true")


def kv_from_row(row, offset: int = 0) -> KeyValue:
    """A :class:`KeyValue` from ``KV_COLUMNS`` starting at ``row[offset]``."""
    k, v, c, m, ver, lease = row[offset:offset + 6]
    return KeyValue(bytes(k), bytes(v), c, m, ver, lease)


# --- consistency hashes (etcd API v3 Maintenance.HashKV / Hash) ---

#: Log columns of the hash scans: revision, sub, deleted, then KV_COLUMNS (mod_revision = revision).
HASH_COLUMNS = "revision, sub, deleted, key, value, create_revision, revision AS mod_revision, version, lease"

#: Whether any key is live at %(rev)s (its latest version <= rev is not a delete): etcd's
#: HashByRev keep set, kvindex.Keep(rev), is empty exactly when none is. One sort of the
#: log up to rev, no per-row lookup; :data:`ANY_LIVE_NOW` answers it for the current revision.
ANY_LIVE_AT = ("SELECT EXISTS (SELECT 1 FROM (SELECT DISTINCT ON (key) deleted FROM log WHERE revision <= %(rev)s "
               "ORDER BY key, revision DESC, sub DESC) h WHERE NOT h.deleted)")
ANY_LIVE_NOW = "SELECT EXISTS (SELECT 1 FROM kv)"


def hash_kv_rows(any_live: bool) -> str:
    """The log rows etcd's mvcc HashByRev(%(rev)s) hashes, in key-bucket order (revision, sub):
    the rows kept at or below %(compact)s that are not deletes (each key's version live at the
    compaction) and, when ``any_live`` (etcd's keep set is not empty), whose key has no newer
    row up to rev; then every row with compact < revision <= rev. (The deletes at exactly
    the compact revision that the shim keeps, etcd's compaction has removed.)"""
    below = (f"SELECT {HASH_COLUMNS} FROM log l "
             "WHERE l.revision <= %(compact)s AND l.revision <= %(rev)s AND NOT l.deleted")
    if any_live:
        below += (f" AND NOT EXISTS (SELECT 1 FROM log n WHERE {same_key('n.key', 'l.key')} "
                  "AND n.revision > %(compact)s AND n.revision <= %(rev)s)")
    above = f"SELECT {HASH_COLUMNS} FROM log WHERE revision > %(compact)s AND revision <= %(rev)s"
    return f"{below} UNION ALL {above} ORDER BY revision, sub"


#: Every stored log row, in key-bucket order (Maintenance.Hash).
ALL_LOG_ROWS = f"SELECT {HASH_COLUMNS} FROM log ORDER BY revision, sub"

#: Every granted lease (id, TTL in seconds), in id order (Maintenance.Hash).
ALL_LEASES = "SELECT id, ttl FROM lease ORDER BY id"
