"""``k8s-sql migrate --data-only --from-etcd``: real etcd 3.4 (TLS, client certificates) with a
history of puts, overwrites, deletes, txns, binary keys, leases with keys and a compaction is
copied into a fresh database of the session's PostgreSQL; a real ``k8s-sql shim serve`` on that
database then gets the same requests as etcd and must answer field by field the same: every key
now, every revision etcd still holds, the compacted ones, the history watch, every lease, HashKV.
Also: a migration killed mid-way leaves the datastore empty and a rerun succeeds; a datastore
that holds data is refused.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import textwrap
import time

import grpc
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "shim"))

from etcd_server import EtcdServer, make_tls, secure_channel  # noqa: E402
from k8s_sql.shim.etcdpb import rpc_pb2, rpc_pb2_grpc  # noqa: E402

_spec = importlib.util.spec_from_file_location("shim_conftest", os.path.join(HERE, "shim", "conftest.py"))
shim_conftest = importlib.util.module_from_spec(_spec)
sys.modules["shim_conftest"] = shim_conftest
_spec.loader.exec_module(shim_conftest)
ShimProcess = shim_conftest.ShimProcess

ALL = b"\x00"
LEASE_A, LEASE_B, LEASE_IDLE = 0x1111, 0x2222, 0x3333


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    return make_tls(tmp_path_factory.mktemp("migrate-pki"))


@pytest.fixture(scope="module")
def etcd(tmp_path_factory, tls):
    """etcd 3.4 with TLS and client-certificate auth, holding the test history (see :func:`write_history`)."""
    server = EtcdServer(tmp_path_factory.mktemp("migrate-etcd"), tls=tls).start()
    ch = secure_channel(server)
    server.compact_revision, server.revision = write_history(ch)
    ch.close()
    yield server
    server.stop()


def write_history(ch) -> tuple[int, int]:
    """Puts, overwrites, deletes (one key, a range), txns with several ops, binary and long
    keys, leases with keys, a compaction in the middle; returns (compact revision, revision)."""
    kv, lease = rpc_pb2_grpc.KVStub(ch), rpc_pb2_grpc.LeaseStub(ch)
    put = lambda k, v, lease_id=0: kv.Put(rpc_pb2.PutRequest(key=k, value=v, lease=lease_id), timeout=10)  # noqa: E731
    for i in range(20):
        put(b"/registry/pods/default/p%02d" % i, b"v1-%d" % i)
    for i in range(0, 20, 3):
        put(b"/registry/pods/default/p%02d" % i, b"v2-%d" % i)
    put(b"\x00\xff\x01binary", bytes(range(256)))
    put(b"\xff\xfe", b"")
    put(b"long/" + b"k" * 2000, b"x" * 5000)
    # a txn putting keys in key order (etcd numbers the ops in request order)
    kv.Txn(rpc_pb2.TxnRequest(success=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"t/a", value=b"1")),
                                       rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"t/b", value=b"2"))]),
           timeout=10)
    kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=b"/registry/pods/default/p05"), timeout=10)
    lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(ID=LEASE_A, TTL=3600), timeout=10)
    put(b"/registry/events/e1", b"event-1", LEASE_A)
    put(b"/registry/events/e2", b"event-2", LEASE_A)
    put(b"/registry/pods/default/p01", b"v3-1")
    put(b"/registry/pods/default/p02", b"v3-2")
    compact = kv.Range(rpc_pb2.RangeRequest(key=ALL, range_end=ALL, count_only=True), timeout=10).header.revision
    kv.Compact(rpc_pb2.CompactionRequest(revision=compact, physical=True), timeout=30)
    put(b"/registry/pods/default/p01", b"v4-1")
    kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=b"/registry/pods/default/p1",
                                              range_end=b"/registry/pods/default/p2"), timeout=10)
    put(b"/registry/pods/default/p15", b"again")
    # after the compaction a txn's ops keep their exact order: put b before a, delete and re-put
    kv.Txn(rpc_pb2.TxnRequest(success=[
        rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"t/b", value=b"3")),
        rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"t/a", value=b"4")),
        rpc_pb2.RequestOp(request_delete_range=rpc_pb2.DeleteRangeRequest(key=b"\xff\xfe"))]), timeout=10)
    lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(ID=LEASE_B, TTL=600), timeout=10)
    lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(ID=LEASE_IDLE, TTL=900), timeout=10)
    put(b"/registry/masterleases/10.0.0.1", b"lease-b", LEASE_B)
    put(b"/registry/events/e1", b"event-1b", LEASE_B)
    put(b"\x00\xff\x01binary", b"\x00")
    rev = kv.Range(rpc_pb2.RangeRequest(key=ALL, range_end=ALL, count_only=True), timeout=10).header.revision
    return compact, rev


def run_cli(*args, check=True):
    env = dict(os.environ, COLUMNS="200")
    r = subprocess.run([sys.executable, "-m", "k8s_sql", *args], capture_output=True, text=True, env=env, timeout=300)
    if check and r.returncode != 0:
        raise AssertionError(f"k8s-sql {' '.join(args)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
    return r


def migrate_args(etcd, datastore):
    return ["migrate", "--data-only", "--from-etcd", etcd.endpoint, "--cacert", etcd.tls.ca_file,
            "--cert", etcd.tls.client_cert_file, "--key", etcd.tls.client_key_file, "--datastore", datastore]


@pytest.fixture(scope="module", params=["from-etcd", "from-snapshot"])
def migrated(request, pg, etcd, tls, tmp_path_factory):
    """The history migrated into a new database (from the running etcd, or from a file of
    ``etcdctl snapshot save``), and a shim serving it."""
    db = pg.create_database(f"migrate_{request.param.replace('-', '_')}")
    if request.param == "from-etcd":
        r = run_cli(*migrate_args(etcd, db))
    else:
        snap = str(tmp_path_factory.mktemp("snap") / "etcd.db")
        etcd.etcdctl("snapshot", "save", snap)
        r = run_cli("migrate", "--from-snapshot", snap, "--datastore", db)
    shim = ShimProcess(db, tls).start()
    yield r, shim
    shim.stop()


def _call(ch, service, method, req):
    stub = getattr(rpc_pb2_grpc, f"{service}Stub")(ch)
    try:
        return getattr(stub, method)(req, timeout=15)
    except grpc.RpcError as e:
        return ("error", e.code(), e.details())


def both(etcd, shim, service, method, req, strip_header=True):
    """The same request to etcd and to the shim; responses without the header's member fields."""
    out = []
    for target in (etcd, shim):
        ch = secure_channel(target)
        resp = _call(ch, service, method, req)
        ch.close()
        if strip_header and not isinstance(resp, tuple) and resp.HasField("header"):
            rev = resp.header.revision
            resp.ClearField("header")
            resp = (rev, resp)
        out.append(resp)
    return out


