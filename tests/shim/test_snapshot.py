"""Maintenance.Snapshot of the shim: ``etcdctl snapshot save`` / ``status`` / ``restore``.

A fresh etcd 3.4 and a fresh shim receive the same history: puts, overwrites, a txn that
changes several keys at one revision, deletes (one key, a prefix, a delete at exactly the
revision compacted later), a physical compaction, binary keys, a value larger than a bbolt
page, enough keys for several levels of bbolt branch pages, and leases with keys (one
without). Then:

- ``etcdctl snapshot save`` (Debian's etcd-client 3.4, over mTLS) from the shim writes a
  file, and ``etcdctl snapshot status`` reads it (bbolt's own consistency check runs there);
- the shim's file holds exactly what etcd's own snapshot holds in its ``key``, ``lease``,
  ``meta`` (compaction) and ``auth``/``cluster`` buckets (compared bucket by bucket);
- ``etcdctl snapshot restore`` turns it into a data directory, a real etcd started on it
  answers every key at every revision still held with the same revisions, values and
  leases as the shim (and "compacted" below), and HashKV equals the original etcd's;
- our reader (:class:`k8s_sql.snapshot.etcdsnap.EtcdSnapshot`) reads the same history;
- a truncated and a corrupted file are refused by our reader and by ``etcdctl snapshot
  restore``.

Nothing is stood in: real PostgreSQL, shim subprocess, etcd and etcdctl.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

import grpc
import pytest

from etcd_server import ETCDCTL, Both, EtcdServer, free_port, make_tls, secure_channel
from k8s_sql.shim.etcdpb import rpc_pb2, rpc_pb2_grpc
from k8s_sql.snapshot.etcdsnap import EtcdSnapshot, SnapshotError

LEASE = 0x5EED
LEASE_EMPTY = 0x7A11
ALL = rpc_pb2.RangeRequest(key=b"\0", range_end=b"\0")


def etcdctl(target, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """etcdctl (API v3) with ``target``'s endpoint and client certificate (``target`` None: no endpoint)."""
    argv = [ETCDCTL]
    if target is not None:
        argv += ["--endpoints", target.endpoint, "--cacert", target.ca_file, "--cert", target.cert_file,
                 "--key", target.key_file, "--dial-timeout", "5s", "--command-timeout", "60s"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
    env["ETCDCTL_API"] = "3"
    r = subprocess.run(argv + list(args), capture_output=True, text=True, env=env, timeout=120)
    assert not check or r.returncode == 0, f"etcdctl {' '.join(args)}: exit {r.returncode}\n{r.stderr[-3000:]}"
    return r


def restore(snapshot, base_dir) -> subprocess.CompletedProcess:
    """``etcdctl snapshot restore`` into ``base_dir/etcd`` (the data dir :class:`EtcdServer` uses)
    for a one-member cluster named as EtcdServer names its member."""
    peer = f"http://127.0.0.1:{free_port()}"
    return etcdctl(None, "snapshot", "restore", str(snapshot), "--data-dir", str(base_dir / "etcd"),
                   "--name", "oracle", "--initial-cluster", f"oracle={peer}",
                   "--initial-advertise-peer-urls", peer, check=False)




def build_history(both: Both) -> dict:
    """Apply the module docstring's history; returns {compact, revision}."""
    both.call("Lease", "LeaseGrant", rpc_pb2.LeaseGrantRequest(ID=LEASE, TTL=600))
    both.call("Lease", "LeaseGrant", rpc_pb2.LeaseGrantRequest(ID=LEASE_EMPTY, TTL=900))
    both.put(b"/registry/a", b"1")
    both.put(b"/registry/b", b"2")
    both.put(b"\x00\xff\x80bin", b"\x00\x01\xfe")  # binary key and value
    both.put(b"/registry/a", b"3")  # overwrite
    both.put(b"/registry/leased/1", b"x", lease=LEASE)
    both.put(b"/registry/leased/2", b"y", lease=LEASE)
    both.call("KV", "Txn", rpc_pb2.TxnRequest(success=[
        rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"/registry/t/%d" % i, value=b"t%d" % i))
        for i in range(3)]))  # several versions at one revision (sub 0..2)
    both.call("KV", "DeleteRange", rpc_pb2.DeleteRangeRequest(key=b"/registry/b"))
    both.put(b"/registry/gone", b"soon")
    both.put(b"/registry/big", os.urandom(3 * 4096 + 100))  # larger than a bbolt page
    for i in range(400):  # several leaf pages and a branch level in bucket "key"
        both.put(b"/registry/many/%04d" % i, b"v" * (i % 40))
    compact = both.call("KV", "DeleteRange", rpc_pb2.DeleteRangeRequest(key=b"/registry/gone"))["etcd"].header.revision
    both.call("KV", "Compact", rpc_pb2.CompactionRequest(revision=compact, physical=True))
    both.put(b"/registry/a", b"4")
    both.put(b"/registry/b", b"back")  # re-created after its delete
    both.call("KV", "DeleteRange", rpc_pb2.DeleteRangeRequest(key=b"/registry/t/", range_end=b"/registry/t0"))
    for i in range(0, 400, 7):
        both.put(b"/registry/many/%04d" % i, b"new")
    rev = both.put(b"/registry/leased/3", b"z", lease=LEASE)["etcd"].header.revision
    return {"compact": compact, "revision": rev}


