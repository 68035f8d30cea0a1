"""The storage interface the gRPC layer uses (semantics of etcd's mvcc store).

Revisions are int64 store revisions as in etcd: every mutating request gets exactly one
new revision; read-only requests and deletes that delete nothing get none.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar
from enum import IntEnum


# The storage layer's own enums; the API layer maps etcd's protobuf enums onto them
# (api/convert.py), so nothing here depends on protobuf numbering.

class EventKind(IntEnum):
    """What a watch event records (etcd mvccpb.Event.EventType)."""
    PUT = 0
    DELETE = 1


class SortOrder(IntEnum):
    """etcd RangeRequest.SortOrder."""
    NONE = 0
    ASCEND = 1
    DESCEND = 2


class SortTarget(IntEnum):
    """etcd RangeRequest.SortTarget."""
    KEY = 0
    VERSION = 1
    CREATE = 2
    MOD = 3
    VALUE = 4


class CompareTarget(IntEnum):
    """etcd Compare.CompareTarget."""
    VERSION = 0
    CREATE = 1
    MOD = 2
    VALUE = 3
    LEASE = 4


class CompareResult(IntEnum):
    """etcd Compare.CompareResult."""
    EQUAL = 0
    GREATER = 1
    LESS = 2
    NOT_EQUAL = 3


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
    kind: EventKind
    kv: KeyValue
    prev_kv: KeyValue | None


T = TypeVar("T")


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
    """Put with ignore_value/ignore_lease on a key that does not exist (etcd ErrKeyNotFound,
    gRPC INVALID_ARGUMENT)."""

    def __init__(self):
        super().__init__("key not found")


class LeaseTTLTooLargeError(StorageError):
    """LeaseGrant with a TTL above etcd's lease.MaxLeaseTTL (etcd ErrLeaseTTLTooLarge, gRPC OUT_OF_RANGE)."""

    def __init__(self):
        super().__init__("too large lease TTL")


class InternalError(StorageError):
    """One request failed for a reason of its own that etcd has no error for: a SQL error
    specific to it, or a bug in its handling. Only that request fails (gRPC UNKNOWN, as etcd
    answers errors it has no code for); the datastore is fine, so it is not UNAVAILABLE."""


class KV(ABC):
    """etcd API v3 KV (rpc.proto), free of protobuf. Every method raises UnavailableError
    when the datastore is unreachable and InternalError for a request's own failure."""

    @abstractmethod
    async def range(self, op: RangeOp) -> RangeResult:
        """KV.Range (linearizable). Raises CompactedError, FutureRevisionError."""

    @abstractmethod
    async def put(self, op: PutOp) -> PutResult:
        """KV.Put. Raises KeyNotFoundError (ignore_value/ignore_lease on a missing key),
        LeaseNotFoundError."""

    @abstractmethod
    async def delete_range(self, op: DeleteOp) -> DeleteResult:
        """KV.DeleteRange."""

    @abstractmethod
    async def txn(self, op: TxnOp) -> TxnResult:
        """KV.Txn. Raises the StorageError of a failing check (as Range and Put do)."""

    @abstractmethod
    async def compact(self, revision: int) -> int:
        """KV.Compact (physical); returns the header revision. Raises CompactedError,
        FutureRevisionError."""


class Lease(ABC):
    """etcd API v3 Lease. TTLs are seconds; the header revision comes last in each answer."""

    @abstractmethod
    async def lease_grant(self, ttl: int, lease_id: int = 0) -> tuple[int, int, int]:
        """LeaseGrant (``lease_id`` 0 = choose one): (id, ttl, revision). Raises
        LeaseExistsError, LeaseTTLTooLargeError."""

    @abstractmethod
    async def lease_revoke(self, lease_id: int) -> int:
        """LeaseRevoke (its keys deleted at one revision): the revision. Raises LeaseNotFoundError."""

    @abstractmethod
    async def lease_keepalive(self, lease_id: int) -> tuple[int, int]:
        """One LeaseKeepAlive: (ttl, revision); ttl 0 = not found."""

    @abstractmethod
    async def lease_time_to_live(self, lease_id: int, keys: bool) -> tuple[int, int, list[bytes], int]:
        """LeaseTimeToLive: (remaining seconds or -1 = not found, granted TTL, attached keys
        if ``keys``, revision)."""

    @abstractmethod
    async def leases(self) -> tuple[list[int], int]:
        """LeaseLeases: (ids, revision)."""


