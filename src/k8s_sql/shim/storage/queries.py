"""All SQL of the shim's storage (see :mod:`.schema` for the tables and the batch write function).

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

import functools

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
    """Number of live keys in the range (etcd RangeResponse.count).

    At the current revision a range of keys is counted in two parts, keys shorter than the
    head and the others, each through its partial index of schema migration 5: the short
    keys' index holds the key itself, so counting them is an index-only scan (an index on
    the head alone cannot be: PostgreSQL answers from an index only when it holds every
    column the query names). The long keys' part is usually empty.
    """
    if not historical:
        if not range_end:
            return f"SELECT count(*) FROM kv WHERE {key_predicate(range_end)}"
        short = "key >= %(key)s" if range_end == FROM_KEY else "key >= %(key)s AND key < %(end)s"
        return (f"SELECT (SELECT count(*) FROM kv WHERE octet_length(key) < {KEY_HEAD_BYTES} AND {short}) + "
                f"(SELECT count(*) FROM kv WHERE octet_length(key) >= {KEY_HEAD_BYTES} AND "
                f"{key_predicate(range_end)})")
    return f"SELECT count(*) FROM ({_latest_versions(range_end, 'key, deleted', '')}) h WHERE NOT deleted"


def range_with_meta(range_end: bytes, historical: bool, keys_only: bool, limit: int, count: bool,
                    rows: bool) -> str:
    """One statement (so one snapshot) returning meta's revision and compact_revision, the
    total count (or NULL), and the rows: ``revision, compact_revision, count, <KV_COLUMNS>``.
    Without rows, a single row with NULL kv columns comes back. A read at revision %(rev)s
    >= %(now)s (NULL: meta's revision) is answered from ``kv``, older ones from ``log``."""
    return _range_with_meta(_range_shape(range_end), historical, keys_only, limit, count, rows)


def _range_shape(range_end: bytes) -> bytes:
    # the SQL depends only on which of etcd's three range forms it is
    return range_end if range_end in (b"", FROM_KEY) else b"\xff"


@functools.lru_cache(maxsize=512)
def _range_with_meta(range_end: bytes, historical: bool, keys_only: bool, limit: int, count: bool,
                     rows: bool) -> str:
    if not historical:
        count_sql = f"({count_rows(range_end, False)})" if count else "NULL::bigint"
        inner = current_rows(range_end, keys_only, limit) if rows else ""
    else:
        # a read at the current revision (kube-apiserver's later list pages) is answered from
        # kv; only older revisions go through the log. Each branch runs only when chosen.
        now = "COALESCE(%(now)s::bigint, m.revision)"
        count_sql = (f"CASE WHEN %(rev)s >= {now} THEN ({count_rows(range_end, False)}) "
                     f"ELSE ({count_rows(range_end, True)}) END") if count else "NULL::bigint"
        cur = current_rows(range_end, keys_only, limit, f"%(rev)s >= {now}")
        old = historical_rows(range_end, keys_only, limit, f"%(rev)s < {now}")
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


# --- migrate import (k8s-sql migrate: etcd's state copied into an empty datastore) ---

#: Whether the datastore holds anything (one row): revision, compact_revision, and whether
#: any log, kv or lease row exists. Locks meta, so no shim writes while the import runs.
MIGRATE_STATE = ("SELECT revision, compact_revision, EXISTS (SELECT 1 FROM log), EXISTS (SELECT 1 FROM kv), "
                 "EXISTS (SELECT 1 FROM lease) FROM meta FOR UPDATE")

#: Bulk load of the history (psycopg COPY, text format).
MIGRATE_COPY_LOG = ("COPY log (revision, sub, key, value, create_revision, version, lease, deleted) "
                    "FROM STDIN")

#: prev_revision as the shim's writes set it: a put points at the key's previous version
#: unless that was a delete; a delete points at the put it ends.
MIGRATE_PREV_REVISION = (
    "UPDATE log l SET prev_revision = p.prev FROM ("
    "SELECT revision, sub, CASE WHEN lag(deleted) OVER w THEN NULL ELSE lag(revision) OVER w END AS prev "
    "FROM log WINDOW w AS (PARTITION BY key ORDER BY revision, sub)) p "
    "WHERE l.revision = p.revision AND l.sub = p.sub AND p.prev IS NOT NULL")

#: kv from the log: each key's latest version, unless it is a delete.
MIGRATE_FILL_KV = (
    "INSERT INTO kv (key, value, create_revision, mod_revision, version, lease) "
    "SELECT key, value, create_revision, revision, version, lease FROM ("
    "SELECT DISTINCT ON (key) key, value, create_revision, revision, version, lease, deleted FROM log "
    "ORDER BY key, revision DESC, sub DESC) h WHERE NOT deleted")

#: Leases arrive with their remaining TTL; expires_at is PostgreSQL's clock plus it.
MIGRATE_LEASE_STAGE = ("CREATE TEMP TABLE migrate_lease (id bigint, ttl bigint, remaining bigint) "
                       "ON COMMIT DROP")
MIGRATE_COPY_LEASE = "COPY migrate_lease (id, ttl, remaining) FROM STDIN"
MIGRATE_INSERT_LEASES = ("INSERT INTO lease (id, ttl, expires_at) "
                         "SELECT id, ttl, clock_timestamp() + remaining * interval '1 second' FROM migrate_lease")
#: A key whose lease etcd no longer has (it expired while migrating): an expired lease, so
#: the shim deletes the key as etcd has.
MIGRATE_ORPHAN_LEASES = ("INSERT INTO lease (id, ttl, expires_at) "
                         "SELECT DISTINCT lease, 1, clock_timestamp() FROM kv "
                         "WHERE lease <> 0 AND lease NOT IN (SELECT id FROM lease)")

MIGRATE_SET_META = "UPDATE meta SET revision = %(rev)s, compact_revision = %(compact)s"

#: Verification: live keys and leases.
MIGRATE_COUNTS = "SELECT (SELECT count(*) FROM kv), (SELECT count(*) FROM lease)"

#: What a compaction at %(compact)s leaves below it, for a source that still holds more (a
#: snapshot taken while etcd compacted, or before): each key's latest version at or below
#: the compact revision, unless it is a delete.
MIGRATE_TRIM_COMPACTED = (
    "DELETE FROM log l WHERE l.revision <= %(compact)s AND (l.deleted OR EXISTS (SELECT 1 FROM log n "
    f"WHERE {same_key('n.key', 'l.key')} AND n.revision <= %(compact)s AND (n.revision, n.sub) > (l.revision, l.sub)))")

#: ``k8s-sql restore --bump-revision``: as etcd's ``snapshot restore --bump-revision
#: --mark-compacted``: the store revision moves past any revision a client has seen and the
#: history up to it counts as compacted, so every watch and every read at an old revision
#: fails with "compacted" and clients relist. Run after MIGRATE_TRIM_COMPACTED at the restored revision.
RESTORE_BUMP_REVISION = "UPDATE meta SET revision = revision + %(bump)s, compact_revision = revision + %(bump)s"
#: After a restore, every lease gets its full TTL again (etcd does the same when it restores
#: or elects a leader: lease expiry restarts).
RESTORE_RENEW_LEASES = "UPDATE lease SET expires_at = clock_timestamp() + ttl * interval '1 second'"


# --- the write path (storage/writer.py, storage/batch.py) ---

#: LISTEN/NOTIFY channel announcing new revisions (the batch function of schema migration 4
#: spells it too): the payload is the new store revision.
NOTIFY_CHANNEL = "k8s_sql_revision"
LISTEN = f"LISTEN {NOTIFY_CHANNEL}"

#: One batch of encoded Put/DeleteRange/guarded Txn requests (schema migration 4): rows of
#: i (1-based request, 0 = the summary), code, rev, ok, n, KV_COLUMNS, err — see schema.py.
WRITE_BATCH = ("SELECT * FROM k8s_sql_write_v1(%s::smallint[], %s::bytea[], %s::bytea[], %s::bytea[], "
               "%s::bigint[], %s::int[], %s::smallint[], %s::smallint[], %s::bigint[], %s::bytea[], "
               "%s::smallint[], %s::smallint[], %s::boolean)")
#: The same for a batch of one request, without the per-call subtransaction (schema migration
#: 5): a failure of its own raises instead of being answered with code 3.
WRITE_ONE = ("SELECT * FROM k8s_sql_write_v2(%s::smallint[], %s::bytea[], %s::bytea[], %s::bytea[], "
             "%s::bigint[], %s::int[], %s::smallint[], %s::smallint[], %s::bigint[], %s::bytea[], "
             "%s::smallint[], %s::smallint[])")
#: The revision counter, locked for the writer's transaction (orders every shim's batches).
LOCK_META = "SELECT revision, compact_revision FROM meta FOR UPDATE"
SET_REVISION = "UPDATE meta SET revision = %(rev)s"
#: One round trip for both (a data-modifying CTE runs even when unreferenced).
SET_REVISION_NOTIFY = "WITH m AS (UPDATE meta SET revision = %(rev)s) SELECT pg_notify(%(channel)s, %(payload)s)"


# --- snapshot (etcd API v3 Maintenance.Snapshot) ---

#: The log rows etcd's ``key`` bucket would hold, in (revision, sub) order: every stored
#: row except the deletes at or below %(compact)s (etcd's compaction removes those
#: tombstones; the shim keeps the one at the compact revision).
SNAPSHOT_LOG_ROWS = (f"SELECT {HASH_COLUMNS} FROM log WHERE NOT (deleted AND revision <= %(compact)s) "
                     "ORDER BY revision, sub")


# --- the general write path (storage/apply.py: txns the batch function does not take,
# compaction, lease revoke) ---

#: kv's unique index (schema migration 3): the key's head and, for longer keys, its SHA-256.
KV_KEY_INDEX = (f"({key_head('key')}), (CASE WHEN octet_length(key) > {KEY_HEAD_BYTES} "
                "THEN sha256(key) ELSE ''::bytea END)")

#: etcd KV.Put of one key at %(rev)s/%(sub)s (the general path, storage/apply.py); returns the previous kv.
PUT = f"""
WITH p AS (SELECT key, value, create_revision, mod_revision, version, lease FROM kv WHERE {key_predicate(b"")}),
n AS (SELECT CASE WHEN %(iv)s THEN p.value ELSE %(value)s::bytea END AS value,
             COALESCE(p.create_revision, %(rev)s::bigint) AS create_revision,
             COALESCE(p.version, 0) + 1 AS version,
             CASE WHEN %(il)s THEN p.lease ELSE %(lease)s::bigint END AS lease,
             p.mod_revision AS prev_revision
      FROM (SELECT 1) one LEFT JOIN p ON true),
l AS (INSERT INTO log (revision, sub, key, value, create_revision, version, lease, deleted, prev_revision)
      SELECT %(rev)s, %(sub)s, %(key)s, value, create_revision, version, lease, false, prev_revision FROM n),
u AS (INSERT INTO kv (key, value, create_revision, mod_revision, version, lease)
      SELECT %(key)s, value, create_revision, %(rev)s, version, lease FROM n
      ON CONFLICT ({KV_KEY_INDEX}) DO UPDATE SET value = EXCLUDED.value, mod_revision = EXCLUDED.mod_revision,
          version = EXCLUDED.version, lease = EXCLUDED.lease)
SELECT key, value, create_revision, mod_revision, version, lease FROM p
"""


#: Compaction, step 1: delete each version that a version in (%(from)s, %(rev)s] superseded.
COMPACT_SUPERSEDED = (
    "DELETE FROM log l USING log n WHERE n.revision > %(from)s AND n.revision <= %(rev)s "
    f"AND n.prev_revision IS NOT NULL AND l.revision = n.prev_revision AND {same_key('l.key', 'n.key')}")
#: Compaction, step 2: delete the tombstones below %(rev)s.
COMPACT_TOMBSTONES = "DELETE FROM log WHERE deleted AND revision >= %(from)s AND revision < %(rev)s"


def delete_rows(predicate: str, returning: bool) -> str:
    """Delete the live keys matching ``predicate`` at %(rev)s, numbered from %(sub)s in key
    order (a tombstone each in ``log``); rows of the deleted kvs if ``returning``, else the count."""
    tail = ("SELECT key, value, create_revision, mod_revision, version, lease FROM d ORDER BY key" if returning
            else "SELECT count(*) FROM d")
    return f"""
WITH d AS (DELETE FROM kv WHERE {predicate} RETURNING key, value, create_revision, mod_revision, version, lease),
l AS (INSERT INTO log (revision, sub, key, value, create_revision, version, lease, deleted, prev_revision)
      SELECT %(rev)s, %(sub)s + (row_number() OVER (ORDER BY key))::int - 1, key, ''::bytea, 0, 0, 0, true,
             mod_revision FROM d)
{tail}
"""
#: Compaction, step 3.
SET_COMPACT_REVISION = "UPDATE meta SET compact_revision = %(rev)s"
#: Keys attached to lease %(lease)s (a predicate for :func:`delete_rows`).
LEASE_KEYS = "lease = %(lease)s"
LEASE_EXISTS = "SELECT 1 FROM lease WHERE id = %(id)s"
REVOKE = "DELETE FROM lease WHERE id = %(id)s RETURNING id"
#: Revoke only if still expired in this transaction (another shim may have renewed it).
REVOKE_EXPIRED = "DELETE FROM lease WHERE id = %(id)s AND expires_at <= clock_timestamp() RETURNING id"


# --- meta and leases (storage/postgres.py, storage/watchhub.py) ---

CURRENT_REVISION = "SELECT revision FROM meta"
COMPACT_REVISION = "SELECT compact_revision FROM meta"
REVISIONS = "SELECT revision, compact_revision FROM meta"
DB_SIZE = ("SELECT COALESCE(sum(pg_total_relation_size(c)), 0)::bigint FROM "
           "unnest(ARRAY['meta', 'log', 'kv', 'lease', 'schema_version']::regclass[]) c")
PING = "SELECT 1"
SNAPSHOT = "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"
#: Grant lease %(id)s of %(ttl)s seconds unless the ID is taken: (id or NULL, revision).
LEASE_GRANT = ("WITH i AS (INSERT INTO lease (id, ttl, expires_at) VALUES (%(id)s, %(ttl)s, "
               "clock_timestamp() + %(ttl)s * interval '1 second') ON CONFLICT (id) DO NOTHING RETURNING id) "
               "SELECT (SELECT id FROM i), revision FROM meta")
#: Renew lease %(id)s unless expired: (ttl or NULL, revision).
LEASE_KEEPALIVE = ("WITH u AS (UPDATE lease SET expires_at = clock_timestamp() + ttl * interval '1 second' "
                   "WHERE id = %(id)s AND expires_at > clock_timestamp() RETURNING ttl) "
                   "SELECT (SELECT ttl FROM u), revision FROM meta")
#: (granted TTL, remaining seconds, revision, attached keys if %(keys)s) of lease %(id)s.
LEASE_TIME_TO_LIVE = (
    "SELECT l.ttl, floor(extract(epoch FROM l.expires_at - clock_timestamp()))::bigint, m.revision, "
    "CASE WHEN %(keys)s THEN ARRAY(SELECT key FROM kv WHERE lease = %(id)s ORDER BY key) END "
    "FROM meta m LEFT JOIN lease l ON l.id = %(id)s")
#: (revision, id) of every granted lease, in id order (one row with a NULL id when none).
LEASES = ("SELECT m.revision, l.id FROM meta m LEFT JOIN lease l ON l.expires_at > clock_timestamp() "
          "ORDER BY l.id")
EXPIRED_LEASES = "SELECT id FROM lease WHERE expires_at <= clock_timestamp() ORDER BY expires_at LIMIT 100"


# --- read lease (readlease.py): linearizable reads on a primary with synchronous standbys
SYNCHRONOUS_STANDBYS = "SELECT current_setting('synchronous_standby_names')"
#: A transaction that only takes an ID: its commit waits for a synchronous standby.
CONFIRM_COMMIT = "SELECT txid_current()"
