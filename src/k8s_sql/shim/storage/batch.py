"""Requests of the one-call write path: encoding for ``k8s_sql_write_v1`` and its answers.

Put, DeleteRange and the guarded txns kube-apiserver sends (etcd API v3: at most one compare
on a key, then at most one op on that same key in each branch — create, update, delete,
compaction's version check) are applied by the database function of schema migration 4
(:data:`.schema.WRITE_FUNCTIONS_V1`), a whole batch in one call. :func:`encode` tells which
requests qualify (None = the general path, :class:`.apply.Applier`); :class:`Encoded` holds
the function's arguments of one request and turns its answer rows into the result.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import psycopg
from psycopg.adapt import Dumper
from psycopg.pq import Format

from k8s_sql.shim.storage.base import (
    CompareResult, CompareTarget, DeleteOp, DeleteResult, Event, EventKind, KeyNotFoundError, KeyValue,
    LeaseNotFoundError, PutOp, PutResult, RangeOp, RangeResult, StorageError, TxnOp, TxnResult)

# kinds (the function's ``kinds`` and the txn's ``skinds``/``fkinds``)
NONE, PUT, DELETE, TXN, GET = 0, 1, 2, 3, 3
# flags
PREV_KV, IGNORE_VALUE, IGNORE_LEASE = 1, 2, 4
# the function compares with the numbers of base.CompareTarget and base.CompareResult
# (schema migration 4 fixes them); anything else takes the general path
_TARGETS = frozenset(CompareTarget)
_RESULTS = frozenset(CompareResult)
#: Answer codes: done, etcd's KeyNotFound, etcd's LeaseNotFound, failed alone (SQL error).
OK, KEY_NOT_FOUND, LEASE_NOT_FOUND, FAILED = 0, 1, 2, 3


@dataclass(slots=True)
class Encoded:
    """One request as the function's arguments (``args``, one element of each array) and
    the op it came from (``op``), to build its result."""

    op: PutOp | DeleteOp | TxnOp
    args: tuple

    def write(self, succeeded: bool | None) -> PutOp | DeleteOp | None:
        """The write this request ran given its answer's ``succeeded`` (a txn's branch), or
        None (a txn that only compared or read)."""
        op = self.op
        if isinstance(op, (PutOp, DeleteOp)):
            return op
        branch = op.success if succeeded else op.failure
        return branch[0] if branch and isinstance(branch[0], (PutOp, DeleteOp)) else None

    def result(self, revision: int, succeeded: bool | None, deleted: int | None, kvs: list[KeyValue]):
        """The request's result from its answer row (``kvs``: prev kvs or the get's kv; prev
        kvs the request did not ask for, asked by :func:`arrays` for the watch hub, are left out)."""
        op = self.op
        if isinstance(op, PutOp):
            return PutResult(revision, kvs[0] if kvs and op.prev_kv else None)
        if isinstance(op, DeleteOp):
            return DeleteResult(revision, deleted, kvs if op.prev_kv else [])
        branch = op.success if succeeded else op.failure
        if not branch:
            return TxnResult(revision, succeeded, [])
        inner = branch[0]
        if isinstance(inner, PutOp):
            res = PutResult(revision, kvs[0] if kvs and inner.prev_kv else None)
        elif isinstance(inner, DeleteOp):
            res = DeleteResult(revision, deleted, kvs if inner.prev_kv else [])
        else:
            res = RangeResult(revision, kvs, False, len(kvs))
        return TxnResult(revision, succeeded, [res])

    def events(self, revision: int, succeeded: bool | None, kvs: list[KeyValue]) -> list[Event]:
        """The watch events this request wrote at ``revision`` (etcd mvccpb.Event, prev_kv
        set), built from an answer to a call made with every prev kv asked (:func:`arrays`
        with ``prev_kvs``); [] when it wrote nothing. Mirrors the function's log rows: a put's
        create_revision and version follow its prev kv, a delete event per deleted key in
        key order (``sub``)."""
        w = self.write(succeeded)
        if isinstance(w, PutOp):
            prev = kvs[0] if kvs else None
            value = prev.value if w.ignore_value and prev else w.value
            lease = prev.lease if w.ignore_lease and prev else w.lease
            kv = KeyValue(w.key, value, prev.create_revision if prev else revision, revision,
                          prev.version + 1 if prev else 1, lease)
            return [Event(revision, 0, EventKind.PUT, kv, prev)]
        if isinstance(w, DeleteOp):
            return [Event(revision, i, EventKind.DELETE, KeyValue(p.key, b"", 0, revision, 0, 0), p)
                    for i, p in enumerate(kvs)]
        return []


def refusal(code: int) -> StorageError:
    """The etcd error of an answer code the function refused a request with."""
    return KeyNotFoundError() if code == KEY_NOT_FOUND else LeaseNotFoundError()


def _flags(op: PutOp | DeleteOp) -> int:
    if isinstance(op, DeleteOp):
        return PREV_KV if op.prev_kv else 0
    return ((PREV_KV if op.prev_kv else 0) | (IGNORE_VALUE if op.ignore_value else 0)
            | (IGNORE_LEASE if op.ignore_lease else 0))


def _branch_op(ops: list, key: bytes):
    """The branch's single op if the function can run it on ``key`` (else raise ValueError)."""
    if not ops:
        return None
    if len(ops) > 1:
        raise ValueError
    o = ops[0]
    if isinstance(o, TxnOp) or o.key != key:
        raise ValueError
    if isinstance(o, PutOp):
        return o
    if isinstance(o, DeleteOp) and not o.range_end:
        return o
    if isinstance(o, RangeOp) and o == RangeOp(key):  # a plain get of the key
        return o
    raise ValueError