def test_migration_prints_what_it_verified(migrated, etcd):
    r, _ = migrated
    assert f"at revision {etcd.revision}" in r.stdout and f"compact revision {etcd.compact_revision}" in r.stdout
    assert "verified:" in r.stdout and "live keys at revision" in r.stdout, r.stdout
    # both sources verify HashKV at R, and it is the hash etcd itself computes (for a snapshot:
    # from the file's key bucket, etcd 3.4's HashByRev)
    ch = secure_channel(etcd)
    h = rpc_pb2_grpc.MaintenanceStub(ch).HashKV(rpc_pb2.HashKVRequest(revision=etcd.revision), timeout=15).hash
    ch.close()
    assert f"HashKV at revision {etcd.revision} = {h:#010x} on both sides" in r.stdout, r.stdout


def test_every_key_at_every_revision_etcd_holds(migrated, etcd):
    _, shim = migrated
    assert etcd.compact_revision > 5 and etcd.revision > etcd.compact_revision + 5
    for rev in [0, *range(etcd.compact_revision, etcd.revision + 1)]:
        for req in (rpc_pb2.RangeRequest(key=ALL, range_end=ALL, revision=rev),
                    rpc_pb2.RangeRequest(key=b"/registry/", range_end=b"/registry0", revision=rev, limit=3),
                    rpc_pb2.RangeRequest(key=b"t/a", revision=rev),
                    rpc_pb2.RangeRequest(key=ALL, range_end=ALL, revision=rev, count_only=True)):
            e, s = both(etcd, shim, "KV", "Range", req)
            assert e == s, f"revision {rev}: {req}"


