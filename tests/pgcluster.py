"""A throwaway PostgreSQL cluster for tests, made with Debian's binaries in a temp dir.

The layout mimics Debian's: a config directory (postgresql.conf with ``include_dir =
'conf.d'``, pg_hba.conf, pg_ident.conf) apart from the data directory, so the postgres
phase sees what it sees on a real node. The server runs as the ``postgres`` OS user
(initdb refuses root), listens on 127.0.0.1 and ::1 at a free port and on a Unix socket in
the temp dir. The system cluster (``/etc/postgresql``) is never touched.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time


def pg_bindir() -> str:
    """The newest ``/usr/lib/postgresql/<major>/bin``."""
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(d.split("/")[-2]))
    if not dirs:
        raise RuntimeError("PostgreSQL server binaries not found: apt-get install postgresql")
    return dirs[-1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TempPostgres:
    """One PostgreSQL server in ``base`` (a temp dir): ``config_dir``, ``data_dir``,
    ``socket_dir``, ``port``. Superuser ``postgres`` connects with trust over the socket."""

    def __init__(self, base: str | None = None):
        self.base = base or tempfile.mkdtemp(prefix="k8s-sql-pg-")
        os.chmod(self.base, 0o755)
        self.bindir = pg_bindir()
        self.major = self.bindir.split("/")[-2]
        self.config_dir = os.path.join(self.base, "conf")
        self.data_dir = os.path.join(self.base, "data")
        self.socket_dir = os.path.join(self.base, "run")
        self.log_file = os.path.join(self.base, "postgresql.log")
        self.port = free_port()
        pw = pwd.getpwnam("postgres")
        self.uid, self.gid = pw.pw_uid, pw.pw_gid

    def _as_postgres(self, argv: list[str], **kw) -> subprocess.CompletedProcess:
        if os.getuid() == 0:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        return subprocess.run(argv, capture_output=True, text=True, **kw)

    def init(self) -> "TempPostgres":
        for d in (self.config_dir, self.socket_dir):
            os.makedirs(d, exist_ok=True)
        os.makedirs(os.path.join(self.config_dir, "conf.d"), exist_ok=True)
        for d in (self.base, self.config_dir, self.socket_dir, os.path.join(self.config_dir, "conf.d")):
            os.chown(d, self.uid, self.gid)
        r = self._as_postgres([f"{self.bindir}/initdb", "-D", self.data_dir, "-U", "postgres",
                               "--auth-local=trust", "--auth-host=reject", "-E", "UTF8", "--locale=C.UTF-8"])
        if r.returncode != 0:
            raise RuntimeError(f"initdb failed: {r.stderr}")
        for name in ("postgresql.conf", "pg_hba.conf", "pg_ident.conf"):
            shutil.move(os.path.join(self.data_dir, name), os.path.join(self.config_dir, name))
        with open(os.path.join(self.config_dir, "postgresql.conf"), "a") as f:
            f.write(
                f"\n# test cluster, Debian-like layout\n"
                f"data_directory = '{self.data_dir}'\n"
                f"hba_file = '{self.config_dir}/pg_hba.conf'\n"
                f"ident_file = '{self.config_dir}/pg_ident.conf'\n"
                f"port = {self.port}\n"
                f"listen_addresses = '127.0.0.1,::1'\n"
                f"unix_socket_directories = '{self.socket_dir}'\n"
                f"include_dir = 'conf.d'\n"
            )
        return self

    def pg_ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        r = self._as_postgres([f"{self.bindir}/pg_ctl", "-D", self.data_dir, "-o",
                               f"-c config_file={self.config_dir}/postgresql.conf", "-l", self.log_file,
                               "-w", "-t", "60", *args])
        if check and r.returncode != 0:
            raise RuntimeError(f"pg_ctl {' '.join(args)} failed: {r.stdout}{r.stderr}\n{self.log_tail()}")
        return r

    def start(self) -> "TempPostgres":
        self.pg_ctl("start")
        return self

    def stop(self, mode: str = "fast") -> None:
        self.pg_ctl("stop", "-m", mode, check=False)

    def restart(self) -> None:
        self.pg_ctl("restart", "-m", "fast")

    def reload(self) -> None:
        self.pg_ctl("reload")

    def is_running(self) -> bool:
        return self.pg_ctl("status", check=False).returncode == 0

    def log_tail(self, n: int = 20) -> str:
        try:
            with open(self.log_file) as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def psql(self, sql: str, db: str = "postgres") -> str:
        """Run SQL as the superuser over the Unix socket; returns unaligned output."""
        r = self._as_postgres([f"{self.bindir}/psql", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                               "-h", self.socket_dir, "-p", str(self.port), "-U", "postgres", "-d", db,
                               "-c", sql])
        if r.returncode != 0:
            raise RuntimeError(f"psql failed: {r.stderr}")
        return r.stdout.strip()

    def superuser_dsn(self, db: str = "postgres") -> str:
        """libpq conninfo for the superuser over the socket (the test process must run as
        root or postgres; trust auth on the socket)."""
        return f"host={self.socket_dir} port={self.port} user=postgres dbname={db}"

    def create_database(self, name: str) -> str:
        """Create database ``name`` (dropping any old one); returns a superuser conninfo to it."""
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.psql(f'CREATE DATABASE "{name}"')
        return self.superuser_dsn(name)

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)
