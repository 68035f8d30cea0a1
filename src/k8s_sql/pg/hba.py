"""k8s-sql's block in ``pg_hba.conf``: the shim's role may reach only its database, only
over TLS from loopback (and from the further control-plane nodes listed by
:mod:`k8s_sql.pg.clients`), only with a client certificate whose CN is the role
(``cert`` authentication). The ``reject`` lines after it make sure no later rule of the
file (``host all all … scram-sha-256`` etc.) lets the role in another way. PostgreSQL uses
the first matching line, so the block goes before every other rule.
"""

from __future__ import annotations

from k8s_sql.config import Cluster

BEGIN = "# BEGIN k8s-sql managed block (do not edit; `k8s-sql reset` removes it)"
END = "# END k8s-sql managed block"


def render_block(cfg: Cluster, clients: list[str] | tuple[str, ...] = ()) -> str:
    """The marked block for ``cfg`` (``postgres.database`` and ``postgres.role``), ending
    with a newline; ``clients`` are further networks in CIDR form (``192.0.2.11/32``), a
    ``hostssl … cert`` line each. Pure function."""
    db, role = cfg.postgres.database, cfg.postgres.role
    return "\n".join([
        BEGIN,
        f"hostssl   {db} {role} 127.0.0.1/32 cert",
        f"hostssl   {db} {role} ::1/128      cert",
        *(f"hostssl   {db} {role} {net} cert" for net in clients),
        f"hostnossl all {role} all reject",
        f"host      all {role} all reject",
        f"local     all {role}     reject",
        END,
    ]) + "\n"


def _is_begin(line: str) -> bool:
    s = line.strip()
    return s.startswith("#") and "k8s-sql" in s and "BEGIN" in s.upper()


def _is_end(line: str) -> bool:
    s = line.strip()
    return s.startswith("#") and "k8s-sql" in s and s.upper().startswith("# END")


def remove_block(text: str) -> str:
    """``text`` without k8s-sql's block(s) (markers included); unchanged when there is
    none, or when a block is not terminated (then nothing is guessed)."""
    out: list[str] = []
    inside: list[str] | None = None
    for line in text.splitlines(keepends=True):
        if inside is None and _is_begin(line):
            inside = [line]
        elif inside is not None:
            inside.append(line)
            if _is_end(line):
                inside = None
        else:
            out.append(line)
    return text if inside is not None else "".join(out)


def merge_block(text: str, block: str) -> str:
    """``text`` with ``block`` in place of any old one, inserted before the first rule
    (the first line that is neither blank nor a comment), so it wins. Nothing else of the
    file changes."""
    rest = remove_block(text)
    lines = rest.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    at = next((i for i, line in enumerate(lines) if line.strip() and not line.lstrip().startswith("#")), len(lines))
    return "".join(lines[:at] + [block] + lines[at:])