class Subscription(ABC):
    """One watcher's events: an async iterator of ``(events, revision)`` batches in revision
    order, each event once (``revision``: the header revision to send them with). Iteration
    raises CompactedError when compaction removed events it still needed (etcd cancels the
    watch with that compact revision)."""

    def __aiter__(self):
        return self

    @abstractmethod
    async def __anext__(self) -> tuple[list[Event], int]:
        """The next batch."""

    @property
    @abstractmethod
    def synced(self) -> bool:
        """True when every event up to :meth:`Watch.watch_revision` has been taken."""

    @abstractmethod
    def close(self) -> None:
        """End the subscription."""


class Watch(ABC):
    """etcd API v3 Watch: subscriptions and progress."""

    @abstractmethod
    def subscribe(self, key: bytes, range_end: bytes, start_revision: int, prev_kv: bool,
                  filters: frozenset[EventKind]) -> Subscription:
        """Events of etcd's range (``key``, ``range_end``) from ``start_revision`` on, with
        prev_kv if asked, without the kinds in ``filters``."""

    @abstractmethod
    def watch_revision(self) -> int:
        """The revision up to which every event has been handed to the subscriptions."""

    @abstractmethod
    async def watch_progress(self) -> int:
        """Wait until every event up to the store revision has been handed to the
        subscriptions; returns :meth:`watch_revision` (etcd's progress notification)."""


