"""Two shim versions on one database, as during a rolling upgrade across control planes.

The old shim is the schema code of an earlier commit (:data:`OLD_COMMIT`, taken from git
history with ``git archive`` into a temporary directory and run as its own ``python -m
k8s_sql shim serve`` process with that ``PYTHONPATH``); the new one is this tree. The old
shim creates the database, takes writes and serves a watcher; then the new shim starts on
the same database while that load runs, and migrates it (``schema.migrate``) if its schema
is newer. Writers and watchers then run on both at once: plain puts, deletes, and
create-if-absent transactions racing on the same keys through both shims.

What a user would check after such an upgrade: nothing acknowledged is lost, no revision is
handed out twice, each create-if-absent key was created once, both watchers (one created
before the migration) see every event exactly once in revision order, and both shims answer
the same Range. Real PostgreSQL, real shim processes with mTLS; no stand-ins.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from conftest import ShimProcess
from k8s_sql.phases.upgrade import OFFLINE_MIGRATIONS
from k8s_sql.shim.etcdpb import kv_pb2, rpc_pb2, rpc_pb2_grpc
from k8s_sql.shim.storage.schema import SCHEMA_VERSION
from streams import WatchStream

#: The last landing before upgrade support (issue #15): the "old" shim of the rolling upgrade.
OLD_COMMIT = "b23989d"
REPO = Path(__file__).resolve().parents[2]
PREFIX = b"/compat/"
WRITES = 150  # per writer and shim


@pytest.fixture(scope="module")
def old_src(tmp_path_factory) -> Path:
    """``src/`` of :data:`OLD_COMMIT`, extracted from git history."""
    dest = tmp_path_factory.mktemp("old-shim")
    archive = subprocess.run(["git", "-C", str(REPO), "archive", OLD_COMMIT, "src"], capture_output=True)
    if archive.returncode != 0:
        pytest.skip(f"git history without {OLD_COMMIT} (a shallow clone?): {archive.stderr.decode().strip()}")
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest / "src"


def old_schema_version(src: Path) -> int:
    """SCHEMA_VERSION as the old code defines it (imported in a process with its PYTHONPATH)."""
    out = subprocess.run([sys.executable, "-c", "import k8s_sql.shim.storage.schema as s; "
                          "print(s.__file__); print(s.SCHEMA_VERSION)"], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(src)})
    path, version = out.stdout.split()
    assert path.startswith(str(src)), path  # the old code, not this tree's
    return int(version)


class OldShim(ShimProcess):
    """A shim process running the old commit's code."""

    src: Path = Path()

    def argv(self) -> list[str]:
        return ["env", f"PYTHONPATH={self.src}", *super().argv()]


def schema_version(dsn: str) -> int:
    import psycopg

    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT max(version) FROM schema_version").fetchone()[0]


class Writer(threading.Thread):
    """Puts, deletes and create-if-absent txns through one shim; records each acknowledged
    change as ``(revision, type, key, value)``."""

    def __init__(self, shim: ShimProcess, tag: str):
        super().__init__(daemon=True)
        self.shim, self.tag = shim, tag
        self.acked: list[tuple[int, int, bytes, bytes]] = []
        self.created: list[bytes] = []
        self.error: BaseException | None = None

    def run(self):
        try:
            with self.shim.channel() as ch:
                kv = rpc_pb2_grpc.KVStub(ch)
                for i in range(WRITES):
                    key = PREFIX + f"{self.tag}/{i % 17}".encode()
                    value = f"{self.tag}-{i}".encode()
                    r = kv.Put(rpc_pb2.PutRequest(key=key, value=value), timeout=30)
                    self.acked.append((r.header.revision, kv_pb2.Event.PUT, key, value))
                    if i % 5 == 4:
                        gone = PREFIX + f"{self.tag}/{(i * 7) % 17}".encode()
                        d = kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=gone), timeout=30)
                        if d.deleted:
                            self.acked.append((d.header.revision, kv_pb2.Event.DELETE, gone, b""))
                    if i % 3 == 0:
                        race = PREFIX + f"race/{i}".encode()
                        t = kv.Txn(rpc_pb2.TxnRequest(
                            compare=[rpc_pb2.Compare(key=race, target=rpc_pb2.Compare.CREATE,
                                                     result=rpc_pb2.Compare.EQUAL, create_revision=0)],
                            success=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=race, value=value))]),
                            timeout=30)
                        if t.succeeded:
                            self.acked.append((t.header.revision, kv_pb2.Event.PUT, race, value))
                            self.created.append(race)
        except BaseException as e:  # reported by the test
            self.error = e


def watch_all(stream: WatchStream, n: int) -> list[tuple[int, int, bytes, bytes]]:
    return [(e.kv.mod_revision, e.type, e.kv.key, e.kv.value) for _, e in stream.events(n, timeout=60)]


def test_old_and_new_shim_share_one_database_under_load(pg, shim_tls, old_src):
    old_version = old_schema_version(old_src)
    crossing = [m for m in OFFLINE_MIGRATIONS if old_version < m <= SCHEMA_VERSION]
    assert not crossing, (f"migration {crossing} needs all shims stopped; `k8s-sql upgrade` refuses it "
                          "without --all-shims-stopped, so a rolling upgrade from this commit is not supported")
    dsn = pg.create_database(f"shim_{uuid.uuid4().hex[:10]}")
    old = OldShim(dsn, shim_tls)
    old.src = old_src
    old.start()
    new = None
    try:
        assert schema_version(dsn) == old_version
        old_watch = WatchStream(old.channel())
        old_watch.create(PREFIX, range_end=PREFIX[:-1] + b"0", start_revision=1)
        first = Writer(old, "old1")
        first.start()
        new = ShimProcess(dsn, shim_tls).start()  # migrates while the old shim takes writes
        assert schema_version(dsn) == SCHEMA_VERSION
        new_watch = WatchStream(new.channel())
        new_watch.create(PREFIX, range_end=PREFIX[:-1] + b"0", start_revision=1)
        writers = [first, Writer(old, "old2"), Writer(new, "new1"), Writer(new, "new2")]
        for w in writers[1:]:
            w.start()
        for w in writers:
            w.join(300)
            assert not w.is_alive(), f"writer {w.tag} hangs"
            assert w.error is None, f"writer {w.tag} on the {'old' if w.shim is old else 'new'} shim: {w.error!r}"

        acked = sorted(a for w in writers for a in w.acked)
        revisions = [a[0] for a in acked]
        assert len(set(revisions)) == len(revisions), "a revision was handed out twice"
        races = [k for w in writers for k in w.created]
        assert len(races) == len(set(races)) == len(range(0, WRITES, 3)), "a create-if-absent key was created twice"
        # every acknowledged change reaches both watchers, once, in revision order
        assert watch_all(old_watch, len(acked)) == acked
        assert watch_all(new_watch, len(acked)) == acked

        # both shims answer the same Range, which is the last acknowledged state of each key
        want: dict[bytes, bytes] = {}
        for _, kind, key, value in acked:
            if kind == kv_pb2.Event.PUT:
                want[key] = value
            else:
                want.pop(key, None)
        for shim in (old, new):
            with shim.channel() as ch:
                r = rpc_pb2_grpc.KVStub(ch).Range(rpc_pb2.RangeRequest(key=PREFIX, range_end=PREFIX[:-1] + b"0"))
            assert {kv.key: kv.value for kv in r.kvs} == want
            assert r.header.revision == revisions[-1]
        old_watch.close()
        new_watch.close()
    finally:
        if new is not None:
            new.stop()
        old.stop()
