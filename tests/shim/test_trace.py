"""The shim's request trace (``shim serve --log-level debug``, logger ``k8s_sql.shim.trace``)
shows what a client sends — keys, compares, options — and never a stored value: Kubernetes
keeps Secrets in those values, and logs must not carry them."""

from k8s_sql.shim.api.errors import shape
from k8s_sql.shim.etcdpb import rpc_pb2


def test_the_trace_keeps_keys_and_drops_values():
    key = b"/registry/secrets/default/token"
    put = rpc_pb2.PutRequest(key=key, value=b"s3cret-put", lease=7, prev_kv=True)
    txn = rpc_pb2.TxnRequest(
        compare=[rpc_pb2.Compare(target=rpc_pb2.Compare.VALUE, key=key, value=b"s3cret-compare")],
        success=[rpc_pb2.RequestOp(request_put=put)],
        failure=[rpc_pb2.RequestOp(request_txn=rpc_pb2.TxnRequest(
            success=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key, value=b"s3cret-nested"))]))])
    for request in (put, txn):
        line = shape(request)
        assert "s3cret" not in line
        assert key.decode() in line
    assert "lease: 7" in shape(put) and "prev_kv: true" in shape(put)
    assert "target: VALUE" in shape(txn)
    assert put.value == b"s3cret-put"  # the request itself is left as it was
