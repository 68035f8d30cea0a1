"""The shim's PostgreSQL schema and its migrations (applied on start, under an advisory lock).

Tables (in the shim's own database):

``meta``   one row: the store ``revision`` (the counter every write locks, so commit order
           equals revision order) and the ``compact_revision``.
``log``    every version of every key, one row per event: (revision, sub) orders the events
           of a transaction; ``deleted`` marks a delete (etcd's tombstone); ``prev_revision``
           points at the previous version of the key (for prev_kv). Kept until compaction.
``kv``     the latest version of each live key, so current-revision reads and txn compares
           touch one small index.
``lease``  granted leases with their TTL (seconds) and expiry time (PostgreSQL's clock, so
           every shim process agrees). Keys name their lease in ``kv.lease``.

Keys and values are ``bytea``: PostgreSQL compares bytea bytewise, as etcd orders keys, so
ranges and prefixes are index range scans. etcd limits a key only by the request size
(1.5 MiB); a btree entry holds at most about 2,700 bytes. So keys are indexed by their first
:data:`.queries.KEY_HEAD_BYTES` bytes (the "head"; every Kubernetes key fits in it whole),
which orders like the key itself, and the full key is rechecked (see :mod:`.queries`).
``kv`` is unique on (head, SHA-256 of keys longer than the head).

``schema_version`` is the schema's metadata: one row per migration applied, ``version`` and
``min_compatible``, the oldest shim schema version that still runs correctly on a database
at that version (declared per migration in :data:`MIN_COMPATIBLE`; rows written before the
column existed are filled in from it). A shim starts on a database whose schema is newer
than its own only when its :data:`SCHEMA_VERSION` >= the database's ``min_compatible``
(the value of its highest version): a rolling upgrade across control planes lets an old
shim that restarts mid-rollout come back, as long as every migration since only added.
"""

from __future__ import annotations

import logging

from k8s_sql.errors import K8sSqlError

log = logging.getLogger(__name__)

#: Arbitrary but fixed advisory lock key ("k8s-sql" in ASCII) held while migrating.
MIGRATION_LOCK = 0x6B38732D73716C

#: For each migration (its number in :data:`MIGRATIONS`): the oldest shim schema version
#: that still runs correctly on a database at that version. A migration that only adds
#: (tables, columns with defaults, functions) keeps the previous value; one that changes
#: what older shims rely on raises it to its own number, and crossing it needs every shim
#: of an older schema stopped (``k8s-sql upgrade`` enforces that, phases/upgrade.py).
#: Every migration must have an entry (checked on import).
MIN_COMPATIBLE: dict[int, int] = {
    1: 1,  # the initial schema
    2: 1,  # log's unique index on more columns: a schema-1 shim's rows still fit (not run side by side)
    3: 3,  # kv's primary key on the whole key dropped: a schema-2 shim's INSERT ... ON CONFLICT (key) needs it
    4: 3,  # functions only (the batch write path); tests/shim/test_schema_compat.py runs 3 and 4 side by side
    5: 3,  # indexes for counting keys and a function: additions only
}

