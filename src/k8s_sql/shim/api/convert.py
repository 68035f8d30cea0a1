"""Protobuf ⇄ storage types, response headers, and etcd's gRPC errors.

Error codes and messages are etcd's (api/v3rpc/rpctypes/error.go), so clients such as
kube-apiserver and etcdctl recognise them.
"""

from __future__ import annotations

import grpc

from k8s_sql.shim.etcdpb import kv_pb2, rpc_pb2
from k8s_sql.shim.storage.base import (
    Compare, CompactedError, DeleteOp, FutureRevisionError, KeyNotFoundError, KeyValue, LeaseExistsError,
    LeaseNotFoundError, PutOp, RangeOp, StorageError, TxnOp, UnavailableError)

#: etcd's limit on operations per txn branch (--max-txn-ops default).
MAX_TXN_OPS = 128
RAFT_TERM = 1

ERR_EMPTY_KEY = (grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: key is not provided")
ERR_TOO_MANY_OPS = (grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: too many operations in txn request")
ERR_DUPLICATE_KEY = (grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: duplicate key given in txn request")
ERR_VALUE_PROVIDED = (grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: value is provided")
ERR_LEASE_PROVIDED = (grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: lease is provided")
ERR_TTL_TOO_LARGE = (grpc.StatusCode.OUT_OF_RANGE, "etcdserver: too large lease TTL")


class RequestError(Exception):
    """A request etcd would refuse before touching the store: (gRPC code, message)."""

    def __init__(self, err: tuple[grpc.StatusCode, str]):
        super().__init__(err[1])
        self.code, self.message = err


def status_of(e: BaseException) -> tuple[grpc.StatusCode, str]:
    """etcd's gRPC status for a storage or request error."""
    if isinstance(e, RequestError):
        return e.code, e.message
    if isinstance(e, CompactedError):
        return grpc.StatusCode.OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted"
    if isinstance(e, FutureRevisionError):
        return grpc.StatusCode.OUT_OF_RANGE, "etcdserver: mvcc: required revision is a future revision"
    if isinstance(e, LeaseNotFoundError):
        return grpc.StatusCode.NOT_FOUND, "etcdserver: requested lease not found"
    if isinstance(e, LeaseExistsError):
        return grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: lease already exists"
    if isinstance(e, KeyNotFoundError):
        return grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: key not found"
    if isinstance(e, UnavailableError):
        return grpc.StatusCode.UNAVAILABLE, f"etcdserver: {e}"
    if isinstance(e, StorageError):
        return grpc.StatusCode.UNKNOWN, f"etcdserver: {e}"
    return grpc.StatusCode.UNAVAILABLE, f"etcdserver: datastore unavailable: {type(e).__name__}"


class Headers:
    """Builds etcd ResponseHeaders for one member (ids from the settings)."""

    def __init__(self, settings):
        self.cluster_id = settings.cluster_id
        self.member_id = settings.member_id

    def __call__(self, revision: int) -> rpc_pb2.ResponseHeader:
        return rpc_pb2.ResponseHeader(cluster_id=self.cluster_id, member_id=self.member_id, revision=revision,
                                      raft_term=RAFT_TERM)


def kv_pb(kv: KeyValue) -> kv_pb2.KeyValue:
    return kv_pb2.KeyValue(key=kv.key, create_revision=kv.create_revision, mod_revision=kv.mod_revision,
                           version=kv.version, value=kv.value, lease=kv.lease)


# --- requests ---

def range_op(r: rpc_pb2.RangeRequest) -> RangeOp:
    if not r.key:
        raise RequestError(ERR_EMPTY_KEY)
    return RangeOp(r.key, r.range_end, r.limit, r.revision, r.keys_only, r.count_only, r.sort_order,
                   r.sort_target, r.min_mod_revision, r.max_mod_revision, r.min_create_revision,
                   r.max_create_revision)


def put_op(r: rpc_pb2.PutRequest) -> PutOp:
    if not r.key:
        raise RequestError(ERR_EMPTY_KEY)
    if r.ignore_value and r.value:
        raise RequestError(ERR_VALUE_PROVIDED)
    if r.ignore_lease and r.lease:
        raise RequestError(ERR_LEASE_PROVIDED)
    return PutOp(r.key, r.value, r.lease, r.prev_kv, r.ignore_value, r.ignore_lease)


def delete_op(r: rpc_pb2.DeleteRangeRequest) -> DeleteOp:
    if not r.key:
        raise RequestError(ERR_EMPTY_KEY)
    return DeleteOp(r.key, r.range_end, r.prev_kv)


_TARGET_FIELD = {0: "version", 1: "create_revision", 2: "mod_revision", 3: "value", 4: "lease"}


def compare(c: rpc_pb2.Compare) -> Compare:
    which = c.WhichOneof("target_union")
    operand = getattr(c, which) if which == _TARGET_FIELD.get(c.target) else None
    return Compare(c.key, c.range_end, c.target, c.result, operand)


def txn_op(r: rpc_pb2.TxnRequest) -> TxnOp:
    """Convert and validate a TxnRequest as etcd's checkTxnRequest and checkIntervals do."""
    if len(r.compare) > MAX_TXN_OPS or len(r.success) > MAX_TXN_OPS or len(r.failure) > MAX_TXN_OPS:
        raise RequestError(ERR_TOO_MANY_OPS)
    op = TxnOp([compare(c) for c in r.compare], [request_op(o) for o in r.success],
               [request_op(o) for o in r.failure])
    _check_intervals(op)
    return op


def request_op(o: rpc_pb2.RequestOp):
    which = o.WhichOneof("request")
    if which == "request_range":
        return range_op(o.request_range)
    if which == "request_put":
        return put_op(o.request_put)
    if which == "request_delete_range":
        return delete_op(o.request_delete_range)
    if which == "request_txn":
        return txn_op(o.request_txn)
    # etcd ignores an empty union; an empty range on no key answers nothing either
    raise RequestError(ERR_EMPTY_KEY)


def _intervals(ops) -> tuple[set[bytes], list[tuple[bytes, bytes]]]:
    """etcd's checkIntervals for one list of ops: returns its puts and deletes (nested txns
    included) or raises on a key put twice, or put and deleted, where both could apply
    (a nested txn's then/else branches exclude each other)."""
    dels = [(o.key, o.range_end) for o in ops if isinstance(o, DeleteOp)]
    puts: set[bytes] = set()

    def deleted(k: bytes) -> bool:
        return any(_covers(k, start, end) for start, end in dels)
    for o in ops:
        if not isinstance(o, TxnOp):
            continue
        puts_then, dels_then = _intervals(o.success)
        puts_else, dels_else = _intervals(o.failure)
        for k in puts_then:
            if k in puts or deleted(k):
                raise RequestError(ERR_DUPLICATE_KEY)
            puts.add(k)
        for k in puts_else:
            if (k in puts and k not in puts_then) or deleted(k):
                raise RequestError(ERR_DUPLICATE_KEY)
            puts.add(k)
        dels += dels_then + dels_else
    for o in ops:
        if isinstance(o, PutOp):
            if o.key in puts or deleted(o.key):
                raise RequestError(ERR_DUPLICATE_KEY)
            puts.add(o.key)
    return puts, dels


def _covers(key: bytes, start: bytes, end: bytes) -> bool:
    # etcd's checkIntervals takes range_end literally here (a "\0" end is an empty interval)
    if not end:
        return key == start
    return start <= key < end


def _check_intervals(op: TxnOp) -> None:
    _intervals(op.success)
    _intervals(op.failure)


# --- responses ---

def range_response(res, header) -> rpc_pb2.RangeResponse:
    return rpc_pb2.RangeResponse(header=header, kvs=[kv_pb(kv) for kv in res.kvs], more=res.more, count=res.count)


def put_response(res, header) -> rpc_pb2.PutResponse:
    resp = rpc_pb2.PutResponse(header=header)
    if res.prev_kv is not None:
        resp.prev_kv.CopyFrom(kv_pb(res.prev_kv))
    return resp


def delete_response(res, header) -> rpc_pb2.DeleteRangeResponse:
    return rpc_pb2.DeleteRangeResponse(header=header, deleted=res.deleted, prev_kvs=[kv_pb(kv) for kv in res.prev_kvs])


def txn_response(res, header) -> rpc_pb2.TxnResponse:
    """etcd TxnResponse: inner responses carry only their revision in the header; a nested
    txn's header is present but empty (etcd's newTxnResp)."""
    from k8s_sql.shim.storage.base import DeleteResult, PutResult, RangeResult, TxnResult

    out = rpc_pb2.TxnResponse(header=header, succeeded=res.succeeded)
    for r in res.responses:
        inner = rpc_pb2.ResponseHeader(revision=r.revision)
        if isinstance(r, RangeResult):
            out.responses.add(response_range=range_response(r, inner))
        elif isinstance(r, PutResult):
            out.responses.add(response_put=put_response(r, inner))
        elif isinstance(r, DeleteResult):
            out.responses.add(response_delete_range=delete_response(r, inner))
        elif isinstance(r, TxnResult):
            out.responses.add(response_txn=txn_response(r, rpc_pb2.ResponseHeader()))
    return out