def test_below_the_compact_revision_both_answer_compacted(migrated, etcd):
    _, shim = migrated
    for rev in (1, etcd.compact_revision - 1):
        e, s = both(etcd, shim, "KV", "Range", rpc_pb2.RangeRequest(key=ALL, range_end=ALL, revision=rev))
        assert e == s and e[0] == "error" and "compacted" in e[2], (e, s)


def _watch(target, start, upto, prev_kv=True):
    ch = secure_channel(target)
    stub = rpc_pb2_grpc.WatchStub(ch)
    req = rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(
        key=ALL, range_end=ALL, start_revision=start, prev_kv=prev_kv))
    stream = stub.Watch(iter([req]), timeout=20)
    events, compacted = [], None
    try:
        for resp in stream:
            if resp.canceled:
                compacted = resp.compact_revision
                break
            events.extend(resp.events)
            if events and events[-1].kv.mod_revision >= upto:
                break
    finally:
        stream.cancel()
        ch.close()
    return [e.SerializeToString() for e in events], compacted


def test_history_watch_replays_the_same_events(migrated, etcd):
    _, shim = migrated
    for start in (etcd.compact_revision + 1, etcd.compact_revision + 3):
        e = _watch(etcd, start, etcd.revision)
        s = _watch(shim, start, etcd.revision)
        assert e == s and len(e[0]) >= etcd.revision - start
    e = _watch(etcd, etcd.compact_revision - 1, etcd.revision)
    s = _watch(shim, etcd.compact_revision - 1, etcd.revision)
    assert e == s == ([], etcd.compact_revision)


def test_every_lease_with_its_ttl_and_keys(migrated, etcd):
    r, shim = migrated
    e, s = both(etcd, shim, "Lease", "LeaseLeases", rpc_pb2.LeaseLeasesRequest())
    assert sorted(x.ID for x in e[1].leases) == sorted(x.ID for x in s[1].leases) == sorted(
        [LEASE_A, LEASE_B, LEASE_IDLE])
    for lid in (LEASE_A, LEASE_B, LEASE_IDLE):
        e, s = both(etcd, shim, "Lease", "LeaseTimeToLive", rpc_pb2.LeaseTimeToLiveRequest(ID=lid, keys=True))
        assert e[1].ID == s[1].ID and e[1].grantedTTL == s[1].grantedTTL
        assert sorted(e[1].keys) == sorted(s[1].keys)
        if "--from-snapshot" in r.args:  # a snapshot holds granted TTLs: the full TTL again, as etcd restores it
            assert e[1].TTL - 2 <= s[1].TTL <= e[1].grantedTTL, (e, s)
        else:
            assert abs(e[1].TTL - s[1].TTL) <= 30, (e, s)  # both counted down since the copy


def test_hashkv_at_r_and_the_next_write_agree(migrated, etcd):
    _, shim = migrated
    e, s = both(etcd, shim, "Maintenance", "HashKV", rpc_pb2.HashKVRequest(revision=etcd.revision))
    assert e[1].hash == s[1].hash and e[1].compact_revision == s[1].compact_revision == etcd.compact_revision


def test_a_datastore_holding_data_is_refused(migrated, etcd):
    _, shim = migrated
    r = run_cli(*migrate_args(etcd, shim.datastore), check=False)
    assert r.returncode == 1 and "already holds data" in r.stderr and "Traceback" not in r.stderr
    ch = secure_channel(shim)
    got = rpc_pb2_grpc.KVStub(ch).Range(rpc_pb2.RangeRequest(key=ALL, range_end=ALL, count_only=True), timeout=10)
    ch.close()
    assert got.header.revision == etcd.revision


def test_a_committed_copy_is_recognised_on_a_rerun(migrated, etcd):
    """What the node flow does when a run committed the copy but was killed before it noted
    so: the datastore is checked against etcd (revision, key count, HashKV) instead of refused."""
    from k8s_sql.migrate import importer
    from k8s_sql.migrate.copy import open_source

    _, shim = migrated
    src = open_source(etcd.endpoint, etcd.tls.ca_file, etcd.tls.client_cert_file, etcd.tls.client_key_file)
    done = importer.holds_copy_of(shim.datastore, src)
    assert done is not None and done.revision == etcd.revision and done.keys == src.expected().keys


