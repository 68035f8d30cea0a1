"""Generated protobuf and gRPC stubs of etcd API v3 (packages etcdserverpb, mvccpb).

Regenerate with ``python -m k8s_sql.shim.genproto``; sources are in ``shim/proto/``.
"""