#: Migration 4: ``k8s_sql_write_v1`` applies a batch of Put, DeleteRange and single-key
#: guarded Txn requests (etcd API v3) in one call: it locks ``meta`` (so commit order is
#: revision order), gives each request that changes something the next revision, writes
#: ``log`` and ``kv``, and updates ``meta`` and sends the NOTIFY once. Arguments are parallel
#: arrays, one element per request (encoded by :mod:`.batch`); a refused request (etcd's
#: KeyNotFound, LeaseNotFound) is answered with a code and writes nothing. With ``isolate``
#: each request runs in a subtransaction, so one that fails alone is answered with code 3
#: and the rest commit; without it the first such failure undoes the whole batch and is
#: answered alone (code 3), for the caller to run the batch again without it. Failures of
#: the datastore (SQLSTATE classes 08, 40, 53, 57, 58; 25006, 55P03) are raised.
WRITE_FUNCTIONS_V1 = r"""
CREATE FUNCTION k8s_sql_write_one_v1(cur bigint, kind smallint, k bytea, e bytea, val bytea, ls bigint,
    fl int, ct smallint, cr smallint, ci bigint, cv bytea, sk smallint, fk smallint)
RETURNS TABLE (code int, rev bigint, ok boolean, n bigint,
               rk bytea, rv bytea, rc bigint, rm bigint, rver bigint, rl bigint)
LANGUAGE plpgsql AS $f$
#variable_conflict use_column
DECLARE
    p kv%ROWTYPE;
    have boolean := false;
    op smallint := kind;
    res int := 0;
    wr bigint := cur + 1;
    cnt bigint := 0;
    d record;
BEGIN
    IF kind = 3 THEN  -- a txn: one compare on k (ct -1 = none), then one op (sk or fk) on k
        SELECT * INTO p FROM kv WHERE substring(key from 1 for 1024) = substring(k from 1 for 1024) AND key = k;
        have := FOUND;
        ok := true;
        IF ct >= 0 THEN
            IF ct = 3 THEN  -- VALUE: no key never compares true
                IF NOT have THEN
                    ok := false;
                ELSE
                    res := CASE WHEN p.value < cv THEN -1 WHEN p.value > cv THEN 1 ELSE 0 END;
                END IF;
            ELSIF ct IN (0, 1, 2, 4) THEN  -- VERSION, CREATE, MOD, LEASE: a missing key is zero
                res := CASE WHEN COALESCE(CASE ct WHEN 0 THEN p.version WHEN 1 THEN p.create_revision
                                 WHEN 2 THEN p.mod_revision ELSE p.lease END, 0) < ci THEN -1
                            WHEN COALESCE(CASE ct WHEN 0 THEN p.version WHEN 1 THEN p.create_revision
                                 WHEN 2 THEN p.mod_revision ELSE p.lease END, 0) > ci THEN 1 ELSE 0 END;
            END IF;
            IF ok THEN
                ok := CASE cr WHEN 0 THEN res = 0 WHEN 1 THEN res > 0 WHEN 2 THEN res < 0
                              WHEN 3 THEN res <> 0 ELSE true END;
            END IF;
        END IF;
        op := CASE WHEN ok THEN sk ELSE fk END;
        IF op = 3 AND have THEN  -- a get of k
            rk := p.key; rv := p.value; rc := p.create_revision; rm := p.mod_revision; rver := p.version;
            rl := p.lease;
            RETURN NEXT;
            rk := NULL; rv := NULL; rc := NULL; rm := NULL; rver := NULL; rl := NULL;
        END IF;
        IF op NOT IN (1, 2) THEN
            code := 0; rev := cur;
            RETURN NEXT;
            RETURN;
        END IF;
    END IF;
    IF op = 1 THEN  -- Put; fl: 1 prev_kv, 2 ignore_value, 4 ignore_lease
        IF kind <> 3 THEN
            SELECT * INTO p FROM kv WHERE substring(key from 1 for 1024) = substring(k from 1 for 1024) AND key = k;
            have := FOUND;
        END IF;
        IF (fl & 6) <> 0 AND NOT have THEN
            code := 1; rev := cur;
            RETURN NEXT;
            RETURN;
        END IF;
        IF ls <> 0 AND NOT EXISTS (SELECT 1 FROM lease WHERE id = ls) THEN
            code := 2; rev := cur;
            RETURN NEXT;
            RETURN;
        END IF;
        IF (fl & 2) <> 0 THEN val := p.value; END IF;
        IF (fl & 4) <> 0 THEN ls := p.lease; END IF;
        INSERT INTO log (revision, sub, key, value, create_revision, version, lease, deleted, prev_revision)
            VALUES (wr, 0, k, val, COALESCE(p.create_revision, wr), COALESCE(p.version, 0) + 1, ls, false,
                    p.mod_revision);
        IF have THEN
            UPDATE kv SET value = val, mod_revision = wr, version = p.version + 1, lease = ls
                WHERE substring(key from 1 for 1024) = substring(k from 1 for 1024) AND key = k;
            IF (fl & 1) <> 0 THEN
                rk := p.key; rv := p.value; rc := p.create_revision; rm := p.mod_revision; rver := p.version;
                rl := p.lease;
                RETURN NEXT;
                rk := NULL; rv := NULL; rc := NULL; rm := NULL; rver := NULL; rl := NULL;
            END IF;
        ELSE
            INSERT INTO kv (key, value, create_revision, mod_revision, version, lease) VALUES (k, val, wr, wr, 1, ls);
        END IF;
        code := 0; rev := wr;
        RETURN NEXT;
        RETURN;
    END IF;
    -- DeleteRange (e: b"" one key, b"\0" every key >= k, else [k, e)); a delete event per key,
    -- numbered in key order; each shape its own statement, so each is an index range scan
    IF e = ''::bytea THEN
        FOR d IN WITH x AS (DELETE FROM kv WHERE substring(key from 1 for 1024) = substring(k from 1 for 1024)
                                AND key = k RETURNING key, value, create_revision, mod_revision, version, lease),
                      y AS (INSERT INTO log (revision, sub, key, value, create_revision, version, lease, deleted,
                                             prev_revision)
                            SELECT wr, 0, key, ''::bytea, 0, 0, 0, true, mod_revision FROM x)
                 SELECT * FROM x LOOP
            cnt := cnt + 1;
            IF (fl & 1) <> 0 THEN
                rk := d.key; rv := d.value; rc := d.create_revision; rm := d.mod_revision; rver := d.version;
                rl := d.lease;
                RETURN NEXT;
            END IF;
        END LOOP;
    ELSIF e = '\x00'::bytea THEN
        FOR d IN WITH x AS (DELETE FROM kv WHERE substring(key from 1 for 1024) >= substring(k from 1 for 1024)
                                AND key >= k RETURNING key, value, create_revision, mod_revision, version, lease),
                      y AS (INSERT INTO log (revision, sub, key, value, create_revision, version, lease, deleted,
                                             prev_revision)
                            SELECT wr, (row_number() OVER (ORDER BY key))::int - 1, key, ''::bytea, 0, 0, 0, true,
                                   mod_revision FROM x)
                 SELECT * FROM x ORDER BY key LOOP
            cnt := cnt + 1;
            IF (fl & 1) <> 0 THEN
                rk := d.key; rv := d.value; rc := d.create_revision; rm := d.mod_revision; rver := d.version;
                rl := d.lease;
                RETURN NEXT;
            END IF;
        END LOOP;
    ELSE
        FOR d IN WITH x AS (DELETE FROM kv WHERE substring(key from 1 for 1024) >= substring(k from 1 for 1024)
                                AND key >= k AND substring(key from 1 for 1024) <= substring(e from 1 for 1024)
                                AND key < e RETURNING key, value, create_revision, mod_revision, version, lease),
                      y AS (INSERT INTO log (revision, sub, key, value, create_revision, version, lease, deleted,
                                             prev_revision)
                            SELECT wr, (row_number() OVER (ORDER BY key))::int - 1, key, ''::bytea, 0, 0, 0, true,
                                   mod_revision FROM x)
                 SELECT * FROM x ORDER BY key LOOP
            cnt := cnt + 1;
            IF (fl & 1) <> 0 THEN
                rk := d.key; rv := d.value; rc := d.create_revision; rm := d.mod_revision; rver := d.version;
                rl := d.lease;
                RETURN NEXT;
            END IF;
        END LOOP;
    END IF;
    rk := NULL; rv := NULL; rc := NULL; rm := NULL; rver := NULL; rl := NULL;
    code := 0; n := cnt; rev := CASE WHEN cnt > 0 THEN wr ELSE cur END;
    RETURN NEXT;
END
$f$;

CREATE FUNCTION k8s_sql_write_v1(kinds smallint[], keys bytea[], ends bytea[], vals bytea[], leases bigint[],
    flags int[], ctargets smallint[], cresults smallint[], cints bigint[], cvals bytea[], skinds smallint[],
    fkinds smallint[], isolate boolean)
RETURNS TABLE (i int, code int, rev bigint, ok boolean, n bigint,
               k bytea, v bytea, c bigint, m bigint, ver bigint, l bigint, err text)
LANGUAGE plpgsql AS $f$
#variable_conflict use_column
DECLARE
    start bigint;
    cur bigint;
    at int := 0;
    r record;
BEGIN
    SELECT meta.revision INTO start FROM meta FOR UPDATE;
    cur := start;
    BEGIN
        WHILE at < cardinality(kinds) LOOP
            at := at + 1;
            IF isolate THEN
                BEGIN
                    FOR r IN SELECT * FROM k8s_sql_write_one_v1(cur, kinds[at], keys[at], ends[at], vals[at],
                            leases[at], flags[at], ctargets[at], cresults[at], cints[at], cvals[at], skinds[at],
                            fkinds[at]) LOOP
                        i := at; code := r.code; rev := r.rev; ok := r.ok; n := r.n; k := r.rk; v := r.rv;
                        c := r.rc; m := r.rm; ver := r.rver; l := r.rl; err := NULL;
                        RETURN NEXT;
                        IF r.code = 0 THEN cur := r.rev; END IF;
                    END LOOP;
                EXCEPTION WHEN OTHERS THEN
                    IF left(SQLSTATE, 2) IN ('08', '40', '53', '57', '58') OR SQLSTATE IN ('25006', '55P03') THEN
                        RAISE;
                    END IF;
                    i := at; code := 3; rev := cur; ok := NULL; n := NULL; k := NULL; v := NULL; c := NULL;
                    m := NULL; ver := NULL; l := NULL; err := SQLSTATE || ': ' || SQLERRM;
                    RETURN NEXT;
                END;
            ELSE
                FOR r IN SELECT * FROM k8s_sql_write_one_v1(cur, kinds[at], keys[at], ends[at], vals[at],
                        leases[at], flags[at], ctargets[at], cresults[at], cints[at], cvals[at], skinds[at],
                        fkinds[at]) LOOP
                    i := at; code := r.code; rev := r.rev; ok := r.ok; n := r.n; k := r.rk; v := r.rv;
                    c := r.rc; m := r.rm; ver := r.rver; l := r.rl; err := NULL;
                    RETURN NEXT;
                    IF r.code = 0 THEN cur := r.rev; END IF;
                END LOOP;
            END IF;
        END LOOP;
        IF cur <> start THEN
            UPDATE meta SET revision = cur;
            PERFORM pg_notify('k8s_sql_revision', cur::text);
        END IF;
    EXCEPTION WHEN OTHERS THEN
        IF left(SQLSTATE, 2) IN ('08', '40', '53', '57', '58') OR SQLSTATE IN ('25006', '55P03') THEN
            RAISE;
        END IF;
        i := at; code := 3; rev := start; ok := NULL; n := NULL; k := NULL; v := NULL; c := NULL;
        m := NULL; ver := NULL; l := NULL; err := SQLSTATE || ': ' || SQLERRM;
        RETURN NEXT;
        cur := start;
    END;
    -- the batch's summary: i 0, the revision before (n) and after (rev)
    i := 0; code := NULL; rev := cur; ok := NULL; n := start; k := NULL; v := NULL; c := NULL; m := NULL;
    ver := NULL; l := NULL; err := NULL;
    RETURN NEXT;
END
$f$;
"""

