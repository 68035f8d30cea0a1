"""``k8s-sql backup`` / ``restore``: pg_dump and pg_restore of a real shim's database (the
session's PostgreSQL), the revision recorded; a restore brings back exactly the keys and the
revision of the backup; --bump-revision moves the revision on and marks it compacted."""

from __future__ import annotations

import json
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from pgcluster import pg_bindir  # noqa: E402
from test_migrate import ALL, ShimProcess, make_tls, run_cli, secure_channel  # noqa: E402
from k8s_sql.shim.etcdpb import rpc_pb2, rpc_pb2_grpc  # noqa: E402


@pytest.fixture
def shim(pg, tmp_path):
    db = pg.create_database("backup_main")
    s = ShimProcess(db, make_tls(tmp_path / "pki")).start()
    yield s
    s.stop()


def _kv(shim):
    ch = secure_channel(shim)
    return ch, rpc_pb2_grpc.KVStub(ch)


def _all(shim, revision=0):
    ch, kv = _kv(shim)
    try:
        r = kv.Range(rpc_pb2.RangeRequest(key=ALL, range_end=ALL, revision=revision), timeout=10)
        return r.header.revision, [(x.key, x.value, x.mod_revision, x.create_revision, x.version) for x in r.kvs]
    finally:
        ch.close()


def test_backup_then_restore_brings_back_the_revision(shim, tmp_path):
    ch, kv = _kv(shim)
    for i in range(10):
        kv.Put(rpc_pb2.PutRequest(key=b"k%d" % i, value=b"v%d" % i), timeout=10)
    kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=b"k3"), timeout=10)
    ch.close()
    before = _all(shim)
    archive = tmp_path / "b" / "k8s-sql.dump"
    r = run_cli("backup", "--datastore", shim.datastore, "--output", str(archive), "--pg-bindir", pg_bindir())
    assert f"revision {before[0]}" in r.stdout
    record = json.loads((tmp_path / "b" / "k8s-sql.dump.json").read_text())
    assert record["revision"] == before[0] and oct(archive.stat().st_mode & 0o777) == "0o600"
    ch, kv = _kv(shim)
    kv.Put(rpc_pb2.PutRequest(key=b"after", value=b"x"), timeout=10)
    ch.close()

    # a datastore holding data is not overwritten without --replace
    r = run_cli("restore", str(archive), "--datastore", shim.datastore, "--pg-bindir", pg_bindir(), check=False)
    assert r.returncode == 1 and "--replace" in r.stderr
    shim.stop()
    r = run_cli("restore", str(archive), "--datastore", shim.datastore, "--replace", "--pg-bindir", pg_bindir())
    assert f"restored revision {before[0]} over revision {before[0] + 1}" in r.stdout
    assert "restart kube-apiserver" in r.stdout
    shim.start()
    assert _all(shim) == before
    assert _all(shim, before[0] - 1)[1] != before[1]  # history came back too


def test_bump_revision_marks_the_old_revisions_compacted(shim, tmp_path):
    ch, kv = _kv(shim)
    for i in range(5):
        kv.Put(rpc_pb2.PutRequest(key=b"k", value=b"v%d" % i), timeout=10)
    ch.close()
    rev, kvs = _all(shim)
    archive = tmp_path / "k8s-sql.dump"
    run_cli("backup", "--datastore", shim.datastore, "--output", str(archive), "--pg-bindir", pg_bindir())
    shim.stop()
    run_cli("restore", str(archive), "--datastore", shim.datastore, "--replace", "--bump-revision", "1000",
            "--pg-bindir", pg_bindir())
    shim.start()
    new_rev, new_kvs = _all(shim)
    assert new_rev == rev + 1000 and new_kvs == kvs
    ch, kv = _kv(shim)
    import grpc
    with pytest.raises(grpc.RpcError) as e:
        kv.Range(rpc_pb2.RangeRequest(key=ALL, range_end=ALL, revision=rev), timeout=10)
    assert "compacted" in e.value.details()
    put = kv.Put(rpc_pb2.PutRequest(key=b"k", value=b"new"), timeout=10)
    assert put.header.revision == rev + 1001
    ch.close()


def test_a_corrupted_archive_is_refused(shim, tmp_path):
    archive = tmp_path / "k8s-sql.dump"
    run_cli("backup", "--datastore", shim.datastore, "--output", str(archive), "--pg-bindir", pg_bindir())
    with open(archive, "r+b") as f:
        f.seek(100)
        f.write(b"\xff\xff")
    r = run_cli("restore", str(archive), "--datastore", shim.datastore, "--replace", "--pg-bindir", pg_bindir(),
                check=False)
    assert r.returncode == 1 and "does not match the SHA-256" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("backup", "--datastore", shim.datastore, "--output", str(archive), check=False)
    assert r.returncode == 1 and "exists" in r.stderr
