"""Storage of the shim: the :class:`Backend` interface and its PostgreSQL implementation."""

from k8s_sql.shim.storage.base import Backend, CompactedError, FutureRevisionError, KeyValue, LeaseNotFoundError

__all__ = ["Backend", "CompactedError", "FutureRevisionError", "KeyValue", "LeaseNotFoundError"]
