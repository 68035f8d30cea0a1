"""A pg_auto_failover formation for tests: one monitor and keepers, each a ``pg_autoctl run``
process (with the PostgreSQL it starts) in a temp dir, run as the ``postgres`` OS user
(initdb refuses root), on loopback ports or at addresses of network namespaces the test
made. TLS and certificate login exactly as the installer sets them up
(:mod:`k8s_sql.pg.ha`): a datastore CA from :mod:`k8s_sql.pki.certs`, a server certificate
per node, the node client certificate, and the ``hostssl … cert map=`` lines.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field


from k8s_sql.pg import ha
from k8s_sql.pki import certs, files
from pgcluster import free_port, pg_bindir


def write_pki(base: str, addresses: list[str], shim_role: str) -> tuple[ha.Tls, str, str]:
    """A CA, one server certificate naming every address, the node client certificate
    (CN ``k8s-sql-pg-node``), with the installer's file names (so ``status`` reads them),
    and the shim's client certificate (CN ``shim_role``), owned by
    postgres (node files) or root. Returns (Tls, shim cert, shim key)."""
    os.makedirs(base, exist_ok=True)
    os.chmod(base, 0o755)
    pw = pwd.getpwnam("postgres")
    ca_pem, ca_key_pem = certs.new_ca(3650)
    ca_cert, ca_key = certs.load_ca(ca_pem, ca_key_pem, base)

    def save(name: str, spec: certs.LeafSpec, owner: int | None) -> tuple[str, str]:
        cert, key = certs.issue(spec, ca_cert, ca_key, 1)
        cp, kp = os.path.join(base, name + ".crt"), os.path.join(base, name + ".key")
        with open(cp, "wb") as f:
            f.write(cert)
        with open(kp, "wb") as f:
            f.write(key)
        os.chmod(kp, 0o600)
        if owner is not None:
            os.chown(kp, owner, pw.pw_gid)
            os.chown(cp, owner, pw.pw_gid)
        return cp, kp

    ca_file = os.path.join(base, files.CA_CERT)
    with open(ca_file, "wb") as f:
        f.write(ca_pem)
    sc, sk = save(files.POSTGRES_SERVER_CERT[:-4], certs.LeafSpec(files.POSTGRES_SERVER_CERT, "k8s-sql-postgres", True, ("localhost",),
                                           tuple(dict.fromkeys(["127.0.0.1", *addresses]))), pw.pw_uid)
    cc, ck = save(ha.NODE_CLIENT_CERT[:-4], certs.LeafSpec(ha.NODE_CLIENT_CERT, ha.NODE_CLIENT_CN, False), pw.pw_uid)
    shc, shk = save("shim", certs.LeafSpec("shim.crt", shim_role, False), None)
    return ha.Tls(ca_file, sc, sk, cc, ck), shc, shk


def _children(pid: int) -> list[int]:
    """Pids whose parent is ``pid`` (from /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry))
    return out


@dataclass
class Node:
    """A monitor or keeper: its pgdata, port, address, and the ``pg_autoctl run`` process."""

    name: str
    base: str
    address: str
    port: int
    netns: str | None = None
    proc: subprocess.Popen | None = None
    log: list[str] = field(default_factory=list)

    @property
    def pgdata(self) -> str:
        return os.path.join(self.base, "pgdata")

    def postmaster_pid(self) -> int | None:
        try:
            with open(os.path.join(self.pgdata, "postmaster.pid")) as f:
                return int(f.readline())
        except (OSError, ValueError):
            return None