def _kind(o) -> int:
    if o is None:
        return NONE
    return PUT if isinstance(o, PutOp) else DELETE if isinstance(o, DeleteOp) else GET


def encode(op) -> Encoded | None:
    """The function's arguments for ``op``, or None when it needs the general path (a txn
    with several compares or ops, ranges other than a plain get, writes in both branches,
    other keys, nested txns; compaction and leases)."""
    if isinstance(op, PutOp):
        return Encoded(op, (PUT, op.key, b"", op.value, op.lease, _flags(op), -1, 0, 0, b"", 0, 0))
    if isinstance(op, DeleteOp):
        return Encoded(op, (DELETE, op.key, op.range_end, b"", 0, _flags(op), -1, 0, 0, b"", 0, 0))
    if not isinstance(op, TxnOp) or len(op.compares) > 1:
        return None
    if op.compares:
        c = op.compares[0]
        if c.range_end:
            return None
        key = c.key
    else:
        ops = op.success or op.failure
        if not ops or isinstance(ops[0], TxnOp):
            return None
        key = ops[0].key
    try:
        s, f = _branch_op(op.success, key), _branch_op(op.failure, key)
    except ValueError:
        return None
    writes = [o for o in (s, f) if isinstance(o, (PutOp, DeleteOp))]
    if len(writes) > 1:
        return None
    w = writes[0] if writes else None
    value, lease, flags = (w.value, w.lease, _flags(w)) if isinstance(w, PutOp) else (b"", 0, _flags(w) if w else 0)
    if op.compares:
        c = op.compares[0]
        target, result = c.target, c.result
        cint = c.operand if isinstance(c.operand, int) and not isinstance(c.operand, bool) else 0
        cval = c.operand if isinstance(c.operand, bytes) else b""
    else:
        target, result, cint, cval = -1, 0, 0, b""
    if not -2**63 <= cint < 2**63 or (op.compares and (target not in _TARGETS or result not in _RESULTS)):
        return None  # unknown enum values: the general path's rules
    return Encoded(op, (TXN, key, b"", value, lease, flags, target, result, cint, cval, _kind(s), _kind(f)))


class Int8Array(list):
    """Ints sent as a PostgreSQL ``bigint[]`` (binary; psycopg's generic list dumper costs
    tens of µs per list, more than the rest of a request)."""


class ByteaArray(list):
    """Bytes sent as a PostgreSQL ``bytea[]`` (binary)."""


_HEADER = struct.Struct("!iiiii")  # ndim 1, no nulls, element type, length, lower bound 1
_INT8_OID, _BYTEA_OID = 20, 17


class _Int8ArrayDumper(Dumper):
    format = Format.BINARY
    oid = 1016  # bigint[]

    def dump(self, obj: list[int]) -> bytes:
        n = len(obj)
        if not n:
            return struct.pack("!iii", 0, 0, _INT8_OID)
        items = [8] * (2 * n)
        items[1::2] = obj
        return _HEADER.pack(1, 0, _INT8_OID, n, 1) + struct.pack("!" + "iq" * n, *items)


class _ByteaArrayDumper(Dumper):
    format = Format.BINARY
    oid = 1001  # bytea[]

    def dump(self, obj: list[bytes]) -> bytes:
        if not obj:
            return struct.pack("!iii", 0, 0, _BYTEA_OID)
        parts = [_HEADER.pack(1, 0, _BYTEA_OID, len(obj), 1)]
        for b in obj:
            parts.append(len(b).to_bytes(4, "big"))
            parts.append(b)
        return b"".join(parts)


# process-wide, for these two types only: every connection the shim opens gets them
psycopg.adapters.register_dumper(Int8Array, _Int8ArrayDumper)
psycopg.adapters.register_dumper(ByteaArray, _ByteaArrayDumper)

#: Which of the function's arguments are bytes (the others are ints), in order.
_BYTES_ARGS = (False, True, True, True, False, False, False, False, False, True, False, False)


#: Position of the flags among the function's arguments.
_FLAGS_ARG = 5


def arrays(batch: list[Encoded], isolate: bool, prev_kvs: bool = False) -> list:
    """The function's parameters for ``batch``: one array per argument, then ``isolate``.
    With ``prev_kvs`` every write asks for its prev kvs (what :meth:`Encoded.events` needs)."""
    cols = [list(c) for c in zip(*(e.args for e in batch))]
    if prev_kvs:
        cols[_FLAGS_ARG] = [f | PREV_KV for f in cols[_FLAGS_ARG]]
    return [ByteaArray(c) if b else Int8Array(c) for c, b in zip(cols, _BYTES_ARGS)] + [isolate]
