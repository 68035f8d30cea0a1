"""Protobuf (etcd's rpc.proto, kv.proto) ⇄ the storage layer's request and result types.

Conversion only: requests are validated before (:mod:`.validation`), headers come from
:mod:`.header`, errors from :mod:`.errors`.
"""

from __future__ import annotations

from k8s_sql.shim.etcdpb import kv_pb2, rpc_pb2
from k8s_sql.shim.storage.base import (
    Compare, CompareResult, CompareTarget, DeleteOp, DeleteResult, Event, EventKind, KeyValue, PutOp, PutResult,
    RangeOp, RangeResult, SortOrder, SortTarget, TxnOp, TxnResult)

# protobuf enum values -> the storage layer's; a number etcd's enum lacks becomes a negative
# one, which storage treats as unknown (as etcd treats the unknown number)
_RR = rpc_pb2.RangeRequest
_SORT_ORDER = {_RR.NONE: SortOrder.NONE, _RR.ASCEND: SortOrder.ASCEND, _RR.DESCEND: SortOrder.DESCEND}
_SORT_TARGET = {_RR.KEY: SortTarget.KEY, _RR.VERSION: SortTarget.VERSION, _RR.CREATE: SortTarget.CREATE,
                _RR.MOD: SortTarget.MOD, _RR.VALUE: SortTarget.VALUE}
_C = rpc_pb2.Compare
_COMPARE_TARGET = {_C.VERSION: CompareTarget.VERSION, _C.CREATE: CompareTarget.CREATE, _C.MOD: CompareTarget.MOD,
                   _C.VALUE: CompareTarget.VALUE, _C.LEASE: CompareTarget.LEASE}
_COMPARE_RESULT = {_C.EQUAL: CompareResult.EQUAL, _C.GREATER: CompareResult.GREATER, _C.LESS: CompareResult.LESS,
                   _C.NOT_EQUAL: CompareResult.NOT_EQUAL}
_EVENT_TYPE = {EventKind.PUT: kv_pb2.Event.PUT, EventKind.DELETE: kv_pb2.Event.DELETE}
_FILTER = {rpc_pb2.WatchCreateRequest.NOPUT: EventKind.PUT, rpc_pb2.WatchCreateRequest.NODELETE: EventKind.DELETE}


def _unknown_enum(v: int) -> int:
    return -1 - v if v >= 0 else v


def watch_filters(filters) -> frozenset[EventKind]:
    """WatchCreateRequest.filters -> the event kinds the watcher does not want (an unknown
    filter filters nothing, as in etcd)."""
    return frozenset(_FILTER[f] for f in filters if f in _FILTER)


def varint_size(n: int) -> int:
    """Bytes of the protobuf varint of ``n`` >= 0."""
    return max(1, (n.bit_length() + 6) // 7)


def field_size(number: int, length: int) -> int:
    """Bytes of a length-delimited protobuf field (tag, length, ``length`` bytes of payload)."""
    return varint_size(number << 3 | 2) + varint_size(length) + length


def kv_pb(kv: KeyValue) -> kv_pb2.KeyValue:
    """mvccpb.KeyValue of a stored version."""
    return kv_pb2.KeyValue(key=kv.key, create_revision=kv.create_revision, mod_revision=kv.mod_revision,
                           version=kv.version, value=kv.value, lease=kv.lease)


def event_pb(e: Event) -> kv_pb2.Event:
    """mvccpb.Event of a watch event (prev_kv only when the event carries one)."""
    out = kv_pb2.Event(type=_EVENT_TYPE[e.kind], kv=kv_pb(e.kv))
    if e.prev_kv is not None:
        out.prev_kv.CopyFrom(kv_pb(e.prev_kv))
    return out


# --- requests ---

def range_op(r: rpc_pb2.RangeRequest) -> RangeOp:
    """RangeRequest -> RangeOp."""
    return RangeOp(r.key, r.range_end, r.limit, r.revision, r.keys_only, r.count_only,
                   _SORT_ORDER.get(r.sort_order, _unknown_enum(r.sort_order)),
                   _SORT_TARGET.get(r.sort_target, _unknown_enum(r.sort_target)),
                   r.min_mod_revision, r.max_mod_revision, r.min_create_revision, r.max_create_revision)


def put_op(r: rpc_pb2.PutRequest) -> PutOp:
    """PutRequest -> PutOp."""
    return PutOp(r.key, r.value, r.lease, r.prev_kv, r.ignore_value, r.ignore_lease)


def delete_op(r: rpc_pb2.DeleteRangeRequest) -> DeleteOp:
    """DeleteRangeRequest -> DeleteOp."""
    return DeleteOp(r.key, r.range_end, r.prev_kv)


_TARGET_FIELD = {0: "version", 1: "create_revision", 2: "mod_revision", 3: "value", 4: "lease"}


def compare(c: rpc_pb2.Compare) -> Compare:
    """Compare -> Compare; an operand in a union field that is not the target's is None
    (etcd then compares with the zero value)."""
    which = c.WhichOneof("target_union")
    operand = getattr(c, which) if which is not None and which == _TARGET_FIELD.get(c.target) else None
    return Compare(c.key, c.range_end, _COMPARE_TARGET.get(c.target, _unknown_enum(c.target)),
                   _COMPARE_RESULT.get(c.result, _unknown_enum(c.result)), operand)


def txn_op(r: rpc_pb2.TxnRequest) -> TxnOp:
    """TxnRequest -> TxnOp (nested txns too)."""
    return TxnOp([compare(c) for c in r.compare], [request_op(o) for o in r.success],
                 [request_op(o) for o in r.failure])


def request_op(o: rpc_pb2.RequestOp):
    """RequestOp -> RangeOp, PutOp, DeleteOp or TxnOp. Raises ValueError for an empty op
    (validation refuses those first)."""
    which = o.WhichOneof("request")
    if which == "request_range":
        return range_op(o.request_range)
    if which == "request_put":
        return put_op(o.request_put)
    if which == "request_delete_range":
        return delete_op(o.request_delete_range)
    if which == "request_txn":
        return txn_op(o.request_txn)
    raise ValueError("empty RequestOp")


# --- responses ---

def range_response(res: RangeResult, header) -> rpc_pb2.RangeResponse:
    """RangeResponse with ``header``."""
    return rpc_pb2.RangeResponse(header=header, kvs=[kv_pb(kv) for kv in res.kvs], more=res.more, count=res.count)


def put_response(res: PutResult, header) -> rpc_pb2.PutResponse:
    """PutResponse with ``header`` (prev_kv only when asked for and present)."""
    resp = rpc_pb2.PutResponse(header=header)
    if res.prev_kv is not None:
        resp.prev_kv.CopyFrom(kv_pb(res.prev_kv))
    return resp


def delete_response(res: DeleteResult, header) -> rpc_pb2.DeleteRangeResponse:
    """DeleteRangeResponse with ``header``."""
    return rpc_pb2.DeleteRangeResponse(header=header, deleted=res.deleted, prev_kvs=[kv_pb(kv) for kv in res.prev_kvs])


def txn_response(res: TxnResult, header) -> rpc_pb2.TxnResponse:
    """etcd TxnResponse: inner responses carry only their revision in the header; a nested
    txn's header is present but empty (etcd's newTxnResp)."""
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