KILLER = textwrap.dedent("""
    import os, signal, sys
    from k8s_sql.migrate import importer
    from k8s_sql.migrate.copy import open_source
    url, ca, cert, key, ds, where = sys.argv[1:]
    def stop(*a):
        print("stopping", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    hooks = {"copy": dict(progress=stop), "commit": dict(before_commit=stop)}[where]
    importer.import_source(ds, open_source(url, ca, cert, key), **hooks)
""")


@pytest.mark.parametrize("where", ["copy", "commit"])
def test_a_killed_migration_leaves_nothing_and_a_rerun_succeeds(pg, etcd, tls, where):
    """SIGKILL while copying rows, and after the verification just before the commit."""
    db = pg.create_database(f"migrate_killed_{where}")
    r = subprocess.run([sys.executable, "-c", KILLER, etcd.endpoint, etcd.tls.ca_file, etcd.tls.client_cert_file,
                        etcd.tls.client_key_file, db, where], capture_output=True, text=True, timeout=120)
    assert r.returncode == -signal.SIGKILL and "stopping" in r.stdout, r.stderr
    time.sleep(0.5)
    assert pg.psql("SELECT revision, (SELECT count(*) FROM log), (SELECT count(*) FROM lease) FROM meta",
                   db="migrate_killed_" + where) == "1|0|0"
    run_cli(*migrate_args(etcd, db))
    shim = ShimProcess(db, tls).start()
    try:
        e, s = both(etcd, shim, "KV", "Range", rpc_pb2.RangeRequest(key=ALL, range_end=ALL, revision=etcd.revision))
        assert e == s and e[0] == etcd.revision
    finally:
        shim.stop()


def test_bad_source_flags_are_clear_errors(pg, etcd):
    db = pg.create_database("migrate_flags")
    r = run_cli("migrate", "--data-only", "--from-etcd", "ftp://x", "--datastore", db, check=False)
    assert r.returncode == 1 and "is not an etcd client URL" in r.stderr
    r = run_cli("migrate", "--data-only", "--from-etcd", etcd.endpoint, "--cacert", "/nonexistent/ca.crt",
                "--datastore", db, check=False)
    assert r.returncode == 1 and "cannot read --cacert /nonexistent/ca.crt" in r.stderr
    r = run_cli("migrate", "--data-only", "--from-etcd", etcd.endpoint, "--datastore", db + " password=x", check=False)
    assert r.returncode == 1 and "password" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_txn_before_the_compaction_out_of_key_order_needs_the_snapshot(pg, tmp_path):
    """etcd's API does not tell the order of a txn's keys once compacted (only the backend
    does): --from-etcd then fails verification and commits nothing; --from-snapshot copies it
    exactly (HashKV equal to etcd's)."""
    tls = make_tls(tmp_path / "pki")
    server = EtcdServer(tmp_path / "etcd", tls=tls).start()
    try:
        ch = secure_channel(server)
        kv = rpc_pb2_grpc.KVStub(ch)
        kv.Txn(rpc_pb2.TxnRequest(success=[
            rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"z", value=b"1")),
            rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"a", value=b"2"))]), timeout=10)
        rev = kv.Put(rpc_pb2.PutRequest(key=b"m", value=b"3"), timeout=10).header.revision
        kv.Compact(rpc_pb2.CompactionRequest(revision=rev, physical=True), timeout=30)
        kv.Put(rpc_pb2.PutRequest(key=b"m", value=b"4"), timeout=10)
        ch.close()
        db = pg.create_database("migrate_txn_order")
        r = run_cli(*migrate_args(server, db), check=False)
        assert r.returncode == 1 and "HashKV at revision" in r.stderr and "--from-snapshot" in r.stderr, r.stderr
        assert pg.psql("SELECT revision, (SELECT count(*) FROM log) FROM meta", db="migrate_txn_order") == "1|0"
        snap = str(tmp_path / "etcd.db")
        server.etcdctl("snapshot", "save", snap)
        run_cli("migrate", "--from-snapshot", snap, "--datastore", db)
        shim = ShimProcess(db, tls).start()
        try:
            e, s = both(server, shim, "Maintenance", "HashKV", rpc_pb2.HashKVRequest(revision=rev + 1))
            assert e[1].hash == s[1].hash
            e, s = both(server, shim, "KV", "Range", rpc_pb2.RangeRequest(key=ALL, range_end=ALL, revision=rev))
            assert e == s
        finally:
            shim.stop()
    finally:
        server.stop()


