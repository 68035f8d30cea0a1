"""Applying etcd requests inside one PostgreSQL transaction (etcd API v3 KV and Lease semantics).

The general write path: txns the batch function (:mod:`.batch`) does not take, compaction
and lease revoke. An :class:`Applier` serves one request. The writer (:mod:`.writer`) creates it with the store
revision as it stands inside the writer's transaction; every change the request makes is
written at ``begin + 1`` (one revision per request, a txn included, as in etcd) and numbered
by ``sub`` in the order etcd would emit the events. Requests are validated before anything is
written (etcd's checkRequests), so a refused request leaves no trace in the transaction.

Sources: etcd 3.4 ``etcdserver/apply.go`` (Put, DeleteRange, Range, Txn with compareToPath,
checkRequestPut, checkRequestRange) and ``mvcc/kvstore_txn.go`` (revisions seen inside a txn).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from k8s_sql.shim.storage import mvcc, queries
from k8s_sql.shim.storage.ranges import read_range
from k8s_sql.shim.storage.base import (
    CompactedError, DeleteOp, DeleteResult, FutureRevisionError, KeyNotFoundError, KeyValue, LeaseNotFoundError,
    PutOp, PutResult, RangeOp, RangeResult, TxnOp, TxnResult)

@dataclass
class _Path:
    """Outcome of a txn's compares and, in order, of the nested txns on the chosen branch."""

    succeeded: bool
    children: list["_Path"] = field(default_factory=list)


def is_read_only(op) -> bool:
    """etcd isTxnReadonly: a txn whose every op, on both branches and nested, is a range."""
    if isinstance(op, RangeOp):
        return True
    if isinstance(op, TxnOp):
        return all(is_read_only(o) for o in op.success) and all(is_read_only(o) for o in op.failure)
    return False


def _has_ignore_put(op) -> bool:
    if isinstance(op, PutOp):
        return op.ignore_value or op.ignore_lease
    if isinstance(op, TxnOp):
        return any(_has_ignore_put(o) for o in op.success + op.failure)
    return False


