"""Which operating system a node runs (``/etc/os-release``) and what k8s-sql supports.

Supported: Debian 12 (bookworm) and 13 (trixie), Ubuntu 24.04 (noble). Releases known not
to work are refused with the reason (:data:`UNSUPPORTED`).
``default_postgres`` is the PostgreSQL major the distribution ships (its ``postgresql``
metapackage); other majors come from apt.postgresql.org.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from k8s_sql.errors import K8sSqlError

OS_RELEASE = "/etc/os-release"


@dataclass(frozen=True)
class OsInfo:
    """A supported distribution release: ``id`` (debian/ubuntu), ``version_id`` ("12",
    "24.04"), ``codename`` (bookworm), ``pretty`` name and ``default_postgres`` major."""

    id: str
    version_id: str
    codename: str
    pretty: str
    default_postgres: int


#: (ID, VERSION_ID) -> (codename, PostgreSQL major of the distribution)
SUPPORTED: dict[tuple[str, str], tuple[str, int]] = {
    ("debian", "12"): ("bookworm", 15),
    ("debian", "13"): ("trixie", 17),
    ("ubuntu", "24.04"): ("noble", 16),
}

#: (ID, VERSION_ID) -> why k8s-sql does not run there.
UNSUPPORTED: dict[tuple[str, str], str] = {
    ("ubuntu", "22.04"): "its Python is 3.10 (k8s-sql needs 3.11), and its libpq 14 does not match IP addresses "
                         "in server certificates, so the verify-full connection to 127.0.0.1 fails",
}


def parse_os_release(text: str) -> dict[str, str]:
    """``KEY=value`` lines (shell quoting, as in os-release(5)) -> dict; comments skipped."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        try:
            parts = shlex.split(value)
        except ValueError:
            parts = [value.strip("\"'")]
        out[key.strip()] = parts[0] if parts else ""
    return out


def detect(text: str | None, where: str = OS_RELEASE) -> OsInfo:
    """The supported release described by an os-release file's ``text``.

    Raises:
        K8sSqlError: the file is missing (``text`` is None) or the release is not supported;
            the message lists the supported ones.
    """
    supported = ", ".join(f"{i.capitalize()} {v}" for i, v in SUPPORTED)
    if text is None:
        raise K8sSqlError("cannot tell the operating system: os-release is missing", where=where,
                          hint=f"k8s-sql supports {supported}")
    fields = parse_os_release(text)
    key = (fields.get("ID", ""), fields.get("VERSION_ID", ""))
    if key not in SUPPORTED:
        name = fields.get("PRETTY_NAME") or f"{key[0]} {key[1]}".strip() or "unknown"
        why = f": {UNSUPPORTED[key]}" if key in UNSUPPORTED else ""
        raise K8sSqlError(f"{name} is not supported{why}", where=where, hint=f"use one of: {supported}")
    codename, pg = SUPPORTED[key]
    return OsInfo(key[0], key[1], fields.get("VERSION_CODENAME") or codename,
                  fields.get("PRETTY_NAME", f"{key[0]} {key[1]}"), pg)
