"""The etcd v3 API shim: an asyncio gRPC server whose state lives in PostgreSQL.

Modules: ``etcdpb`` (generated protobuf/gRPC stubs), ``settings`` (ShimSettings),
``storage`` (Backend interface + PostgreSQL implementation), ``api`` (gRPC servicers),
``server`` (wiring and lifecycle).
"""