class Formation:
    """A monitor and ``n`` keepers. ``addresses``: per keeper (default 127.0.0.1 each, on
    its own port); ``netns``: per keeper, a network namespace it runs in (or None)."""

    def __init__(self, n: int = 3, addresses: list[str] | None = None, netns: list[str | None] | None = None,
                 monitor_address: str = "127.0.0.1", monitor_netns: str | None = None, dbname: str = "kubernetes", shim_role: str = "k8s_sql",
                 base: str | None = None):
        self.base = base or tempfile.mkdtemp(prefix="k8s-sql-ha-")
        os.makedirs(self.base, exist_ok=True)
        os.chmod(self.base, 0o755)
        self.bindir = pg_bindir()
        self.dbname, self.shim_role = dbname, shim_role
        addresses = addresses or ["127.0.0.1"] * n
        netns = netns or [None] * n
        self.tls, self.shim_cert, self.shim_key = write_pki(os.path.join(self.base, "pki"),
                                                            [monitor_address, *addresses], shim_role)
        self.monitor = Node("monitor", os.path.join(self.base, "monitor"), monitor_address, free_port(),
                            monitor_netns)
        self.keepers = [Node(f"node{i + 1}", os.path.join(self.base, f"node{i + 1}"), a, free_port(), ns)
                        for i, (a, ns) in enumerate(zip(addresses, netns))]
        self.node_addresses = [monitor_address, *addresses]
        self.pw = pwd.getpwnam("postgres")

    # -- running pg_autoctl as postgres --------------------------------------------------

    def _env(self, node: Node) -> dict[str, str]:
        return ha.ssl_env(self.tls, os.path.join(node.base, "config"), os.path.join(node.base, "share"))

    def _argv(self, node: Node, argv: list[str]) -> list[str]:
        env = [f"{k}={v}" for k, v in self._env(node).items()] + [f"PATH={self.bindir}:/usr/bin:/bin"]
        inner = ["runuser", "-u", "postgres", "--", "env", *env, *argv]
        return ["ip", "netns", "exec", node.netns, *inner] if node.netns else inner

    def autoctl(self, node: Node, argv: list[str], timeout: float = 120, check: bool = True):
        r = subprocess.run(self._argv(node, argv), capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} on {node.name} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
        return r

    def _prepare(self, node: Node) -> None:
        for d in (node.base, os.path.join(node.base, "config"), os.path.join(node.base, "share")):
            os.makedirs(d, exist_ok=True)
            os.chown(d, self.pw.pw_uid, self.pw.pw_gid)

    def _write_hba(self, node: Node) -> None:
        """The installer's lines: pg_auto_failover's (cert map) and the shim's role; the
        local socket for pg_autoctl itself (the OS user postgres)."""
        lines = ["local all postgres peer", *ha.hba_lines(self.node_addresses, self.dbname),
                 f"hostssl {self.dbname} {self.shim_role} 0.0.0.0/0 cert",
                 f"hostssl {self.dbname} {self.shim_role} ::/0 cert"]
        with open(os.path.join(node.pgdata, "pg_hba.conf"), "w") as f:
            f.write("\n".join(lines) + "\n")
        with open(os.path.join(node.pgdata, "pg_ident.conf"), "w") as f:
            f.write("\n".join(ha.ident_lines()) + "\n")

    def start_service(self, node: Node) -> None:
        node.proc = subprocess.Popen(self._argv(node, ha.run_argv(node.pgdata)), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, start_new_session=True)
        proc = node.proc

        def pump():
            for line in proc.stderr:
                node.log.append(line.rstrip("\n"))
        threading.Thread(target=pump, daemon=True).start()

    def pg_ctl(self) -> str:
        return os.path.join(self.bindir, "pg_ctl")

    def create(self) -> "Formation":
        if shutil.which("pg_autoctl") is None:
            raise RuntimeError("pg_autoctl is not installed: apt-get install pg-auto-failover-cli "
                               f"postgresql-{self.bindir.split('/')[-2]}-auto-failover")
        m = self.monitor
        self._prepare(m)
        self.autoctl(m, ha.create_monitor_argv(m.pgdata, m.address, m.port, self.tls, self.pg_ctl()))
        self._write_hba(m)
        self.start_service(m)
        self.wait_monitor()
        self.tune_monitor()
        for k in self.keepers:
            self.add_keeper(k)
        return self

    def tune_monitor(self) -> None:
        """Health checks every second, a node unhealthy after 5 s: failover in seconds
        rather than pg_auto_failover's default ~20 s (what the installer sets, README "HA")."""
        for k, v in ha.MONITOR_SETTINGS.items():
            self.monitor_sql(f"ALTER SYSTEM SET {k} = '{v}'", db="postgres")
        self.monitor_sql("SELECT pg_reload_conf()", db="postgres")

    def add_keeper(self, k: Node) -> None:
        self._prepare(k)
        self.autoctl(k, ha.create_keeper_argv(k.pgdata, k.name, k.address, k.port, self.monitor_uri,
                                              self.dbname, self.tls, self.pg_ctl(),
                                              listen=k.address), timeout=300)
        self._write_hba(k)
        for key, value in ha.KEEPER_SETTINGS.items():
            self.autoctl(k, ha.config_set_argv(k.pgdata, key, value))
        self.start_service(k)
        self.wait_states({k.name: ("single", "primary", "secondary")}, timeout=120)
        for key, value in ha.KEEPER_PG_SETTINGS.items():
            self.keeper_sql(k, f"ALTER SYSTEM SET {key} = '{value}'")
        self.keeper_sql(k, "SELECT pg_reload_conf()")

    @property
    def monitor_uri(self) -> str:
        return ha.monitor_uri(self.monitor.address, self.monitor.port, self.tls)

    def monitor_sql(self, sql: str, db: str = ha.MONITOR_DB) -> str:
        m = self.monitor
        r = subprocess.run(["runuser", "-u", "postgres", "--", os.path.join(self.bindir, "psql"), "-X", "-A", "-t",
                            "-v", "ON_ERROR_STOP=1", "-h", "/var/run/postgresql", "-p", str(m.port), "-d", db, "-c", sql],
                           capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            raise RuntimeError(f"monitor psql: {r.stderr}")
        return r.stdout.strip()

    def keeper_sql(self, k: Node, sql: str, db: str = "postgres") -> str:
        """``sql`` as the superuser over the keeper's Unix socket (inside its namespace: the
        socket of a server started by ``ip netns exec`` lives in that mount namespace);
        retried for 20 s while the socket is not there (pg_autoctl may be restarting it)."""
        deadline = time.monotonic() + 20
        while True:
            r = subprocess.run(self._argv(k, [os.path.join(self.bindir, "psql"), "-X", "-A", "-t", "-v",
                                              "ON_ERROR_STOP=1", "-h", "/var/run/postgresql", "-p", str(k.port),
                                              "-d", db, "-c", sql]), capture_output=True, text=True, timeout=30)
            starting = "No such file" in r.stderr or "starting up" in r.stderr
            if r.returncode == 0 or not starting or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        if r.returncode != 0:
            raise RuntimeError(f"{k.name} psql: {r.stderr}")
        return r.stdout.strip()

    def wait_monitor(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.monitor_sql("SELECT 1")
                return
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise RuntimeError("monitor not up:\n" + "\n".join(self.monitor.log[-30:]))
                time.sleep(0.3)

    def state(self) -> list[ha.NodeState]:
        r = subprocess.run(self._argv(self.monitor, ha.show_state_argv(self.monitor_uri)), capture_output=True,
                           text=True, timeout=30)
        if r.returncode != 0:
            raise RuntimeError(r.stderr)
        return ha.parse_state(r.stdout)

    def states(self) -> dict[str, tuple[str, str]]:
        return {n.name: (n.reported, n.assigned) for n in self.state()}

    def wait_states(self, want: dict[str, tuple[str, ...]], timeout: float) -> dict:
        """Until each named node's reported and assigned state are one of ``want[name]``."""
        deadline = time.monotonic() + timeout
        last: dict = {}
        while time.monotonic() < deadline:
            try:
                last = self.states()
            except RuntimeError:
                time.sleep(0.5)
                continue
            if all(name in last and last[name][0] == last[name][1] and last[name][0] in ok
                   for name, ok in want.items()):
                return last
            time.sleep(0.3)
        logs = "\n".join(f"--- {k.name}\n" + "\n".join(k.log[-15:]) for k in [self.monitor, *self.keepers])
        raise TimeoutError(f"states {last}, wanted {want}\n{logs}")

    def primary(self) -> Node:
        st = self.states()
        names = [n for n, (rep, asg) in st.items() if rep == asg and rep in ("primary", "single")]
        assert len(names) == 1, st
        return next(k for k in self.keepers if k.name == names[0])

    def shim_uri(self) -> str:
        return ha.shim_uri([(k.address, k.port) for k in self.keepers], self.dbname, self.shim_role,
                           self.tls.ca_file, self.shim_cert, self.shim_key)

    def grant_shim(self) -> None:
        """The shim's role, owner of the database (what the postgres phase does), on the primary."""
        p = self.primary()
        for stmt in (f"CREATE ROLE {self.shim_role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE",
                     f"ALTER DATABASE {self.dbname} OWNER TO {self.shim_role}",
                     f"ALTER SCHEMA public OWNER TO {self.shim_role}"):
            self.keeper_sql(p, stmt, db=self.dbname)

    # -- faults ---------------------------------------------------------------------------

    def kill(self, node: Node) -> None:
        """SIGKILL the node's pg_autoctl (its process group) and its postmaster."""
        pid = node.postmaster_pid()
        children = _children(pid) if pid else []
        if node.proc and node.proc.poll() is None:
            try:
                os.killpg(node.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            node.proc.wait(10)
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for child in children:  # its backends, as a lost machine takes them too
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        for node in [*self.keepers, self.monitor]:
            self.kill(node)

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)
