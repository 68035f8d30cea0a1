"""The storage interface the gRPC layer uses (semantics of etcd's mvcc store).

Revisions are int64 store revisions as in etcd: every mutating request gets exactly one
new revision; read-only requests and deletes that delete nothing get none.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One version of a key (etcd mvccpb.KeyValue). Revisions are store revisions."""

    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int


@dataclass(frozen=True, slots=True)
class Event:
    """One watch event (etcd mvccpb.Event): a put or delete at ``revision``, ordered by ``sub`` within it."""

    revision: int
    sub: int
    kind: int  # 0 = PUT, 1 = DELETE (mvccpb.Event.EventType)
    kv: KeyValue
    prev_kv: KeyValue | None


class StorageError(Exception):
    """Base of errors the API layer maps to etcd's gRPC errors."""


class CompactedError(StorageError):
    """The requested revision is below the compact revision (etcd ErrCompacted)."""

    def __init__(self, compact_revision: int):
        super().__init__("mvcc: required revision has been compacted")
        self.compact_revision = compact_revision


class FutureRevisionError(StorageError):
    """The requested revision is above the current revision (etcd ErrFutureRev)."""

    def __init__(self):
        super().__init__("mvcc: required revision is a future revision")


class LeaseNotFoundError(StorageError):
    """The lease does not exist (etcd ErrLeaseNotFound)."""

    def __init__(self):
        super().__init__("requested lease not found")


class LeaseExistsError(StorageError):
    """LeaseGrant with an ID already in use (etcd ErrLeaseExists)."""

    def __init__(self):
        super().__init__("lease already exists")


class KeyNotFoundError(StorageError):
    """Put with ignore_value/ignore_lease on a key that does not exist (etcd ErrKeyNotFound)."""

    def __init__(self):
        super().__init__("key not found")


class Backend(ABC):
    """Read API shared with the periphery (maintenance servicer, /metrics, /health).

    All methods are coroutines; they raise ``ConnectionError`` subclasses or psycopg
    ``OperationalError`` when the database is unreachable.
    """

    @abstractmethod
    async def current_revision(self) -> int:
        """The store revision (etcd header.revision): the revision of the last write."""

    @abstractmethod
    async def compact_revision(self) -> int:
        """The last compaction revision, 0 if never compacted."""

    @abstractmethod
    async def db_size_bytes(self) -> int:
        """Size in bytes of the shim's tables and indexes (etcd Status.dbSize)."""

    @abstractmethod
    async def ping(self) -> None:
        """Round trip to the database; raises when it is unreachable."""
