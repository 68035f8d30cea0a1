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
