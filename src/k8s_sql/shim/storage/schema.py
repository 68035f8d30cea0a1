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
"""

from __future__ import annotations

#: Arbitrary but fixed advisory lock key ("k8s-sql" in ASCII) held while migrating.
MIGRATION_LOCK = 0x6B38732D73716C

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
]

SCHEMA_VERSION = len(MIGRATIONS)


async def migrate(conn) -> int:
    """Bring the schema to :data:`SCHEMA_VERSION` on ``conn`` (a psycopg AsyncConnection).

    Safe with several shims starting at once (advisory lock). Returns the version found
    before migrating. Raises RuntimeError if the database has a newer schema than this shim
    knows (an older shim must not write to it).
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version int NOT NULL)")
        row = await (await conn.execute("SELECT max(version) FROM schema_version")).fetchone()
        found = row[0] or 0
        if found > SCHEMA_VERSION:
            raise RuntimeError(f"database schema version {found} is newer than this shim's {SCHEMA_VERSION}; "
                               "upgrade k8s-sql")
        for version in range(found + 1, SCHEMA_VERSION + 1):
            await conn.execute(MIGRATIONS[version - 1])
            await conn.execute("INSERT INTO schema_version VALUES (%s)", (version,))
        return found