@pytest.fixture
def history(tmp_path, shim_factory):
    """(etcd, shim, {compact, revision}) with the same history on both."""
    etcd = EtcdServer(tmp_path / "etcd", tls=make_tls(tmp_path / "etcd-pki")).start()
    shim = shim_factory()
    both = Both(etcd, shim)
    try:
        revs = build_history(both)
        yield etcd, shim, revs
    finally:
        both.close()
        etcd.stop()


def ranges(target, revisions) -> dict:
    """Range of every key at each revision: {rev: [(key, value, create, mod, version, lease)] or
    (code, message)}, with the header revision under key "header"."""
    out = {}
    with secure_channel(target) as ch:
        kv = rpc_pb2_grpc.KVStub(ch)
        for rev in revisions:
            try:
                r = kv.Range(rpc_pb2.RangeRequest(key=b"\0", range_end=b"\0", revision=rev), timeout=30)
                out[rev] = [(k.key, k.value, k.create_revision, k.mod_revision, k.version, k.lease) for k in r.kvs]
                out["header"] = r.header.revision
            except grpc.RpcError as e:
                out[rev] = (e.code(), e.details())
    return out


def leases(target) -> dict:
    """{lease ID: (granted TTL, sorted keys)} from LeaseLeases and LeaseTimeToLive."""
    out = {}
    with secure_channel(target) as ch:
        stub = rpc_pb2_grpc.LeaseStub(ch)
        for lease in stub.LeaseLeases(rpc_pb2.LeaseLeasesRequest(), timeout=15).leases:
            t = stub.LeaseTimeToLive(rpc_pb2.LeaseTimeToLiveRequest(ID=lease.ID, keys=True), timeout=15)
            out[lease.ID] = (t.grantedTTL, sorted(t.keys))
    return out


def hashkv(target, revision: int = 0) -> int:
    with secure_channel(target) as ch:
        return rpc_pb2_grpc.MaintenanceStub(ch).HashKV(rpc_pb2.HashKVRequest(revision=revision), timeout=30).hash


