"""etcd's mvcc rules that need no database: range post-processing and txn compares.

Sources: etcd 3.4 ``etcdserver/apply.go`` (Range: prune by min/max revisions, sort, then
truncate to the limit; applyCompare/compareKV) as documented by etcd's API reference.
"""

from __future__ import annotations

import dataclasses

from k8s_sql.shim.storage.base import Compare, CompareResult, CompareTarget, KeyValue, RangeOp, SortOrder, SortTarget

NONE, ASCEND, DESCEND = SortOrder.NONE, SortOrder.ASCEND, SortOrder.DESCEND
KEY, VERSION, CREATE, MOD, VALUE = (SortTarget.KEY, SortTarget.VERSION, SortTarget.CREATE, SortTarget.MOD,
                                    SortTarget.VALUE)
C_EQUAL, C_GREATER, C_LESS, C_NOT_EQUAL = (CompareResult.EQUAL, CompareResult.GREATER, CompareResult.LESS,
                                           CompareResult.NOT_EQUAL)
CT_VERSION, CT_CREATE, CT_MOD, CT_VALUE, CT_LEASE = (CompareTarget.VERSION, CompareTarget.CREATE, CompareTarget.MOD,
                                                     CompareTarget.VALUE, CompareTarget.LEASE)


def needs_full_scan(op: RangeOp) -> bool:
    """True when etcd reads the whole range before limiting (sorting or revision filters)."""
    return bool(op.sort_order != NONE or op.min_mod_revision or op.max_mod_revision
                or op.min_create_revision or op.max_create_revision)


def sql_limit(op: RangeOp) -> int:
    """Rows to read for ``op``: its limit plus one (to learn whether there are more), or 0
    for all of them (no limit, a full scan, or a limit no range can reach: etcd takes any
    int64, SQL's LIMIT stops at the largest bigint)."""
    if op.limit <= 0 or op.limit >= 2**62 or needs_full_scan(op):
        return 0
    return op.limit + 1


def skip_values(op: RangeOp) -> bool:
    """True when the values need not be read: keys_only, unless they are sorted by value
    first (etcd drops the values after sorting)."""
    return op.keys_only and not (op.sort_target == VALUE and (op.sort_order != NONE or op.sort_target != KEY))


def finish_range(op: RangeOp, kvs: list[KeyValue]) -> tuple[list[KeyValue], bool]:
    """Apply etcd's Range post-processing to key-ordered ``kvs``: drop kvs outside the
    min/max mod/create revisions, sort (ascending by default when the target is not the
    key), truncate to ``op.limit``. Returns (kvs, more)."""
    if op.max_mod_revision:
        kvs = [kv for kv in kvs if kv.mod_revision <= op.max_mod_revision]
    if op.min_mod_revision:
        kvs = [kv for kv in kvs if kv.mod_revision >= op.min_mod_revision]
    if op.max_create_revision:
        kvs = [kv for kv in kvs if kv.create_revision <= op.max_create_revision]
    if op.min_create_revision:
        kvs = [kv for kv in kvs if kv.create_revision >= op.min_create_revision]
    order = op.sort_order
    if op.sort_target != KEY and order == NONE:
        order = ASCEND
    if order in (ASCEND, DESCEND):  # etcd sorts for these two only (another order: key order)
        # an unknown target crashes etcd 3.4 (a nil sorter); key order is the harmless answer
        attr = {KEY: "key", VERSION: "version", CREATE: "create_revision", MOD: "mod_revision",
                VALUE: "value"}.get(op.sort_target, "key")
        # stable, like the insertion sort etcd's sort.Sort uses on short slices
        kvs = sorted(kvs, key=lambda kv: getattr(kv, attr), reverse=(order == DESCEND))
    more = False
    if op.limit > 0 and len(kvs) > op.limit:
        kvs, more = kvs[:op.limit], True
    if op.keys_only and not skip_values(op):
        kvs = [dataclasses.replace(kv, value=b"") for kv in kvs]
    return kvs, more


def _cmp(a, b) -> int:
    return (a > b) - (a < b)


_TARGET_FIELD = {CT_VERSION: "version", CT_CREATE: "create_revision", CT_MOD: "mod_revision", CT_LEASE: "lease"}


def compare_kv(c: Compare, kv: KeyValue | None) -> bool:
    """etcd compareKV: compare one kv (None = the key does not exist: zero values). An
    unknown target compares as equal and an unknown result holds, as in etcd."""
    operand = c.operand
    if c.target == CT_VALUE:
        result = _cmp(kv.value if kv else b"", operand if isinstance(operand, bytes) else b"")
    elif c.target in _TARGET_FIELD:
        field = _TARGET_FIELD[c.target]
        result = _cmp(getattr(kv, field) if kv else 0, operand if isinstance(operand, int) else 0)
    else:
        result = 0
    if c.result == C_EQUAL:
        return result == 0
    if c.result == C_NOT_EQUAL:
        return result != 0
    if c.result == C_GREATER:
        return result > 0
    if c.result == C_LESS:
        return result < 0
    return True


def compare_range(c: Compare, kvs: list[KeyValue]) -> bool:
    """etcd applyCompare: true when every kv in the compare's range satisfies it; an empty
    range compares the zero kv, except that a VALUE compare on no key always fails."""
    if not kvs:
        return False if c.target == CT_VALUE else compare_kv(c, None)
    return all(compare_kv(c, kv) for kv in kvs)
