"""Finding the local PostgreSQL cluster and talking to it as the ``postgres`` OS user.

Debian/Ubuntu layout (postgresql-common): ``pg_lsclusters`` lists ``<version> <cluster>``
with config in ``/etc/postgresql/<version>/<cluster>``, controlled with ``pg_ctlcluster``.
``postgres.configDir``/``dataDir`` name a cluster outside that layout (then ``pg_ctl`` of
``/usr/lib/postgresql/<version>/bin`` controls it). Administration goes through ``psql``
on the Unix socket (``postgres.socketDir``, ``postgres.port``), so it works over SSH too.
"""

from __future__ import annotations

import posixpath
import shlex
from dataclasses import dataclass

from k8s_sql.config import Cluster
from k8s_sql.errors import K8sSqlError
from k8s_sql.host import Host, Result

SUPPORTED_MAJORS = range(13, 19)


@dataclass(frozen=True)
class PgCluster:
    """A local cluster: major ``version`` ("15"), Debian cluster ``name`` ("main", or ""
    outside the Debian layout), ``config_dir``, ``data_dir``."""

    version: str
    name: str
    config_dir: str
    data_dir: str

    @property
    def label(self) -> str:
        return f"PostgreSQL {self.version}/{self.name}" if self.name else f"PostgreSQL in {self.config_dir}"

    def ctl_argv(self, action: str) -> list[str]:
        """The command (run as ``postgres``) that does ``action`` (start, reload, restart)."""
        if self.name:
            return ["pg_ctlcluster", self.version, self.name, action]
        return [f"/usr/lib/postgresql/{self.version}/bin/pg_ctl", "-D", self.data_dir, "-o",
                f"-c config_file={posixpath.join(self.config_dir, 'postgresql.conf')}",
                "-l", posixpath.join(self.data_dir, "k8s-sql-pg_ctl.log"), "-w", "-t", "60",
                *(["-m", "fast"] if action == "restart" else []), action]

    def ctl_hint(self, action: str) -> str:
        argv = self.ctl_argv(action)
        return shlex.join(argv if self.name else ["runuser", "-u", "postgres", "--", *argv])


def psql(host: Host, cfg: Cluster, sql: str, db: str = "postgres", check: bool = True) -> Result:
    """Run ``sql`` with psql as the ``postgres`` OS user over the Unix socket (unaligned,
    tuples only, ``|``-separated, ON_ERROR_STOP).

    Raises:
        CommandError: with ``check``, psql failed (server down, SQL error).
    """
    pg = cfg.postgres
    argv = ["psql", "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h", pg.socket_dir, "-p", str(pg.port),
            "-U", "postgres", "-d", db, "-c", sql]
    return host.run(argv, user="postgres", check=check, timeout=60)


def lsclusters(host: Host) -> list[tuple[str, str, int, str, str]]:
    """``pg_lsclusters`` rows ``(version, cluster, port, status, data_dir)``; ``[]`` when
    postgresql-common is not installed."""
    if host.which("pg_lsclusters") is None:
        return []
    rows = []
    for line in host.run(["pg_lsclusters", "--no-header"], check=False).stdout.splitlines():
        f = line.split()
        if len(f) >= 6 and f[2].isdigit():
            rows.append((f[0], f[1], int(f[2]), f[3], f[5]))
    return rows


def discover(host: Host, cfg: Cluster) -> PgCluster | None:
    """The cluster ``postgres`` configures: ``configDir``/``dataDir``/``version`` when set,
    else the ``pg_lsclusters`` row named ``postgres.cluster`` (of ``postgres.version``, or
    the one on ``postgres.port``, or the newest); ``None`` when there is none.

    With ``configDir`` but no ``version``/``dataDir``, the running server is asked.
    """
    pg = cfg.postgres
    if pg.config_dir:
        version, data_dir = pg.version, pg.data_dir
        if not version or not data_dir:
            res = psql(host, cfg, "SELECT current_setting('server_version_num'), current_setting('data_directory')",
                       check=False)
            if res.ok and "|" in res.stdout:
                num, data = res.stdout.strip().split("|", 1)
                version = version or str(int(num) // 10000)
                data_dir = data_dir or data
        return PgCluster(version or "?", "", pg.config_dir, data_dir)
    rows = [r for r in lsclusters(host) if r[1] == pg.cluster and (not pg.version or r[0] == pg.version)]
    if not rows:
        return None
    rows.sort(key=lambda r: (r[2] == pg.port, int(r[0]) if r[0].isdigit() else 0))
    version, name, _, _, data_dir = rows[-1]
    return PgCluster(version, name, f"/etc/postgresql/{version}/{name}", data_dir)


def require_running(host: Host, cfg: Cluster, cluster: PgCluster) -> dict[str, str]:
    """Server settings k8s-sql needs (``server_version_num``, ``config_file``,
    ``hba_file``, ``listen_addresses``, ``ssl``), asked over the socket.

    Raises:
        K8sSqlError: psql is missing, the server is down or refuses the postgres user, or
            its major version is outside 13–18.
    """
    if host.which("psql") is None:
        raise K8sSqlError("psql is not installed", where=host.name,
                          hint="run `k8s-sql init phase prereqs` (or apt-get install postgresql-client)")
    names = ("server_version_num", "config_file", "hba_file", "listen_addresses", "ssl")
    res = psql(host, cfg, "SELECT " + ", ".join(f"current_setting('{n}')" for n in names), check=False)
    if not res.ok:
        reason = " ".join((res.stderr or res.stdout).split())[:300]
        raise K8sSqlError(f"{cluster.label} is down or unreachable on {cfg.postgres.socket_dir} port "
                          f"{cfg.postgres.port} ({reason})", where=host.name,
                          hint=f"start it with `{cluster.ctl_hint('start')}`, or fix postgres.socketDir/port")
    values = dict(zip(names, res.stdout.strip().split("|")))
    major = int(values["server_version_num"]) // 10000
    if major not in SUPPORTED_MAJORS:
        raise K8sSqlError(f"{cluster.label} is version {major}; k8s-sql supports PostgreSQL 13 to 18",
                          where=host.name, hint="set postgres.version to a supported cluster")
    return values


def base_listen_addresses(host: Host, cfg: Cluster, own_file: str) -> str:
    """``listen_addresses`` as the configuration files other than ``own_file`` set it
    (``pg_file_settings``; PostgreSQL's default ``localhost`` when none does)."""
    res = psql(host, cfg, "SELECT sourcefile, setting FROM pg_file_settings WHERE name = 'listen_addresses' "
               "ORDER BY seqno")
    value = "localhost"
    for line in res.stdout.strip().splitlines():
        source, _, setting = line.partition("|")
        if source != own_file:
            value = setting
    return value
