"""What a migration source yields: etcd's state at one revision, as rows of the shim's log.

A source (:class:`Source`) gives the store revision R, the compact revision C, every stored
version from the state at C up to R in (revision, sub) order, the leases, and what etcd says
about R (live key count, HashKV) so the importer can verify the copy.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class LogRow:
    """One version of a key as etcd's mvcc backend holds it (bucket ``key``: revision, sub).

    A delete (etcd's tombstone) has ``deleted`` set and empty value, create_revision 0,
    version 0 and lease 0, as the shim writes it.
    """

    revision: int
    sub: int
    key: bytes
    value: bytes
    create_revision: int
    version: int
    lease: int
    deleted: bool


@dataclass(frozen=True, slots=True)
class Lease:
    """A granted lease (etcd API v3 LeaseTimeToLive): ``granted_ttl`` and ``remaining_ttl``
    in seconds; ``remaining_ttl`` 0 for a lease that expired while it was read (the shim
    then expires it at once, as etcd does); ``keys`` attached to it."""

    id: int
    granted_ttl: int
    remaining_ttl: int
    keys: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class Expected:
    """What the source says about revision R, checked after the import: ``keys`` live at R,
    ``hash`` = etcd's HashKV(``hash_revision``) (``None`` when the source cannot tell),
    ``hash_revision`` = R, or 0 (current) when R is the compact revision (HashKV refuses it)."""

    keys: int
    hash: int | None
    hash_revision: int


class Source(Protocol):
    """A migration source (etcd API v3 or an etcd snapshot file)."""

    #: Human-readable origin: ``https://10.0.0.1:2379`` or a file path.
    description: str
    #: Store revision R the copy is taken at.
    revision: int
    #: etcd's compact revision C (0 if never compacted).
    compact_revision: int
    #: What to do when the copy does not verify against :meth:`expected` (the error's hint).
    mismatch_hint: str

    def log_rows(self) -> Iterator[LogRow]:
        """Every version the shim's log keeps at R, each once: each key's version live at
        C (in key order), then every event in (C, R] in (revision, sub) order."""

    def leases(self) -> list[Lease]:
        """The granted leases."""

    def expected(self) -> Expected:
        """etcd's own answers at R for the verification."""
