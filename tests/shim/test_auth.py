"""The Auth service of the shim against a real etcd 3.4 with authentication disabled.

A fresh etcd 3.4 (Debian's etcd-server, mTLS like a kubeadm etcd) and the shim (the
module's ``shim`` fixture) get the same Auth requests over gRPC, and the same etcdctl
commands (Debian's etcd-client 3.4); the answers must be the same: gRPC code and message,
or the response without the ids that differ between two clusters. Two answers are the
shim's own and asserted as such: AuthStatus (etcd 3.4 does not have it; the shim answers as
etcd 3.5) and UserAdd/RoleAdd with a name (etcd stores the user; the shim has no user store
and says authentication is not enabled). Nothing is stood in.
"""

from __future__ import annotations

import os
import subprocess

import grpc
import pytest

from etcd_server import ETCDCTL, EtcdServer, make_tls, secure_channel
from k8s_sql.shim.etcdpb import rpc_pb2 as pb
from k8s_sql.shim.etcdpb import rpc_pb2_grpc

NOT_ENABLED = (grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: authentication is not enabled")

#: (method, request) pairs etcd answers the same way every time while auth is disabled.
SAME_AS_ETCD = [
    ("AuthEnable", pb.AuthEnableRequest()),
    ("AuthDisable", pb.AuthDisableRequest()),
    ("Authenticate", pb.AuthenticateRequest(name="root", password="secret")),
    ("Authenticate", pb.AuthenticateRequest()),
    ("UserList", pb.AuthUserListRequest()),
    ("RoleList", pb.AuthRoleListRequest()),
    ("UserGet", pb.AuthUserGetRequest(name="alice")),
    ("UserGet", pb.AuthUserGetRequest()),
    ("UserDelete", pb.AuthUserDeleteRequest(name="alice")),
    ("UserChangePassword", pb.AuthUserChangePasswordRequest(name="alice", password="pw")),
    ("UserGrantRole", pb.AuthUserGrantRoleRequest(user="alice", role="reader")),
    ("UserRevokeRole", pb.AuthUserRevokeRoleRequest(name="alice", role="reader")),
    ("RoleGet", pb.AuthRoleGetRequest(role="root")),
    ("RoleDelete", pb.AuthRoleDeleteRequest(role="reader")),
    ("RoleGrantPermission", pb.AuthRoleGrantPermissionRequest(
        name="reader", perm=pb.Permission(permType=pb.Permission.READ, key=b"/registry/", range_end=b"/registry0"))),
    ("RoleRevokePermission", pb.AuthRoleRevokePermissionRequest(role="reader", key=b"/registry/")),
    ("UserAdd", pb.AuthUserAddRequest(name="", password="pw")),
    ("RoleAdd", pb.AuthRoleAddRequest(name="")),
]


@pytest.fixture(scope="module")
def etcd(tmp_path_factory):
    base = tmp_path_factory.mktemp("etcd-auth")
    server = EtcdServer(base, tls=make_tls(base / "pki")).start()
    yield server
    server.stop()


def _call(target, method: str, request):
    """The answer of ``method``: ("OK", response fields that do not name the cluster) or (code, message)."""
    with secure_channel(target) as ch:
        try:
            resp = getattr(rpc_pb2_grpc.AuthStub(ch), method)(request, timeout=15)
        except grpc.RpcError as e:
            return e.code(), e.details()
    resp.header.cluster_id = resp.header.member_id = resp.header.raft_term = 0
    return "OK", resp


def _etcdctl(target, *args: str) -> tuple[int, str, str]:
    """etcdctl's exit code, stdout and stderr (without log lines) for ``args`` on ``target``."""
    argv = [ETCDCTL, "--endpoints", target.endpoint, "--cacert", target.ca_file, "--cert", target.cert_file,
            "--key", target.key_file, "--dial-timeout", "5s", "--command-timeout", "15s", *args]
    res = subprocess.run(argv, capture_output=True, text=True, env=dict(os.environ, ETCDCTL_API="3"), timeout=60)
    # without the client library's JSON log lines (time stamps, connection ids)
    stderr = "".join(line for line in res.stderr.splitlines(keepends=True) if not line.startswith('{"level"'))
    return res.returncode, res.stdout, stderr


@pytest.mark.parametrize("method,request_", SAME_AS_ETCD, ids=[f"{m}-{i}" for i, (m, _) in enumerate(SAME_AS_ETCD)])
def test_auth_rpc_answers_as_etcd(etcd, shim, method, request_):
    expected = _call(etcd, method, request_)
    got = _call(shim, method, request_)
    if expected[0] == "OK":  # both stores are fresh: the same revision in the header
        assert got[0] == "OK", got
        assert got[1] == expected[1]
    else:
        assert got == expected


def test_auth_status_answers_as_etcd_35_with_auth_disabled(etcd, shim):
    assert _call(etcd, "AuthStatus", pb.AuthStatusRequest())[0] == grpc.StatusCode.UNIMPLEMENTED  # new in 3.5
    with secure_channel(shim) as ch:
        resp = rpc_pb2_grpc.AuthStub(ch).AuthStatus(pb.AuthStatusRequest(), timeout=15)
        revision = rpc_pb2_grpc.KVStub(ch).Range(pb.RangeRequest(key=b"x"), timeout=15).header.revision
    assert resp.enabled is False and resp.authRevision == 1
    assert resp.header.revision == revision and resp.header.member_id == shim.settings.member_id


@pytest.mark.parametrize("args", [
    ("user", "list"), ("role", "list"), ("user", "get", "alice"), ("role", "get", "root"),
    ("auth", "enable"), ("auth", "disable"), ("user", "delete", "alice"),
    ("role", "grant-permission", "reader", "read", "/registry/"),
    # a client configured with a user name works while authentication is disabled: clientv3
    # recognises "authentication is not enabled" and goes on without a token
    ("--user", "root:secret", "put", "k8s-sql-test/auth", "v"),
    ("--user", "root:secret", "get", "k8s-sql-test/auth", "--print-value-only"),
], ids=lambda a: "-".join(a))
def test_etcdctl_sees_the_same(etcd, shim, args):
    assert _etcdctl(shim, *args) == _etcdctl(etcd, *args)


def test_user_and_role_add_are_refused(shim):
    """The shim's deviation: it keeps no users or roles, so it refuses to create them (etcd
    would store them for a later ``auth enable``)."""
    for method, request_ in (("UserAdd", pb.AuthUserAddRequest(name="alice", password="pw")),
                             ("RoleAdd", pb.AuthRoleAddRequest(name="reader"))):
        assert _call(shim, method, request_) == NOT_ENABLED
    rc, out, err = _etcdctl(shim, "user", "add", "alice:pw")
    assert rc != 0 and "etcdserver: authentication is not enabled" in err
    # and nothing was half-created
    assert _etcdctl(shim, "user", "list")[:2] == (0, "")
