"""etcd API v3 ``Auth`` service of the shim: an etcd whose authentication is disabled.

The shim authenticates clients by their TLS certificate (``--client-cert-auth``), as a
kubeadm etcd does; it keeps no users or roles. Every Auth RPC answers what etcd 3.4 answers
when authentication is disabled and no user or role exists (each checked against a real
etcd 3.4 in tests/shim/test_auth.py):

- ``AuthStatus``: enabled = false, ``authRevision`` = 1 (a fresh etcd's auth revision). etcd
  3.5 added this RPC; etcd 3.4 answers UNIMPLEMENTED, the shim answers as 3.5 does.
- ``AuthEnable``: FAILED_PRECONDITION "etcdserver: root user does not exist" (etcd's
  answer while there is no root user, which there never is here).
- ``AuthDisable``: OK (disabling disabled authentication changes nothing).
- ``Authenticate``: FAILED_PRECONDITION "etcdserver: authentication is not enabled".
- ``UserList``/``RoleList``: empty lists.
- ``UserGet``, ``UserDelete``, ``UserChangePassword``, ``UserGrantRole``, ``UserRevokeRole``:
  FAILED_PRECONDITION "etcdserver: user name not found".
- ``RoleGet``, ``RoleDelete``, ``RoleGrantPermission``, ``RoleRevokePermission``:
  FAILED_PRECONDITION "etcdserver: role name not found".
- ``UserAdd``/``RoleAdd`` with an empty name: INVALID_ARGUMENT "etcdserver: user name is
  empty" / "etcdserver: role name is empty".

The one deviation: ``UserAdd`` and ``RoleAdd`` with a name, which etcd would store (users and
roles can be prepared while authentication is off), answer FAILED_PRECONDITION
"etcdserver: authentication is not enabled": the shim has no user store, and accepting a
user it then forgets would be worse than saying no.
"""

from __future__ import annotations

import grpc

from k8s_sql.shim.api.errors import unary
from k8s_sql.shim.api.header import Headers
from k8s_sql.shim.etcdpb import rpc_pb2, rpc_pb2_grpc

# etcd's gRPC errors (api/v3rpc/rpctypes/error.go)
ERR_AUTH_NOT_ENABLED = (grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: authentication is not enabled")
ERR_ROOT_USER_NOT_EXIST = (grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: root user does not exist")
ERR_USER_NOT_FOUND = (grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: user name not found")
ERR_ROLE_NOT_FOUND = (grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: role name not found")
ERR_USER_EMPTY = (grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: user name is empty")
ERR_ROLE_EMPTY = (grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: role name is empty")

#: etcd's auth revision of a store whose users, roles and enablement never changed.
AUTH_REVISION = 1


class AuthServicer(rpc_pb2_grpc.AuthServicer):
    """etcd API v3 Auth with authentication disabled and no users or roles (see the module
    docstring for each answer).

    Args:
        backend: a :class:`k8s_sql.shim.storage.base.Backend` (for the header's revision).
        settings: a :class:`k8s_sql.shim.settings.ShimSettings` (cluster and member ids).
    """

    def __init__(self, backend, settings):
        self.backend = backend
        self.headers = Headers(settings)

    async def _header(self) -> rpc_pb2.ResponseHeader:
        return self.headers(await self.backend.current_revision())

    @unary
    async def AuthStatus(self, request, context):
        return rpc_pb2.AuthStatusResponse(header=await self._header(), enabled=False, authRevision=AUTH_REVISION)

    async def AuthEnable(self, request, context):
        await context.abort(*ERR_ROOT_USER_NOT_EXIST)

    @unary
    async def AuthDisable(self, request, context):
        return rpc_pb2.AuthDisableResponse(header=await self._header())

    async def Authenticate(self, request, context):
        await context.abort(*ERR_AUTH_NOT_ENABLED)

    async def UserAdd(self, request, context):
        await context.abort(*(ERR_USER_EMPTY if not request.name else ERR_AUTH_NOT_ENABLED))

    async def UserGet(self, request, context):
        await context.abort(*ERR_USER_NOT_FOUND)

    @unary
    async def UserList(self, request, context):
        return rpc_pb2.AuthUserListResponse(header=await self._header(), users=[])

    async def UserDelete(self, request, context):
        await context.abort(*ERR_USER_NOT_FOUND)

    async def UserChangePassword(self, request, context):
        await context.abort(*ERR_USER_NOT_FOUND)

    async def UserGrantRole(self, request, context):
        await context.abort(*ERR_USER_NOT_FOUND)

    async def UserRevokeRole(self, request, context):
        await context.abort(*ERR_USER_NOT_FOUND)

    async def RoleAdd(self, request, context):
        await context.abort(*(ERR_ROLE_EMPTY if not request.name else ERR_AUTH_NOT_ENABLED))

    async def RoleGet(self, request, context):
        await context.abort(*ERR_ROLE_NOT_FOUND)

    @unary
    async def RoleList(self, request, context):
        return rpc_pb2.AuthRoleListResponse(header=await self._header(), roles=[])

    async def RoleDelete(self, request, context):
        await context.abort(*ERR_ROLE_NOT_FOUND)

    async def RoleGrantPermission(self, request, context):
        await context.abort(*ERR_ROLE_NOT_FOUND)

    async def RoleRevokePermission(self, request, context):
        await context.abort(*ERR_ROLE_NOT_FOUND)
