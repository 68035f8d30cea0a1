"""etcd's gRPC errors: codes and messages, and the mapping of storage errors onto them.

Codes and messages are etcd's (etcd 3.4 api/v3rpc/rpctypes/error.go), so clients such as
kube-apiserver and etcdctl recognise them; an error etcd has no code for is UNKNOWN with its
message, as etcd's togRPCError answers (api/v3rpc/util.go). UNAVAILABLE, which clients
retry, is only ever "the datastore is unreachable".
"""

from __future__ import annotations

import functools
import logging
import time

import grpc

from k8s_sql.shim.storage.base import (
    CompactedError, FutureRevisionError, KeyNotFoundError, LeaseExistsError, LeaseNotFoundError,
    LeaseTTLTooLargeError, StorageError, UnavailableError)

log = logging.getLogger(__name__)

_INVALID = grpc.StatusCode.INVALID_ARGUMENT
ERR_EMPTY_KEY = (_INVALID, "etcdserver: key is not provided")
ERR_KEY_NOT_FOUND = (_INVALID, "etcdserver: key not found")
ERR_VALUE_PROVIDED = (_INVALID, "etcdserver: value is provided")
ERR_LEASE_PROVIDED = (_INVALID, "etcdserver: lease is provided")
ERR_TOO_MANY_OPS = (_INVALID, "etcdserver: too many operations in txn request")
ERR_DUPLICATE_KEY = (_INVALID, "etcdserver: duplicate key given in txn request")
ERR_REQUEST_TOO_LARGE = (_INVALID, "etcdserver: request is too large")
ERR_COMPACTED = (grpc.StatusCode.OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted")
ERR_FUTURE_REV = (grpc.StatusCode.OUT_OF_RANGE, "etcdserver: mvcc: required revision is a future revision")
ERR_LEASE_NOT_FOUND = (grpc.StatusCode.NOT_FOUND, "etcdserver: requested lease not found")
ERR_LEASE_EXIST = (grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: lease already exists")
ERR_LEASE_TTL_TOO_LARGE = (grpc.StatusCode.OUT_OF_RANGE, "etcdserver: too large lease TTL")

_STORAGE = {
    CompactedError: ERR_COMPACTED,
    FutureRevisionError: ERR_FUTURE_REV,
    LeaseNotFoundError: ERR_LEASE_NOT_FOUND,
    LeaseExistsError: ERR_LEASE_EXIST,
    LeaseTTLTooLargeError: ERR_LEASE_TTL_TOO_LARGE,
    KeyNotFoundError: ERR_KEY_NOT_FOUND,
}


class EtcdError(Exception):
    """A request etcd refuses before touching the store; ``err`` is one of the ERR_*
    (gRPC code, message) pairs of this module."""

    def __init__(self, err: tuple[grpc.StatusCode, str]):
        super().__init__(err[1])
        self.code, self.message = err


def status_of(e: BaseException) -> tuple[grpc.StatusCode, str]:
    """etcd's gRPC (code, message) for an error raised while serving a request."""
    if isinstance(e, EtcdError):
        return e.code, e.message
    known = _STORAGE.get(type(e))
    if known:
        return known
    if isinstance(e, UnavailableError):
        return grpc.StatusCode.UNAVAILABLE, f"etcdserver: {e}"
    if isinstance(e, StorageError):  # InternalError: this request's own failure
        return grpc.StatusCode.UNKNOWN, f"etcdserver: {e}"
    log.error("request failed (a bug in its handling)", exc_info=e)
    return grpc.StatusCode.UNKNOWN, f"etcdserver: request failed: {type(e).__name__}: {e}"


async def abort(context, e: BaseException):
    """End the call with etcd's status for ``e`` (raises grpc's AbortError)."""
    code, message = status_of(e)
    await context.abort(code, message)


def unary(method):
    """Decorator for a unary servicer method ``(self, request, context)``: an exception it
    raises ends the call with etcd's status for it (:func:`status_of`). At debug level each
    call is logged with its duration (µs) and request without values (:func:`shape`), to
    trace what a client sends."""
    name = method.__name__

    @functools.wraps(method)
    async def handler(self, request, context):
        if trace.isEnabledFor(logging.DEBUG):
            return await _traced(method, name, self, request, context)
        try:
            return await method(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as e:
            await abort(context, e)
    return handler


#: The request trace (debug level: one line per unary call).
trace = logging.getLogger("k8s_sql.shim.trace")


async def _traced(method, name: str, self, request, context):
    t = time.perf_counter()
    outcome = "ok"
    try:
        return await method(self, request, context)
    except grpc.aio.AbortError:
        outcome = "aborted"
        raise
    except Exception as e:
        outcome = type(e).__name__
        await abort(context, e)
    finally:
        trace.debug("%s %.0fus %s %s", name, (time.perf_counter() - t) * 1e6, outcome, shape(request))


def shape(request) -> str:
    """``request`` (a protobuf message) on one line with every ``value`` field emptied: keys,
    compares and options stay, stored data (Secrets among them) never reaches the log."""
    scrubbed = type(request)()
    scrubbed.CopyFrom(request)
    _scrub(scrubbed)
    return " ".join(str(scrubbed).split())[:500]


def _scrub(msg) -> None:
    for field, value in msg.ListFields():
        if field.name == "value" and field.type == field.TYPE_BYTES:
            msg.ClearField("value")
        elif field.type == field.TYPE_MESSAGE:
            for m in ([value] if hasattr(value, "ListFields") else value):  # one message or repeated
                _scrub(m)