def test_snapshot_save_status_restore_round_trip(history, tmp_path):
    etcd, shim, revs = history
    shim_file, etcd_file = tmp_path / "shim.db", tmp_path / "etcd.db"
    etcdctl(shim, "snapshot", "save", str(shim_file))
    etcdctl(etcd, "snapshot", "save", str(etcd_file))

    # etcdctl reads the file (bbolt's consistency check) and sees the shim's revision
    status = json.loads(etcdctl(None, "snapshot", "status", str(shim_file), "-w", "json").stdout)
    assert status["revision"] == revs["revision"]
    assert status["totalSize"] == os.path.getsize(shim_file) - 32

    # bucket by bucket, the shim's file holds what etcd's own snapshot holds
    ours, theirs = EtcdSnapshot(shim_file), EtcdSnapshot(etcd_file)
    assert ours.buckets() == theirs.buckets()
    for bucket in (b"key", b"lease", b"auth", b"cluster", b"alarm", b"authUsers", b"authRoles"):
        assert list(ours.items(bucket)) == list(theirs.items(bucket)), bucket
    meta = dict(ours.items(b"meta"))
    assert {k: v for k, v in dict(theirs.items(b"meta")).items() if k != b"consistent_index"} == \
        {k: v for k, v in meta.items() if k != b"consistent_index"}
    assert (ours.revision, ours.compact_revision) == (revs["revision"], revs["compact"])
    assert [(le.id, le.ttl) for le in ours.leases] == [(LEASE, 600), (LEASE_EMPTY, 900)]
    assert list(ours.events()) == list(theirs.events())
    assert status["totalKey"] == sum(1 for b in ours.buckets() for _ in ours.items(b))
    assert ours.versions == sum(1 for _ in ours.items(b"key"))

    # restore, start etcd on it: same keys at every revision held, same leases, same HashKV
    assert restore(shim_file, tmp_path / "restored").returncode == 0
    restored = EtcdServer(tmp_path / "restored", tls=make_tls(tmp_path / "restored-pki")).start()
    try:
        revisions = [0, *range(revs["compact"] - 2, revs["revision"] + 1)]
        want = ranges(shim, revisions)
        got = ranges(restored, revisions)
        assert got == want
        assert got["header"] == revs["revision"]
        assert got[revs["compact"] - 1][0] == grpc.StatusCode.OUT_OF_RANGE  # compacted on both
        keys = {row[0]: row for row in got[0]}
        assert keys[b"\x00\xff\x80bin"][1] == b"\x00\x01\xfe"
        assert keys[b"/registry/a"][3:5] == (revs["compact"] + 1, 3)  # mod_revision, version (3rd put)
        assert leases(restored) == leases(shim) == {
            LEASE: (600, [b"/registry/leased/1", b"/registry/leased/2", b"/registry/leased/3"]),
            LEASE_EMPTY: (900, [])}
        assert hashkv(restored) == hashkv(etcd) == hashkv(shim)
        assert hashkv(restored, revs["compact"] + 1) == hashkv(etcd, revs["compact"] + 1)
        # the restored etcd takes writes on top of the shim's revisions
        with secure_channel(restored) as ch:
            r = rpc_pb2_grpc.KVStub(ch).Put(rpc_pb2.PutRequest(key=b"/registry/after", value=b"1"), timeout=15)
            assert r.header.revision == revs["revision"] + 1
    finally:
        restored.stop()