class Applier:
    """Applies one request on ``conn`` (inside an open transaction).

    Args:
        conn: a psycopg AsyncConnection in a transaction.
        revision: the store revision before this request.
        compact_revision: the compact revision in the same transaction.
    Attributes:
        changes: number of events written so far (0 = the request changed nothing, so it
            does not consume a revision).
    """

    def __init__(self, conn, revision: int, compact_revision: int):
        self.conn = conn
        self.begin = revision
        self.compact_revision = compact_revision
        self.changes = 0

    @property
    def write_revision(self) -> int:
        """The revision this request's changes carry."""
        return self.begin + 1

    @property
    def view_revision(self) -> int:
        """The revision a read inside the request reports (etcd storeTxnWrite.Range)."""
        return self.begin + 1 if self.changes else self.begin

    async def _rows(self, sql: str, params: dict) -> list:
        cur = await self.conn.execute(sql, params, prepare=True)
        return await cur.fetchall()

    # --- reads ---

    async def range(self, op: RangeOp) -> RangeResult:
        """etcd KV.Range inside the request; sees the request's own earlier changes when
        ``op.revision`` is 0. Revision checks are the caller's (see :meth:`check_range`)."""
        _, _, res = await read_range(self.conn, op, now=self.view_revision)
        res.revision = self.view_revision
        return res

    async def _kvs(self, key: bytes, range_end: bytes) -> list[KeyValue]:
        rows = await self._rows(queries.current_rows(range_end, False, 0), {"key": key, "end": range_end})
        return [queries.kv_from_row(r) for r in rows]

    async def lease_exists(self, lease: int) -> bool:
        """True when lease ``lease`` is granted (and not yet revoked or expired away)."""
        return bool(await self._rows(queries.LEASE_EXISTS, {"id": lease}))

    # --- checks (etcd checkRequestPut / checkRequestRange) ---

    async def check_put(self, op: PutOp) -> None:
        """Raise KeyNotFoundError (ignore_value/ignore_lease on a missing key) or
        LeaseNotFoundError before anything is written."""
        if op.ignore_value or op.ignore_lease:
            if not await self._kvs(op.key, b""):
                raise KeyNotFoundError()
        if op.lease and not await self.lease_exists(op.lease):
            raise LeaseNotFoundError()

    def check_range(self, op: RangeOp) -> None:
        """Raise FutureRevisionError / CompactedError for a range at an unusable revision."""
        if op.revision == 0:
            return
        if op.revision > self.begin:
            raise FutureRevisionError()
        if op.revision < self.compact_revision:
            raise CompactedError(self.compact_revision)

    # --- writes ---

    async def put(self, op: PutOp, checked: bool = False) -> PutResult:
        """etcd KV.Put: new version at :attr:`write_revision`; returns the previous kv if asked."""
        if not checked:
            await self.check_put(op)
        elif (op.ignore_value or op.ignore_lease) and not await self._kvs(op.key, b""):
            raise KeyNotFoundError()  # deleted earlier in the same txn (etcd 3.4 crashes here)
        rows = await self._rows(queries.PUT, {"key": op.key, "value": op.value, "lease": op.lease,
                                              "iv": op.ignore_value, "il": op.ignore_lease,
                                              "rev": self.write_revision, "sub": self.changes})
        self.changes += 1
        prev = queries.kv_from_row(rows[0]) if rows and op.prev_kv else None
        return PutResult(self.write_revision, prev)

    async def delete_range(self, op: DeleteOp) -> DeleteResult:
        """etcd KV.DeleteRange: a delete event per live key in the range, in key order."""
        return await self._delete(queries.key_predicate(op.range_end), {"key": op.key, "end": op.range_end},
                                  op.prev_kv)

    async def delete_lease_keys(self, lease: int) -> int:
        """Delete every key attached to ``lease`` (lease revoke/expiry). Returns how many."""
        res = await self._delete(queries.LEASE_KEYS, {"lease": lease}, False)
        return res.deleted

    async def _delete(self, predicate: str, params: dict, returning: bool) -> DeleteResult:
        params = dict(params, rev=self.write_revision, sub=self.changes)
        rows = await self._rows(queries.delete_rows(predicate, returning), params)
        if returning:
            prev = [queries.kv_from_row(r) for r in rows]
            n = len(prev)
        else:
            prev, n = [], rows[0][0]
        self.changes += n
        return DeleteResult(self.view_revision, n, prev)

    # --- txn ---

    async def txn(self, op: TxnOp) -> TxnResult:
        """etcd KV.Txn: every compare (nested ones too) is evaluated against the state before
        the txn, the chosen branches are checked, then applied in order at one revision."""
        path = await self._path(op)
        if not is_read_only(op):
            await self._check(op, path, puts=True)
        await self._check(op, path, puts=False)
        if not _has_ignore_put(op):
            result = await self._apply(op, path)
        else:  # such a put can still fail after earlier ops wrote: undo them (a savepoint)
            try:
                async with self.conn.transaction():
                    result = await self._apply(op, path)
            except KeyNotFoundError:
                self.changes = 0
                raise
        result.revision = self.view_revision
        return result

    async def _path(self, op: TxnOp) -> _Path:
        ok = True
        for c in op.compares:
            if not mvcc.compare_range(c, await self._kvs(c.key, c.range_end)):
                ok = False
                break
        path = _Path(ok)
        for sub in (op.success if ok else op.failure):
            if isinstance(sub, TxnOp):
                path.children.append(await self._path(sub))
        return path

    async def _check(self, op: TxnOp, path: _Path, puts: bool) -> None:
        children = iter(path.children)
        for sub in (op.success if path.succeeded else op.failure):
            if isinstance(sub, TxnOp):
                await self._check(sub, next(children), puts)
            elif puts and isinstance(sub, PutOp):
                await self.check_put(sub)
            elif not puts and isinstance(sub, RangeOp):
                self.check_range(sub)

    async def _apply(self, op: TxnOp, path: _Path) -> TxnResult:
        children = iter(path.children)
        responses = []
        for sub in (op.success if path.succeeded else op.failure):
            if isinstance(sub, RangeOp):
                responses.append(await self.range(sub))
            elif isinstance(sub, PutOp):
                responses.append(await self.put(sub, checked=True))
            elif isinstance(sub, DeleteOp):
                responses.append(await self.delete_range(sub))
            else:
                responses.append(await self._apply(sub, next(children)))
        return TxnResult(0, path.succeeded, responses)

    # --- compaction and leases ---

    async def compact(self, revision: int) -> None:
        """etcd KV.Compact (physical): drop every version superseded at or before ``revision``
        and the tombstones below it; the state at ``revision`` and every event from
        ``revision`` on stay, so a watch from the compact revision sees all of it. (etcd
        removes tombstones at the compact revision too, but in the background, so whether
        such a watch sees those deletes depends on timing there.)

        Raises CompactedError (revision <= compact revision) or FutureRevisionError.
        """
        if revision <= self.compact_revision:
            raise CompactedError(self.compact_revision)
        if revision > self.begin:
            raise FutureRevisionError()
        params = {"from": self.compact_revision, "rev": revision}
        # each version <= rev supersedes its predecessor (prev_revision): delete those
        await self.conn.execute(queries.COMPACT_SUPERSEDED, params)
        await self.conn.execute(queries.COMPACT_TOMBSTONES, params)
        await self.conn.execute(queries.SET_COMPACT_REVISION, params)
        self.compact_revision = revision

    async def revoke(self, lease: int, only_expired: bool = False) -> bool:
        """Remove ``lease`` and delete its keys at one revision (etcd Lease.LeaseRevoke, and
        expiry). With ``only_expired`` nothing happens unless the lease is still expired
        in this transaction (another shim may have renewed or revoked it).

        Returns True if the lease was removed. Raises LeaseNotFoundError (not only_expired).
        """
        gone = await self._rows(queries.REVOKE_EXPIRED if only_expired else queries.REVOKE, {"id": lease})
        if not gone:
            if only_expired:
                return False
            raise LeaseNotFoundError()
        await self.delete_lease_keys(lease)
        return True
