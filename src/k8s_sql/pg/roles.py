"""The shim's least-privilege role and its database, as SQL for psql.

The role: ``LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS`` and no
password (``PASSWORD NULL``: it authenticates only with its client certificate). It owns
its database, which PUBLIC may not connect to or make temporary tables in.
"""

from __future__ import annotations

from dataclasses import dataclass

ROLE_ATTRS = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD NULL"


def quote_ident(name: str) -> str:
    """A double-quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


@dataclass(frozen=True)
class RoleFacts:
    """What the server says about the role and database (``None`` fields: it does not exist)."""

    role_exists: bool
    role_ok: bool
    db_owner: str | None
    public_access: bool


def facts_sql(role: str, database: str) -> str:
    """One query returning ``role_exists|role_ok|db_owner|public_access`` (psql -A -t;
    ``t``/``f`` booleans). Needs a superuser (reads pg_authid)."""
    r, d = quote_literal(role), quote_literal(database)
    return (
        f"SELECT EXISTS (SELECT 1 FROM pg_authid WHERE rolname = {r}), "
        f"EXISTS (SELECT 1 FROM pg_authid WHERE rolname = {r} AND rolcanlogin AND NOT rolsuper AND NOT rolcreatedb "
        f"AND NOT rolcreaterole AND NOT rolreplication AND NOT rolbypassrls AND rolpassword IS NULL), "
        f"(SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = {d}), "
        f"COALESCE((SELECT has_database_privilege('public', {d}, 'CONNECT') "
        f"OR has_database_privilege('public', {d}, 'TEMPORARY') FROM pg_database WHERE datname = {d}), false)")


def parse_facts(out: str) -> RoleFacts:
    """Parse :func:`facts_sql`'s output line."""
    f = out.strip().split("|")
    return RoleFacts(f[0] == "t", f[1] == "t", f[2] or None, f[3] == "t")


def statements(role: str, database: str, facts: RoleFacts) -> list[tuple[str, str]]:
    """``(description, sql)`` steps that bring the role and database to the wanted state;
    ``[]`` when they are right. ``CREATE DATABASE`` cannot run in a transaction, so each
    step is its own psql call."""
    ri, di = quote_ident(role), quote_ident(database)
    steps = []
    if not facts.role_exists:
        steps.append((f"create role {role} ({ROLE_ATTRS})", f"CREATE ROLE {ri} {ROLE_ATTRS}"))
    elif not facts.role_ok:
        steps.append((f"alter role {role} to {ROLE_ATTRS}", f"ALTER ROLE {ri} {ROLE_ATTRS}"))
    if facts.db_owner is None:
        steps.append((f"create database {database} owned by {role}", f"CREATE DATABASE {di} OWNER {ri}"))
    elif facts.db_owner != role:
        steps.append((f"make {role} the owner of database {database}", f"ALTER DATABASE {di} OWNER TO {ri}"))
    if facts.db_owner is None or facts.public_access:
        steps.append((f"revoke CONNECT, TEMPORARY on database {database} from PUBLIC",
                      f"REVOKE CONNECT, TEMPORARY ON DATABASE {di} FROM PUBLIC"))
    return steps
