"""The committed stubs in k8s_sql.shim.etcdpb are exactly what shim/proto/ generates,
and the gRPC method paths are etcd's (so etcdctl and kube-apiserver interoperate)."""

from pathlib import Path

import k8s_sql.shim.etcdpb as etcdpb
from k8s_sql.shim.genproto import generate


def test_committed_stubs_match_protos(tmp_path):
    written = generate(tmp_path)
    committed = Path(etcdpb.__file__).parent
    assert sorted(p.name for p in written) == ["kv_pb2.py", "rpc_pb2.py", "rpc_pb2_grpc.py"]
    for p in written:
        assert p.read_bytes() == (committed / p.name).read_bytes(), f"{p.name} is stale: run python -m k8s_sql.shim.genproto"


def test_method_paths_and_field_numbers_are_etcds():
    from k8s_sql.shim.etcdpb import kv_pb2, rpc_pb2

    svc = rpc_pb2.DESCRIPTOR.services_by_name
    assert svc["KV"].full_name == "etcdserverpb.KV"
    assert [m.name for m in svc["Watch"].methods] == ["Watch"]
    assert kv_pb2.KeyValue.DESCRIPTOR.full_name == "mvccpb.KeyValue"
    # a few wire facts kube-apiserver depends on
    assert rpc_pb2.WatchResponse.DESCRIPTOR.fields_by_name["events"].number == 11
    assert rpc_pb2.Compare.DESCRIPTOR.fields_by_name["range_end"].number == 64
    assert kv_pb2.KeyValue.DESCRIPTOR.fields_by_name["lease"].number == 6
