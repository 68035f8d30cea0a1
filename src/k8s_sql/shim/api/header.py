"""etcd ResponseHeaders of the shim (etcd api/v3rpc/header.go).

The shim is one member with fixed ids (from the settings); its store revision is
PostgreSQL's, and there is no raft, so the raft term is a constant.
"""

from __future__ import annotations

from k8s_sql.shim.etcdpb import rpc_pb2

#: raft term reported in headers and Maintenance.Status: fixed, as the shim never holds an election.
RAFT_TERM = 1


class Headers:
    """Builds etcd ResponseHeaders for one member: ``Headers(settings)(revision)``.

    Args:
        settings: a :class:`k8s_sql.shim.settings.ShimSettings` (cluster_id, member_id).
    """

    def __init__(self, settings):
        self.cluster_id = settings.cluster_id
        self.member_id = settings.member_id

    def __call__(self, revision: int) -> rpc_pb2.ResponseHeader:
        return rpc_pb2.ResponseHeader(cluster_id=self.cluster_id, member_id=self.member_id, revision=revision,
                                      raft_term=RAFT_TERM)