class Backend(KV, Lease, Watch):
    """The storage interface the gRPC servicers are written against: :class:`KV`,
    :class:`Lease`, :class:`Watch`, and the revisions and reads the periphery uses
    (maintenance servicer, /metrics, /health) below.

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

    @abstractmethod
    async def hash_kv_events(self, revision: int, consume: Callable[[list[Event]], None]) -> HashKVScan:
        """Feed ``consume`` the versions etcd's ``HashByRev(revision)`` hashes (etcd 3.4
        mvcc/kvstore.go), in batches, in revision then sub order, from one snapshot.

        The versions are: every one with compact revision < revision <= ``revision`` (deletes
        included); of those at or below the compact revision, the ones still current at
        ``revision``, or, when no key is live at ``revision`` (etcd's keep set is empty), each
        key's version that was live at the compact revision (what etcd hashes once its
        background compaction has finished; before, it hashes more). ``revision`` 0 means
        the current revision, a negative one selects nothing (as in etcd). A delete's event
        carries only its key.

        Raises CompactedError (0 < ``revision`` <= compact revision: etcd refuses the compact
        revision itself here), FutureRevisionError, UnavailableError (not retried, since
        ``consume`` may have seen part of the versions).
        """

    @abstractmethod
    async def stored_state(self, consume: Callable[[list[Event]], None]) -> tuple[int, list[tuple[int, int]]]:
        """Feed ``consume`` every stored version (the whole history kept since the last
        compaction, deletes included) like :meth:`hash_kv_events`, and return the store
        revision and every granted lease as (id, TTL seconds) in id order, all from one
        snapshot. Raises UnavailableError (not retried)."""


    @abstractmethod
    async def snapshot_scan(self, produce: Callable[[SnapshotScan, Callable[[], AsyncIterator[list[Event]]]],
                                                    Awaitable[T]]) -> T:
        """Run ``await produce(scan, versions)`` inside one read-only snapshot of the store
        (etcd API v3 Maintenance.Snapshot) and return its result. ``scan`` has the store
        revision, compact revision and leases; each call of ``versions()`` iterates, in
        batches in (revision, sub) order, every version etcd's backend would hold in its
        ``key`` bucket, the same each time (a writer can lay the file out in one pass and
        stream it in a second, without a temporary file).

        The versions are the stored history (see :meth:`stored_state`) without the deletes at
        or below the compact revision (etcd's compaction removes those tombstones). A delete's
        event carries only its key. Raises UnavailableError (not retried), and what
        ``produce`` raises.
        """


@dataclass(frozen=True, slots=True)
class SnapshotScan:
    """What :meth:`Backend.snapshot_scan` read besides the versions: the store ``revision``,
    ``compact_revision`` (0 = never compacted) and ``leases`` as (ID, granted TTL seconds) in ID order."""

    revision: int
    compact_revision: int
    leases: list[tuple[int, int]]


@dataclass(frozen=True, slots=True)
class HashKVScan:
    """Revisions of one :meth:`Backend.hash_kv_events` snapshot: the store ``revision``,
    ``compact_revision`` (0 = never compacted) and ``hash_revision``, the revision the
    versions were selected up to."""

    revision: int
    compact_revision: int
    hash_revision: int


# --- requests and results of the KV API (etcd API v3, rpc.proto), free of protobuf ---

#: etcd's range end meaning "every key >= key" (an empty range end means "this key only").
FROM_KEY = b"\0"


def in_range(key: bytes, start: bytes, range_end: bytes) -> bool:
    """True when ``key`` is in etcd's range (``start``, ``range_end``): ``range_end`` b"" =
    ``start`` only, :data:`FROM_KEY` = every key >= ``start``, else [start, range_end)."""
    if not range_end:
        return key == start
    if range_end == FROM_KEY:
        return key >= start
    return start <= key < range_end


@dataclass(slots=True)
class RangeOp:
    """etcd API v3 KV.Range. ``range_end`` b"" = one key, b"\\0" = every key >= ``key``;
    ``revision`` 0 = current; sort_order/sort_target are :class:`SortOrder`/:class:`SortTarget`
    (another number: one etcd does not know, which it treats as no sort / the key)."""

    key: bytes
    range_end: bytes = b""
    limit: int = 0
    revision: int = 0
    keys_only: bool = False
    count_only: bool = False
    sort_order: int = 0
    sort_target: int = 0
    min_mod_revision: int = 0
    max_mod_revision: int = 0
    min_create_revision: int = 0
    max_create_revision: int = 0


@dataclass(slots=True)
class RangeResult:
    """etcd RangeResponse: header ``revision`` (the store revision), kvs, more, count."""

    revision: int
    kvs: list[KeyValue]
    more: bool
    count: int


@dataclass(slots=True)
class PutOp:
    """etcd API v3 KV.Put."""

    key: bytes
    value: bytes = b""
    lease: int = 0
    prev_kv: bool = False
    ignore_value: bool = False
    ignore_lease: bool = False


@dataclass(slots=True)
class PutResult:
    """etcd PutResponse: header ``revision`` and the previous kv when asked for."""

    revision: int
    prev_kv: KeyValue | None


@dataclass(slots=True)
class DeleteOp:
    """etcd API v3 KV.DeleteRange (same range rules as :class:`RangeOp`)."""

    key: bytes
    range_end: bytes = b""
    prev_kv: bool = False


@dataclass(slots=True)
class DeleteResult:
    """etcd DeleteRangeResponse: header ``revision``, number deleted, deleted kvs when asked for."""

    revision: int
    deleted: int
    prev_kvs: list[KeyValue]


@dataclass(slots=True)
class Compare:
    """One etcd Compare: ``target`` and ``result`` are :class:`CompareTarget` and
    :class:`CompareResult` (another number: one etcd does not know); ``operand`` is
    the target_union value, or None when the union holds another target (etcd then
    compares with 0 / b"")."""

    key: bytes
    range_end: bytes
    target: int
    result: int
    operand: int | bytes | None


@dataclass(slots=True)
class TxnOp:
    """etcd API v3 KV.Txn: ops are RangeOp, PutOp, DeleteOp or nested TxnOp."""

    compares: list[Compare]
    success: list
    failure: list


@dataclass(slots=True)
class TxnResult:
    """etcd TxnResponse. ``revision`` is 0 for a nested txn (etcd leaves its header empty)."""

    revision: int
    succeeded: bool
    responses: list


class UnavailableError(StorageError):
    """The datastore is unreachable or cannot take the request now (connection lost, server
    shutting down or out of resources, a serialization failure): retry. gRPC UNAVAILABLE,
    which clients retry; never used for a request's own failure."""