def test_truncated_or_corrupted_snapshot_is_refused(shim_factory, tmp_path):
    shim = shim_factory()
    with secure_channel(shim) as ch:
        for i in range(50):
            rpc_pb2_grpc.KVStub(ch).Put(rpc_pb2.PutRequest(key=b"k%d" % i, value=b"v" * 200), timeout=15)
    good = tmp_path / "good.db"
    etcdctl(shim, "snapshot", "save", str(good))
    data = good.read_bytes()
    assert EtcdSnapshot(good).revision == 51

    truncated = tmp_path / "truncated.db"
    truncated.write_bytes(data[:len(data) // 2])
    corrupted = tmp_path / "corrupted.db"
    flipped = bytearray(data)
    flipped[3 * 4096 + 100] ^= 0xFF
    corrupted.write_bytes(bytes(flipped))
    cases = ((truncated, "no SHA-256 trailer", "snapshot missing hash"),
             (corrupted, "SHA-256 mismatch", "expected sha256"))
    for bad, why, etcd_says in cases:
        with pytest.raises(SnapshotError, match=why) as e:
            EtcdSnapshot(bad)
        assert str(bad) in str(e.value)
        r = restore(bad, tmp_path / f"restore-{bad.stem}")
        assert r.returncode != 0, r.stdout + r.stderr
        assert etcd_says in r.stderr
        assert not (tmp_path / f"restore-{bad.stem}" / "etcd" / "member" / "wal").exists()


def test_snapshot_of_an_empty_shim(shim_factory, tmp_path):
    """A shim that never took a write snapshots as a fresh etcd: revision 1, no keys."""
    shim = shim_factory()
    path = tmp_path / "empty.db"
    etcdctl(shim, "snapshot", "save", str(path))
    snap = EtcdSnapshot(path)
    assert (snap.revision, snap.compact_revision, snap.versions, snap.leases) == (1, 0, 0, [])
    assert restore(path, tmp_path / "r").returncode == 0
    restored = EtcdServer(tmp_path / "r", tls=make_tls(tmp_path / "r-pki")).start()
    try:
        assert ranges(restored, [0]) == {0: [], "header": 1}
    finally:
        restored.stop()


ETCD_MANIFEST = """apiVersion: v1
kind: Pod
metadata:
  name: etcd
  namespace: kube-system
spec:
  containers:
  - name: etcd
    image: registry.k8s.io/etcd:3.4.13-0
    command:
    - etcd
    - --advertise-client-urls=https://127.0.0.1:2379
    - --data-dir={data_dir}
    - --initial-advertise-peer-urls={peer}
    - --initial-cluster=oracle={peer}
    - --listen-peer-urls={peer}
    - --name=oracle
"""


def test_migrate_to_etcd_restores_the_same_revisions(history, tmp_path):
    """``k8s-sql migrate --to-etcd FILE`` on the shim's database (the shim may run or not),
    then the restore command it prints, run as printed, for kubeadm's etcd manifest where
    ``migrate`` keeps it (scratch ``paths.backupDir``): a real etcd on the restored directory
    answers as the shim."""
    etcd, shim, revs = history
    manifests, backup = tmp_path / "manifests", tmp_path / "backup"
    manifests.mkdir()
    (backup / "migrate").mkdir(parents=True)  # where migrate keeps etcd's manifest while the shim serves
    data_dir = tmp_path / "back" / "etcd"  # EtcdServer(tmp_path / "back") runs on this directory
    (backup / "migrate" / "etcd.yaml").write_text(ETCD_MANIFEST.format(data_dir=data_dir,
                                                               peer=f"http://127.0.0.1:{free_port()}"))
    config = tmp_path / "k8s-sql.yaml"
    config.write_text(f"apiVersion: k8s-sql.io/v1alpha1\nkind: Cluster\npaths:\n  manifestsDir: {manifests}\n"
                      f"  backupDir: {backup}\n")
    out = tmp_path / "to-etcd.db"
    cli = [sys.executable, "-m", "k8s_sql", "migrate", "--to-etcd", str(out), "--datastore", shim.datastore,
           "--config", str(config)]
    r = subprocess.run(cli, capture_output=True, text=True, timeout=120, env=dict(os.environ, COLUMNS="400"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"revision {revs['revision']}, compacted at {revs['compact']}" in r.stdout
    assert f"etcd member from {backup / 'migrate' / 'etcd.yaml'}" in r.stdout
    assert os.stat(out).st_mode & 0o777 == 0o600
    assert EtcdSnapshot(out).revision == revs["revision"]

    # a second run never overwrites the file
    again = subprocess.run(cli, capture_output=True, text=True, timeout=120)
    assert again.returncode == 1 and "exists" in again.stdout + again.stderr

    restore_line = next(line for line in r.stdout.splitlines() if "snapshot restore" in line)
    argv = shlex.split(restore_line.split("ETCDCTL_API=3 ", 1)[1])
    done = etcdctl(None, *argv[1:])
    assert data_dir.is_dir(), done.stderr
    back = EtcdServer(tmp_path / "back", tls=make_tls(tmp_path / "back-pki")).start()
    try:
        revisions = [0, *range(revs["compact"], revs["revision"] + 1)]
        assert ranges(back, revisions) == ranges(shim, revisions)
        assert leases(back) == leases(shim)
        assert hashkv(back) == hashkv(etcd)
    finally:
        back.stop()


def test_migrate_to_etcd_refuses_a_database_that_is_not_the_shims(shim_db, tmp_path):
    out = tmp_path / "x.db"
    r = subprocess.run([sys.executable, "-m", "k8s_sql", "migrate", "--to-etcd", str(out), "--datastore", shim_db],
                       capture_output=True, text=True, timeout=120, env=dict(os.environ, COLUMNS="400"))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "cannot read the datastore" in r.stdout + r.stderr and "Traceback" not in r.stderr
    assert list(tmp_path.iterdir()) == []  # neither the file nor a .part left behind


def test_migrate_to_etcd_says_when_the_datastore_is_unreachable(tmp_path):
    out = tmp_path / "x.db"
    r = subprocess.run([sys.executable, "-m", "k8s_sql", "migrate", "--to-etcd", str(out), "--datastore",
                        f"host={tmp_path}/no-socket dbname=kubernetes"],
                       capture_output=True, text=True, timeout=120, env=dict(os.environ, COLUMNS="400"))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "cannot connect to the datastore" in r.stdout + r.stderr and "Traceback" not in r.stderr
    assert list(tmp_path.iterdir()) == []