#: Migrations in order; the schema version is the number applied.
MIGRATIONS: list[str] = [
    # 1: the initial schema. etcd's first revision is 1.
    """
    CREATE TABLE meta (
        id int PRIMARY KEY CHECK (id = 1),
        revision bigint NOT NULL,
        compact_revision bigint NOT NULL
    );
    INSERT INTO meta VALUES (1, 1, 0);
    CREATE TABLE log (
        revision bigint NOT NULL,
        sub int NOT NULL,
        key bytea NOT NULL,
        value bytea NOT NULL,
        create_revision bigint NOT NULL,
        version bigint NOT NULL,
        lease bigint NOT NULL,
        deleted boolean NOT NULL,
        prev_revision bigint,
        PRIMARY KEY (revision, sub)
    );
    CREATE UNIQUE INDEX log_key_revision ON log (key, revision DESC);
    CREATE TABLE kv (
        key bytea PRIMARY KEY,
        value bytea NOT NULL,
        create_revision bigint NOT NULL,
        mod_revision bigint NOT NULL,
        version bigint NOT NULL,
        lease bigint NOT NULL
    );
    CREATE INDEX kv_lease ON kv (lease) WHERE lease <> 0;
    CREATE TABLE lease (
        id bigint PRIMARY KEY,
        ttl bigint NOT NULL,
        expires_at timestamptz NOT NULL
    );
    CREATE INDEX lease_expires_at ON lease (expires_at);
    """,
    # 2: a txn may delete a key and put it again at one revision (etcd allows it): the
    # key's versions are ordered by (revision, sub).
    """
    DROP INDEX log_key_revision;
    CREATE UNIQUE INDEX log_key_revision_sub ON log (key, revision DESC, sub DESC);
    """,
    # 3: keys of any length etcd accepts: index the first 1024 bytes (queries.KEY_HEAD_BYTES)
    # instead of the whole key, which a btree cannot hold beyond ~2,700 bytes.
    """
    ALTER TABLE kv DROP CONSTRAINT kv_pkey;
    CREATE UNIQUE INDEX kv_key_head ON kv ((substring(key from 1 for 1024)),
        (CASE WHEN octet_length(key) > 1024 THEN sha256(key) ELSE ''::bytea END));
    DROP INDEX log_key_revision_sub;
    CREATE INDEX log_key_head_revision_sub ON log ((substring(key from 1 for 1024)), revision DESC, sub DESC);
    """,
    # 4: the write path of one round trip per batch (storage/batch.py): functions only, the
    # tables stay as they are, so a shim of schema 3 already running keeps working beside it.
    WRITE_FUNCTIONS_V1,
    # 5: etcd's count of a key range (every paginated list asks for it) by index-only scans
    # (queries.count_rows): an index holding the key itself for keys shorter than the head
    # (1024 = queries.KEY_HEAD_BYTES), one on the head for the longer ones; and autovacuum
    # on kv often enough that its visibility map stays set (else every count reads the heap).
    # Indexes and a storage parameter only: a shim of schema 3 or 4 keeps working beside it.
    # Also k8s_sql_write_v2: k8s_sql_write_v1 without its exception block, for a batch of
    # one request (every write of a sequential client): the block is a subtransaction per
    # call, and with one request a failure names its request anyway (bench/PROFILE.md).
    """
    CREATE FUNCTION k8s_sql_write_v2(kinds smallint[], keys bytea[], ends bytea[], vals bytea[], leases bigint[],
        flags int[], ctargets smallint[], cresults smallint[], cints bigint[], cvals bytea[], skinds smallint[],
        fkinds smallint[])
    RETURNS TABLE (i int, code int, rev bigint, ok boolean, n bigint,
                   k bytea, v bytea, c bigint, m bigint, ver bigint, l bigint, err text)
    LANGUAGE plpgsql AS $f$
    #variable_conflict use_column
    DECLARE
        start bigint;
        cur bigint;
        at int := 0;
        r record;
    BEGIN
        SELECT meta.revision INTO start FROM meta FOR UPDATE;
        cur := start;
        WHILE at < cardinality(kinds) LOOP
            at := at + 1;
            FOR r IN SELECT * FROM k8s_sql_write_one_v1(cur, kinds[at], keys[at], ends[at], vals[at],
                    leases[at], flags[at], ctargets[at], cresults[at], cints[at], cvals[at], skinds[at],
                    fkinds[at]) LOOP
                i := at; code := r.code; rev := r.rev; ok := r.ok; n := r.n; k := r.rk; v := r.rv;
                c := r.rc; m := r.rm; ver := r.rver; l := r.rl; err := NULL;
                RETURN NEXT;
                IF r.code = 0 THEN cur := r.rev; END IF;
            END LOOP;
        END LOOP;
        IF cur <> start THEN
            UPDATE meta SET revision = cur;
            PERFORM pg_notify('k8s_sql_revision', cur::text);
        END IF;
        -- the batch's summary: i 0, the revision before (n) and after (rev)
        i := 0; code := NULL; rev := cur; ok := NULL; n := start; k := NULL; v := NULL; c := NULL; m := NULL;
        ver := NULL; l := NULL; err := NULL;
        RETURN NEXT;
    END
    $f$;
    CREATE INDEX kv_key_short ON kv (key) WHERE octet_length(key) < 1024;
    CREATE INDEX kv_key_long ON kv ((substring(key from 1 for 1024))) WHERE octet_length(key) >= 1024;
    ALTER TABLE kv SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_insert_scale_factor = 0.02);
    ANALYZE kv;
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)


def check_declarations(migrations: list[str], min_compatible: dict[int, int]) -> None:
    """Every migration declares its ``min_compatible`` (1 <= it <= its own number, never
    lower than the migration before it's).

    Raises:
        K8sSqlError: a migration without a declaration, or an impossible one.
    """
    previous = 1
    for version in range(1, len(migrations) + 1):
        value = min_compatible.get(version)
        if value is None or not previous <= value <= version:
            raise K8sSqlError(f"shim schema migration {version} declares min_compatible {value}: it must be between "
                              f"{previous} and {version}", where="k8s_sql/shim/storage/schema.py",
                              hint="add it to MIN_COMPATIBLE: keep the previous value if the migration only adds, "
                                   "else its own number")
        previous = value


check_declarations(MIGRATIONS, MIN_COMPATIBLE)


def offline_migrations() -> frozenset[int]:
    """The migrations a shim of the schema just before cannot run beside (``min_compatible``
    equal to their own number, from 2 on): crossing one needs every older shim stopped."""
    return frozenset(v for v, m in MIN_COMPATIBLE.items() if v > 1 and m > v - 1 and v <= len(MIGRATIONS))


class SchemaTooNew(K8sSqlError):
    """The database's schema is newer than this shim's and needs a newer shim (its
    ``min_compatible`` is above :data:`SCHEMA_VERSION`)."""


async def _min_compatible_column(conn) -> None:
    """Add ``schema_version.min_compatible`` when missing (a database of a shim before the
    column) and fill the rows this shim has declarations for. Old shims insert ``(version)``
    only: the column is nullable."""
    row = await (await conn.execute(
        "SELECT 1 FROM pg_attribute WHERE attrelid = 'schema_version'::regclass "
        "AND attname = 'min_compatible' AND NOT attisdropped")).fetchone()
    if row is None:
        await conn.execute("ALTER TABLE schema_version ADD COLUMN min_compatible int")
    for version, value in MIN_COMPATIBLE.items():
        if version <= SCHEMA_VERSION:
            await conn.execute("UPDATE schema_version SET min_compatible = %s "
                               "WHERE version = %s AND min_compatible IS NULL", (value, version))


async def migrate(conn) -> int:
    """Bring the schema to :data:`SCHEMA_VERSION` on ``conn`` (a psycopg AsyncConnection).

    Safe with several shims starting at once (advisory lock). Returns the version found
    before migrating. A database at a newer schema is left as it is: this shim runs on it
    (with a warning) when its :data:`SCHEMA_VERSION` >= the database's ``min_compatible``.

    Raises:
        SchemaTooNew: the database's schema needs a newer shim (names both versions).
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version int NOT NULL)")
        await _min_compatible_column(conn)
        row = await (await conn.execute(
            "SELECT version, min_compatible FROM schema_version ORDER BY version DESC LIMIT 1")).fetchone()
        found, needed = (row[0], row[1]) if row else (0, None)
        if found > SCHEMA_VERSION:
            if needed is None or needed > SCHEMA_VERSION:
                raise SchemaTooNew(
                    f"the datastore's shim schema is version {found}, which needs a shim of schema version "
                    f"{needed if needed is not None else found} or newer; this shim's is {SCHEMA_VERSION}",
                    hint="run the newer shim image on this node (`k8s-sql upgrade node`, or `k8s-sql init phase "
                         "shim` with the k8s-sql version that upgraded the datastore); a schema is never "
                         "migrated back")
            log.warning("the datastore's shim schema is version %d, newer than this shim's %d; running on it "
                        "(it stays compatible down to version %d): upgrade this node's shim to finish the rollout",
                        found, SCHEMA_VERSION, needed)
            return found
        for version in range(found + 1, SCHEMA_VERSION + 1):
            await conn.execute(MIGRATIONS[version - 1])
            await conn.execute("INSERT INTO schema_version (version, min_compatible) VALUES (%s, %s)",
                               (version, MIN_COMPATIBLE[version]))
        return found
