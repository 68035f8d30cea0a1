"""Requests etcd refuses before they reach the store, checked on the protobuf request.

Sources (etcd 3.4): api/v3rpc/key.go — checkRangeRequest, checkPutRequest,
checkDeleteRequest, checkTxnRequest (``--max-txn-ops``, with what is left of it for nested
txns), checkRequestOp, checkIntervals; etcdserver/v3_server.go — processInternalRaftRequestOnce
(``--max-request-bytes``) and isTxnReadonly. Each check raises :class:`.errors.EtcdError`
with etcd's code and message, in etcd's order.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from k8s_sql.shim.api.convert import field_size, varint_size
from k8s_sql.shim.api.errors import (
    ERR_DUPLICATE_KEY, ERR_EMPTY_KEY, ERR_KEY_NOT_FOUND, ERR_LEASE_PROVIDED, ERR_REQUEST_TOO_LARGE, ERR_TOO_MANY_OPS,
    ERR_VALUE_PROVIDED, EtcdError)
from k8s_sql.shim.etcdpb import rpc_pb2
from k8s_sql.shim.settings import DEFAULT_MAX_REQUEST_BYTES, DEFAULT_MAX_TXN_OPS
from k8s_sql.shim.storage.base import FROM_KEY, in_range

# Field numbers of etcd's InternalRaftRequest (etcdserverpb/raft_internal.proto): the
# requests that go through raft, and so through the size check.
PUT, DELETE_RANGE, TXN, COMPACTION, LEASE_GRANT, LEASE_REVOKE = 4, 5, 6, 7, 8, 9
_RAFT_HEADER_FIELD = 100


class Limits:
    """etcd's request limits of one member.

    Args:
        max_request_bytes: ``--max-request-bytes``: most bytes of a marshalled raft request.
        max_txn_ops: ``--max-txn-ops``: most operations in each list of a txn.
        member_id: the member's id; etcd's raft request ids start with its low 16 bits, so
            their size (and the exact limit on a request's own size) depends on it.
        started: the member's start time (Unix seconds); the ids carry it too.
    """

    def __init__(self, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES, max_txn_ops: int = DEFAULT_MAX_TXN_OPS,
                 member_id: int = 0, started: float | None = None):
        self.max_request_bytes = max_request_bytes
        self.max_txn_ops = max_txn_ops
        # etcd pkg/idutil: 16 bits of member id, 40 bits of milliseconds at start, 8 of a counter
        millis = int((time.time() if started is None else started) * 1000)
        request_id = (member_id & 0xFFFF) << 48 | (millis & (2**40 - 1)) << 8
        self._header_bytes = field_size(_RAFT_HEADER_FIELD, 1 + varint_size(request_id))
        self._lease_id_bytes = 1 + varint_size(request_id & (2**63 - 1))

    @classmethod
    def of(cls, settings) -> "Limits":
        """The limits a :class:`k8s_sql.shim.settings.ShimSettings` asks for."""
        return cls(settings.max_request_bytes, settings.max_txn_ops, settings.member_id)

    def raft_request_size(self, field: int, request) -> int:
        """Bytes etcd's InternalRaftRequest carrying ``request`` as field ``field`` marshals to
        (a header with the request id, then the request)."""
        size = request.ByteSize()
        if field == LEASE_GRANT and not request.ID:
            size += self._lease_id_bytes  # etcd picks the id before marshalling
        return self._header_bytes + field_size(field, size)

    def check_size(self, field: int, request) -> None:
        """etcd's --max-request-bytes check of a request that goes through raft.

        Raises EtcdError "etcdserver: request is too large" (INVALID_ARGUMENT).
        """
        if self.raft_request_size(field, request) > self.max_request_bytes:
            raise EtcdError(ERR_REQUEST_TOO_LARGE)

    def check_txn(self, r: rpc_pb2.TxnRequest) -> None:
        """etcd's checks of a TxnRequest before it runs: checkTxnRequest, then checkIntervals
        of each branch. Raises EtcdError."""
        _check_txn(r, self.max_txn_ops)
        _intervals(r.success)
        _intervals(r.failure)


def check_range(r: rpc_pb2.RangeRequest) -> None:
    """etcd checkRangeRequest. Raises EtcdError."""
    if not r.key:
        raise EtcdError(ERR_EMPTY_KEY)


def check_put(r: rpc_pb2.PutRequest) -> None:
    """etcd checkPutRequest. Raises EtcdError."""
    if not r.key:
        raise EtcdError(ERR_EMPTY_KEY)
    if r.ignore_value and r.value:
        raise EtcdError(ERR_VALUE_PROVIDED)
    if r.ignore_lease and r.lease:
        raise EtcdError(ERR_LEASE_PROVIDED)


def check_delete(r: rpc_pb2.DeleteRangeRequest) -> None:
    """etcd checkDeleteRequest. Raises EtcdError."""
    if not r.key:
        raise EtcdError(ERR_EMPTY_KEY)


def txn_is_read_only(r: rpc_pb2.TxnRequest) -> bool:
    """etcd isTxnReadonly: every op of both branches is a range (a nested txn is not). Such a
    txn does not go through raft, so etcd checks no size limit on it."""
    return all(o.WhichOneof("request") == "request_range" for o in list(r.success) + list(r.failure))


def _check_txn(r: rpc_pb2.TxnRequest, max_txn_ops: int) -> None:
    ops = max(len(r.compare), len(r.success), len(r.failure))
    if ops > max_txn_ops:
        raise EtcdError(ERR_TOO_MANY_OPS)
    for c in r.compare:
        if not c.key:
            raise EtcdError(ERR_EMPTY_KEY)
    for o in list(r.success) + list(r.failure):
        _check_op(o, max_txn_ops - ops)


def _check_op(o: rpc_pb2.RequestOp, max_txn_ops: int) -> None:
    which = o.WhichOneof("request")
    if which == "request_range":
        check_range(o.request_range)
    elif which == "request_put":
        check_put(o.request_put)
    elif which == "request_delete_range":
        check_delete(o.request_delete_range)
    elif which == "request_txn":
        _check_txn(o.request_txn, max_txn_ops)
    else:  # an empty op
        raise EtcdError(ERR_KEY_NOT_FOUND)


def _deletes(key: bytes, start: bytes, range_end: bytes) -> bool:
    # checkIntervals reads a range end literally: "\0" is an empty interval here, not "from key"
    return range_end != FROM_KEY and in_range(key, start, range_end)


def _intervals(ops: Sequence[rpc_pb2.RequestOp]) -> tuple[set[bytes], list[tuple[bytes, bytes]]]:
    """etcd checkIntervals for one list of ops: returns its puts and deletes (nested txns
    included), or raises when a key is put twice, or put and deleted, where both could
    apply (a nested txn's then and else branches exclude each other)."""
    dels = [(o.request_delete_range.key, o.request_delete_range.range_end) for o in ops
            if o.WhichOneof("request") == "request_delete_range"]
    puts: set[bytes] = set()

    def deleted(k: bytes) -> bool:
        return any(_deletes(k, start, end) for start, end in dels)
    for o in ops:
        if o.WhichOneof("request") != "request_txn":
            continue
        puts_then, dels_then = _intervals(o.request_txn.success)
        puts_else, dels_else = _intervals(o.request_txn.failure)
        for k in puts_then:
            if k in puts or deleted(k):
                raise EtcdError(ERR_DUPLICATE_KEY)
            puts.add(k)
        for k in puts_else:
            if (k in puts and k not in puts_then) or deleted(k):
                raise EtcdError(ERR_DUPLICATE_KEY)
            puts.add(k)
        dels += dels_then + dels_else
    for o in ops:
        if o.WhichOneof("request") == "request_put":
            k = o.request_put.key
            if k in puts or deleted(k):
                raise EtcdError(ERR_DUPLICATE_KEY)
            puts.add(k)
    return puts, dels
