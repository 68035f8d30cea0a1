"""The systems under test, on loopback: etcd 3.4, a throwaway PostgreSQL, shim processes.

etcd is Debian's ``etcd`` with its own data dir (``tests/shim/etcd_server.py``); PostgreSQL is
a temp cluster made with Debian's initdb (``tests/pgcluster.py``) with default durability
(fsync on, synchronous_commit on); each shim is a ``k8s-sql shim serve`` subprocess speaking
plain gRPC (http://) on loopback.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _p in (os.path.join(ROOT, "tests"), os.path.join(ROOT, "tests", "shim"), os.path.join(ROOT, "src")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from etcd_server import EtcdServer, free_port  # noqa: E402
from pgcluster import TempPostgres  # noqa: E402
from procs import stop_process  # noqa: E402

__all__ = ["EtcdServer", "TempPostgres", "Shim", "NoopServer", "free_port", "start_postgres", "cpu_seconds",
           "process_tree"]


def start_postgres(base: str) -> TempPostgres:
    """Init and start a temp PostgreSQL in ``base`` (defaults: fsync, synchronous_commit on).

    Only max_connections is raised so several shims and pgbench's 64 clients fit.
    """
    os.makedirs(base, exist_ok=True)
    os.chmod(os.path.dirname(os.path.abspath(base)), 0o755)
    pg = TempPostgres(base).init()
    with open(os.path.join(pg.config_dir, "conf.d", "bench.conf"), "w") as f:
        f.write("max_connections = 300\n")
    return pg.start()


class Shim:
    """One ``k8s-sql shim serve`` process on ``127.0.0.1:port`` (plain gRPC) against ``dsn``.

    ``start()`` waits for "k8s-sql shim ready" on stderr (RuntimeError after ``timeout`` s).
    """

    def __init__(self, dsn: str, log_path: str, workers: int = 1, extra: list[str] | None = None):
        self.dsn, self.log_path, self.workers, self.extra = dsn, log_path, workers, extra or []
        self.port = free_port()
        self.endpoint = f"127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> "Shim":
        argv = [sys.executable, "-m", "k8s_sql", "shim", "serve", "--listen-client-urls", f"http://{self.endpoint}",
                "--datastore", self.dsn, "--metrics-addr", "", "--log-level", "warning",
                "--workers", str(self.workers), *self.extra]
        env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        ready = threading.Event()
        log = open(self.log_path, "a")
        seen: list[str] = []

        def pump():
            for line in self.proc.stderr:
                log.write(line)
                log.flush()
                if "k8s-sql shim ready" in line:
                    seen.append(line)
                    if len(seen) >= self.workers:  # every worker process listens
                        ready.set()
        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not ready.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                with open(self.log_path) as f:
                    tail = f.read()[-2000:]
                raise RuntimeError(f"shim did not start: {tail}")
        return self

    def stop(self) -> None:
        stop_process(self.proc, 15)

    def pids(self) -> list[int]:
        """The first process and its worker processes."""
        return process_tree(self.proc.pid)


class NoopServer(Shim):
    """``python3 -m bench.noop`` (the no-op KV ceiling) with ``workers`` processes on one port."""

    def start(self, timeout: float = 60.0) -> "NoopServer":
        argv = [sys.executable, "-m", "bench.noop", "--listen", self.endpoint, "--workers", str(self.workers)]
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.path.join(ROOT, "src"))
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                                     cwd=ROOT)
        n = 0
        deadline = time.monotonic() + timeout
        while n < self.workers:
            line = self.proc.stderr.readline()
            if not line or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"no-op server did not start: {line}")
            n += "noop ready" in line
        threading.Thread(target=lambda: [None for _ in self.proc.stderr], daemon=True).start()
        return self


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (from /proc/<pid>/task/*/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds so far of the processes ``pids`` (all their threads;
    /proc/<pid>/stat utime + stime); a process that has gone counts 0."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")