def test_a_truncated_snapshot_is_refused(pg, etcd, tmp_path):
    snap = tmp_path / "etcd.db"
    etcd.etcdctl("snapshot", "save", str(snap))
    data = snap.read_bytes()
    snap.write_bytes(data[:len(data) // 2])
    db = pg.create_database("migrate_truncated")
    r = run_cli("migrate", "--from-snapshot", str(snap), "--datastore", db, check=False)
    assert r.returncode == 1 and str(snap) in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert pg.psql("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'", db="migrate_truncated") == "0"


def test_etcd_compacted_at_its_current_revision(pg, tmp_path):
    """Compacted at R itself (no history after C): the state at C is all there is; the copy
    still verifies (HashKV of the current revision, as etcd refuses HashKV(C))."""
    tls = make_tls(tmp_path / "pki")
    server = EtcdServer(tmp_path / "etcd", tls=tls).start()
    try:
        ch = secure_channel(server)
        kv = rpc_pb2_grpc.KVStub(ch)
        for i in range(6):
            kv.Put(rpc_pb2.PutRequest(key=b"k%d" % (i % 3), value=b"v%d" % i), timeout=10)
        rev = kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=b"k1"), timeout=10).header.revision
        kv.Compact(rpc_pb2.CompactionRequest(revision=rev, physical=True), timeout=30)
        ch.close()
        db = pg.create_database("migrate_compacted_at_r")
        r = run_cli(*migrate_args(server, db))
        assert f"at revision {rev} (compact revision {rev})" in r.stdout and "on both sides" in r.stdout
        shim = ShimProcess(db, tls).start()
        try:
            e, s = both(server, shim, "KV", "Range", rpc_pb2.RangeRequest(key=ALL, range_end=ALL))
            assert e == s and e[0] == rev
            e, s = both(server, shim, "KV", "Range", rpc_pb2.RangeRequest(key=ALL, range_end=ALL, revision=rev - 1))
            assert e == s and "compacted" in e[2]
        finally:
            shim.stop()
    finally:
        server.stop()


def test_a_snapshot_whose_key_bucket_was_altered_is_refused(pg, etcd, tmp_path):
    """A snapshot still valid as bbolt and with a matching SHA-256 trailer, but one version's
    stored bytes changed (p15's value moved into a field mvccpb.KeyValue does not have): the
    copy cannot give those bytes back, so HashKV at R from the file differs from the copy's;
    refused, nothing committed."""
    import hashlib

    from k8s_sql.snapshot.etcdsnap import EtcdSnapshot

    snap = tmp_path / "etcd.db"
    etcd.etcdctl("snapshot", "save", str(snap))
    with EtcdSnapshot(snap) as s:
        stored = next(bytes(v) for _, v in s.items(b"key") if b"/registry/pods/default/p15" in bytes(v)
                      and b"\x2a\x05again" in bytes(v))
    data = snap.read_bytes()[:-32]
    assert data.count(stored) == 1
    altered = data.replace(stored, stored.replace(b"\x2a\x05again", b"\x3a\x05again"))  # field 5 -> field 7
    snap.write_bytes(altered + hashlib.sha256(altered).digest())
    with EtcdSnapshot(snap) as s:  # still a readable etcd snapshot
        assert s.revision == etcd.revision
    db = pg.create_database("migrate_altered")
    r = run_cli("migrate", "--from-snapshot", str(snap), "--datastore", db, check=False)
    assert r.returncode == 1 and f"HashKV at revision {etcd.revision}" in r.stderr, r.stdout + r.stderr
    assert "nothing was committed" in r.stderr and "Traceback" not in r.stderr
    assert pg.psql("SELECT revision, (SELECT count(*) FROM log), (SELECT count(*) FROM lease) FROM meta",
                   db="migrate_altered") == "1|0|0"
