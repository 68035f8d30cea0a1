"""Reading a live etcd's state at one revision through etcd API v3 (the shim's own stubs).

Sources of the semantics: etcd 3.4 ``etcdserver/api/v3rpc`` and ``mvcc``:

- R is the header revision of a Range; every read below is pinned to R.
- The compact revision C: a Watch from revision 1 is cancelled with ``compact_revision`` = C
  when etcd has compacted (``mvcc/watchable_store.go``); otherwise it replays from 1 (C = 0).
- The state at C: a Range at revision C (allowed: only revisions < C are compacted). Its
  versions below C keep their revision; etcd does not say their sub (position within a txn)
  for those, so versions sharing a revision are numbered in key order (a Kubernetes write
  changes one key per revision, so its sub is 0). Versions at exactly C, and every event in
  (C, R], come from a Watch from C, which replays them in (revision, sub) order; a delete
  at C is dropped (etcd's compaction removes that tombstone).
- A watch response never splits the events of one revision (``watcherBatch``), so reading
  until an event with revision >= R has arrived yields everything up to R.
- Leases: LeaseLeases, then LeaseTimeToLive(keys=true) for each (TTL -1: gone meanwhile).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import grpc

from k8s_sql.errors import K8sSqlError
from k8s_sql.migrate.model import Expected, Lease, LogRow
from k8s_sql.shim.etcdpb import kv_pb2, rpc_pb2, rpc_pb2_grpc

#: Keys per Range page when reading the state at C.
PAGE = 1000
#: Seconds for one unary request.
TIMEOUT = 60.0
ALL = b"\x00"  # key b"\0" with range_end b"\0": every key (etcd's "from key" form)


def open_channel(url: str, cacert: str | None = None, cert: str | None = None, key: str | None = None) -> grpc.Channel:
    """A gRPC channel to the etcd client URL ``url`` (``https://host:port`` with TLS: the CA
    ``cacert``, client pair ``cert``/``key`` as etcdctl's flags; ``http://`` plain).

    Raises:
        K8sSqlError: the URL is not http(s)://host:port, or a TLS file cannot be read.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or not parts.port:
        raise K8sSqlError(f"--from-etcd {url!r} is not an etcd client URL", hint="e.g. https://127.0.0.1:2379")
    options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
    target = parts.netloc
    if parts.scheme == "http":
        return grpc.insecure_channel(target, options)

    def read(path: str | None, flag: str) -> bytes | None:
        if not path:
            return None
        try:
            return Path(path).read_bytes()
        except OSError as e:
            raise K8sSqlError(f"cannot read {flag} {path}: {e.strerror}", hint="give the file kubeadm wrote, "
                              "e.g. /etc/kubernetes/pki/etcd/ca.crt") from None
    if bool(cert) != bool(key):
        raise K8sSqlError("--cert and --key go together", hint="give both, or neither")
    creds = grpc.ssl_channel_credentials(read(cacert, "--cacert"), read(key, "--key"), read(cert, "--cert"))
    return grpc.secure_channel(target, creds, options)


def _rpc_error(url: str, e: grpc.RpcError) -> K8sSqlError:
    code = e.code().name if hasattr(e, "code") else "?"
    detail = e.details() if hasattr(e, "details") else str(e)
    return K8sSqlError(f"etcd at {url} answered {code}: {detail}",
                       hint="check the URL and --cacert/--cert/--key (etcdctl endpoint health with the same flags)")


class EtcdSource:
    """etcd's state at its current revision R, read over ``channel`` (see module docstring).

    Args:
        channel: a gRPC channel to etcd (:func:`open_channel`).
        description: the URL, for messages.
    Raises (from the constructor and every method): K8sSqlError when etcd cannot be reached
    or refuses a request (e.g. a compaction past R while reading: rerun).
    """

    mismatch_hint = ("was etcd written to while migrating? stop kube-apiserver and rerun. If only the HashKV "
                     "differs: etcd's API does not say how the keys of one txn before the compact revision were "
                     "ordered; take a snapshot (etcdctl snapshot save FILE) and run migrate --from-snapshot FILE")

    def __init__(self, channel: grpc.Channel, description: str):
        self.description = description
        self.kv = rpc_pb2_grpc.KVStub(channel)
        self.watch = rpc_pb2_grpc.WatchStub(channel)
        self.lease = rpc_pb2_grpc.LeaseStub(channel)
        self.maintenance = rpc_pb2_grpc.MaintenanceStub(channel)
        self.cluster = rpc_pb2_grpc.ClusterStub(channel)
        try:
            head = self.kv.Range(rpc_pb2.RangeRequest(key=ALL, range_end=ALL, count_only=True), timeout=TIMEOUT)
            self.revision = head.header.revision
            self.compact_revision = self._compact_revision()
        except grpc.RpcError as e:
            raise _rpc_error(description, e) from None

    def members(self) -> list[rpc_pb2.Member]:
        """etcd's members (Cluster.MemberList)."""
        try:
            return list(self.cluster.MemberList(rpc_pb2.MemberListRequest(), timeout=TIMEOUT).members)
        except grpc.RpcError as e:
            raise _rpc_error(self.description, e) from None

    def _compact_revision(self) -> int:
        first = self._watch_from(1)
        try:
            resp = next(first)
            while resp.created and not resp.canceled and not resp.events:
                if self.revision <= 1:
                    return 0
                resp = next(first)
            if resp.canceled:
                if resp.compact_revision:
                    return resp.compact_revision
                raise K8sSqlError(f"etcd at {self.description} refused a watch: {resp.cancel_reason}")
            return 0
        finally:
            first.cancel()

    def _watch_from(self, start: int):
        req = rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(key=ALL, range_end=ALL,
                                                                             start_revision=start))
        return self.watch.Watch(iter([req]))

    def log_rows(self, progress: Callable[[int], None] = lambda n: None) -> Iterator[LogRow]:
        """See :meth:`k8s_sql.migrate.model.Source.log_rows`; ``progress(n)`` after each batch."""
        try:
            c, r = self.compact_revision, self.revision
            # compacted at R itself: no event need follow C (its tombstones are gone), so
            # the Range at C gives every version, those at C numbered in key order too
            if c:
                yield from self._state_at_compact(progress, below=c if r > c else c + 1)
            if r > max(c, 1):
                yield from self._events(max(c, 1), progress)
        except grpc.RpcError as e:
            raise _rpc_error(self.description, e) from None

    def _state_at_compact(self, progress, below: int) -> Iterator[LogRow]:
        c = self.compact_revision
        subs: dict[int, int] = defaultdict(int)
        key = ALL
        while True:
            resp = self.kv.Range(rpc_pb2.RangeRequest(key=key, range_end=ALL, revision=c, limit=PAGE,
                                                      sort_order=rpc_pb2.RangeRequest.NONE), timeout=TIMEOUT)
            for kv in resp.kvs:
                if kv.mod_revision < below:  # versions at exactly C come with their sub from the watch
                    sub = subs[kv.mod_revision]
                    subs[kv.mod_revision] += 1
                    yield LogRow(kv.mod_revision, sub, kv.key, kv.value, kv.create_revision, kv.version,
                                 kv.lease, False)
            progress(len(resp.kvs))
            if not resp.more or not resp.kvs:
                return
            key = resp.kvs[-1].key + b"\x00"

    def _events(self, start: int, progress) -> Iterator[LogRow]:
        stream = self._watch_from(start)
        try:
            last, sub = 0, 0
            for resp in stream:
                if resp.canceled:
                    raise K8sSqlError(f"etcd at {self.description} cancelled the history watch from revision "
                                      f"{start}: {resp.cancel_reason or 'compacted at %d' % resp.compact_revision}",
                                      hint="etcd compacted while migrating: run the migration again")
                for ev in resp.events:
                    rev = ev.kv.mod_revision
                    if rev > self.revision:
                        return
                    sub = sub + 1 if rev == last else 0
                    last = rev
                    deleted = ev.type == kv_pb2.Event.DELETE
                    if deleted and rev == self.compact_revision:
                        continue
                    if deleted:
                        yield LogRow(rev, sub, ev.kv.key, b"", 0, 0, 0, True)
                    else:
                        yield LogRow(rev, sub, ev.kv.key, ev.kv.value, ev.kv.create_revision, ev.kv.version,
                                     ev.kv.lease, False)
                progress(len(resp.events))
                if last >= self.revision:
                    return
        finally:
            stream.cancel()

    def leases(self) -> list[Lease]:
        """See :meth:`k8s_sql.migrate.model.Source.leases`."""
        out = []
        try:
            ids = [lease.ID for lease in self.lease.LeaseLeases(rpc_pb2.LeaseLeasesRequest(), timeout=TIMEOUT).leases]
            for lid in ids:
                t = self.lease.LeaseTimeToLive(rpc_pb2.LeaseTimeToLiveRequest(ID=lid, keys=True), timeout=TIMEOUT)
                if t.TTL == -1:  # expired or revoked since LeaseLeases: nothing to carry over
                    continue
                out.append(Lease(lid, t.grantedTTL, max(t.TTL, 0), tuple(t.keys)))
        except grpc.RpcError as e:
            raise _rpc_error(self.description, e) from None
        return out

    def expected(self) -> Expected:
        """Live key count at R (Range count_only) and HashKV at R (see :class:`Expected`)."""
        rev = self.revision if self.revision > self.compact_revision else 0
        try:
            count = self.kv.Range(rpc_pb2.RangeRequest(key=ALL, range_end=ALL, revision=self.revision,
                                                       count_only=True), timeout=TIMEOUT).count
            h = self.maintenance.HashKV(rpc_pb2.HashKVRequest(revision=rev), timeout=TIMEOUT)
        except grpc.RpcError as e:
            raise _rpc_error(self.description, e) from None
        return Expected(count, h.hash, rev)
