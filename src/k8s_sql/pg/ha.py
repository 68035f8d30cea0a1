"""PostgreSQL high availability with pg_auto_failover (Debian: ``pg-auto-failover-cli`` and
``postgresql-<major>-auto-failover``): one monitor and a keeper per control-plane node.

pg_auto_failover does the failover: the monitor watches the keepers, promotes a standby
when the primary fails its health checks, keeps replication synchronous
(``number_sync_standbys``) so an acknowledged commit is on a second node, and demotes a
returning old primary (fencing) before it takes writes again. k8s-sql only builds its
command lines, its pg_hba/pg_ident lines, the multi-host URI the shims use, and reads its
state for ``status``. Every command and line here is a pure function of its arguments.

Authentication is by client certificate only, over TLS with ``sslmode=verify-full``
against the datastore CA, never a password: every pg_auto_failover process (monitor and
keepers, and the PostgreSQL servers they start) presents the node certificate
:data:`NODE_CLIENT_CN` (``PGSSLCERT``/``PGSSLKEY`` in its environment, see :func:`ssl_env`),
and :data:`IDENT_MAP` in ``pg_ident.conf`` maps that CN to pg_auto_failover's own roles
(``autoctl_node``, ``pgautofailover_replicator``, ``pgautofailover_monitor``). pg_autoctl runs
with ``--skip-pg-hba``: k8s-sql writes the ``hostssl … cert map=…`` lines itself, one per
node address (:func:`hba_lines`). Facts (flag names, role names, the JSON of ``show
state``) come from pg_auto_failover 2.0's documentation and ``pg_autoctl --help``.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from urllib.parse import quote, urlencode

#: The CN of the client certificate every pg_auto_failover process presents.
NODE_CLIENT_CN = "k8s-sql-pg-node"
#: The pg_ident.conf map from :data:`NODE_CLIENT_CN` to pg_auto_failover's roles.
IDENT_MAP = "k8s-sql-ha"
#: pg_auto_failover's roles (created by ``pg_autoctl create``): keepers log in to the
#: monitor as ``autoctl_node``; standbys replicate (and pg_rewind) as
#: ``pgautofailover_replicator``; the monitor checks nodes as ``pgautofailover_monitor``.
ROLES = ("autoctl_node", "pgautofailover_replicator", "pgautofailover_monitor")
#: The node certificate's files in ``paths.pkiDir`` (key owned by postgres, 0600).
NODE_CLIENT_CERT = "postgres-ha-node.crt"
NODE_CLIENT_KEY = "postgres-ha-node.key"
#: The monitor's database (pg_auto_failover's fixed name).
MONITOR_DB = "pg_auto_failover"
#: The monitor's port on the first node (the keeper's PostgreSQL keeps ``postgres.port``).
DEFAULT_MONITOR_PORT = 5431
FORMATION = "default"
#: The monitor's settings k8s-sql sets (``ALTER SYSTEM``; pg_auto_failover's GUCs, in ms):
#: a health check every second, a node unhealthy after 5 s without a report and a failed
#: check, and a primary that cannot be reached given 15 s to demote itself before a
#: standby is promoted (pg_auto_failover's defaults: 5 s, 20 s, 30 s). Together with
#: :data:`KEEPER_SETTINGS` and :data:`KEEPER_PG_SETTINGS` an old primary cut off from the
#: others stops serving before the new one takes writes.
MONITOR_SETTINGS = {
    "pgautofailover.health_check_period": "1000",
    "pgautofailover.health_check_timeout": "1000",
    "pgautofailover.health_check_max_retries": "1",
    "pgautofailover.health_check_retry_delay": "500",
    "pgautofailover.node_considered_unhealthy_timeout": "5000",
    "pgautofailover.primary_demote_timeout": "15000",
}
#: The keepers' settings (``pg_autoctl config set``, seconds): a primary that reaches neither
#: the monitor nor a standby for 5 s demotes itself (default 20 s), well within the
#: monitor's ``primary_demote_timeout``.
KEEPER_SETTINGS = {"timeout.network_partition_timeout": "5"}
#: PostgreSQL settings on every keeper (``ALTER SYSTEM``). A keeper cut off from the monitor
#: demotes its primary only network_partition_timeout after the last time it saw a standby
#: in pg_stat_replication *while the monitor was already lost* (pg_auto_failover 2.0,
#: ``is_network_healthy``: ``last_secondary_contact`` is only set then; if it never saw one,
#: it never demotes). So the walsenders of the cut-off standbys must outlive the keeper's
#: first failed monitor contact (about 2-3 s) — and not by long, or the demotion comes
#: late: ``wal_sender_timeout`` 6 s (default 60 s, with which a cut-off primary went on
#: serving stale reads after a standby was promoted). Demotion then comes about 6 + 5 s
#: after the cut, before the monitor promotes (5 + 15 s and more).
KEEPER_PG_SETTINGS = {"wal_sender_timeout": "6s", "wal_receiver_timeout": "6s"}


@dataclass(frozen=True)
class Tls:
    """The datastore CA and the files a node's pg_auto_failover uses (absolute paths)."""

    ca_file: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str


def _host(h: str) -> str:
    """``h`` for a URI authority: an IPv6 literal in brackets."""
    try:
        return f"[{h}]" if ipaddress.ip_address(h).version == 6 else h
    except ValueError:
        return h


def monitor_uri(host: str, port: int, tls: Tls) -> str:
    """The keepers' ``--monitor`` URI: ``autoctl_node`` on the monitor's database,
    verify-full against the CA, the node certificate. No password."""
    q = {"sslmode": "verify-full", "sslrootcert": tls.ca_file, "sslcert": tls.client_cert,
         "sslkey": tls.client_key}
    return f"postgres://autoctl_node@{_host(host)}:{port}/{MONITOR_DB}?" + urlencode(q, safe="/")


def node_tls(pki_dir: str, server_cert: str, server_key: str, ca_file: str) -> Tls:
    """The :class:`Tls` of a node whose node certificate is in ``pki_dir``."""
    return Tls(ca_file, server_cert, server_key, f"{pki_dir.rstrip('/')}/{NODE_CLIENT_CERT}",
               f"{pki_dir.rstrip('/')}/{NODE_CLIENT_KEY}")


def ssl_env(tls: Tls, config_home: str | None = None, data_home: str | None = None) -> dict[str, str]:
    """Environment of a ``pg_autoctl`` process: libpq's ``PGSSLCERT``/``PGSSLKEY``/
    ``PGSSLROOTCERT`` (inherited by the PostgreSQL it starts, so replication and the
    monitor's health checks present the node certificate), and optionally where
    pg_autoctl keeps its configuration and state (``XDG_CONFIG_HOME``/``XDG_DATA_HOME``)."""
    env = {"PGSSLCERT": tls.client_cert, "PGSSLKEY": tls.client_key, "PGSSLROOTCERT": tls.ca_file}
    if config_home:
        env["XDG_CONFIG_HOME"] = config_home
    if data_home:
        env["XDG_DATA_HOME"] = data_home
    return env


def _ssl_flags(tls: Tls) -> list[str]:
    return ["--ssl-mode", "verify-full", "--ssl-ca-file", tls.ca_file, "--server-cert", tls.server_cert,
            "--server-key", tls.server_key]


def create_monitor_argv(pgdata: str, hostname: str, port: int, tls: Tls, pg_ctl: str) -> list[str]:
    """``pg_autoctl create monitor`` (run as the postgres OS user): initdb into ``pgdata``,
    listening on ``port``, reachable as ``hostname`` (an address in the server certificate)."""
    return ["pg_autoctl", "create", "monitor", "--pgctl", pg_ctl, "--pgdata", pgdata, "--pgport", str(port),
            "--hostname", hostname, "--skip-pg-hba", *_ssl_flags(tls)]


def create_keeper_argv(pgdata: str, name: str, hostname: str, port: int, monitor: str, dbname: str, tls: Tls,
                       pg_ctl: str, listen: str = "*") -> list[str]:
    """``pg_autoctl create postgres``: a keeper named ``name`` whose PostgreSQL listens on
    ``port`` (``listen``: its ``listen_addresses``) and is reached as ``hostname``. The
    first keeper of the formation becomes the primary and creates ``dbname``; the next
    ones are cloned from it with pg_basebackup and become synchronous standbys."""
    return ["pg_autoctl", "create", "postgres", "--pgctl", pg_ctl, "--pgdata", pgdata, "--pgport", str(port),
            "--listen", listen, "--name", name, "--hostname", hostname, "--dbname", dbname, "--monitor", monitor,
            "--skip-pg-hba", *_ssl_flags(tls)]


def run_argv(pgdata: str) -> list[str]:
    """``pg_autoctl run``: the monitor's or keeper's service (foreground; a systemd unit
    runs it on a node)."""
    return ["pg_autoctl", "run", "--pgdata", pgdata]


def config_set_argv(pgdata: str, key: str, value: str) -> list[str]:
    """``pg_autoctl config set KEY VALUE`` in the keeper's configuration (takes effect at
    the next ``pg_autoctl run`` or ``pg_autoctl reload``)."""
    return ["pg_autoctl", "config", "set", "--pgdata", pgdata, key, value]


def drop_node_argv(pgdata: str, destroy: bool = False) -> list[str]:
    """``pg_autoctl drop node``: remove the local keeper from the formation (the monitor
    then stops counting it for synchronous replication)."""
    return ["pg_autoctl", "drop", "node", "--pgdata", pgdata, *(["--destroy"] if destroy else [])]


def drop_monitor_argv(pgdata: str) -> list[str]:
    """``pg_autoctl drop monitor --destroy``: remove the (stopped) monitor's configuration and
    its PostgreSQL data directory; ``reset --delete-data`` on the first node only."""
    return ["pg_autoctl", "drop", "monitor", "--pgdata", pgdata, "--destroy"]


def show_state_argv(monitor: str) -> list[str]:
    """``pg_autoctl show state --json`` against the monitor URI."""
    return ["pg_autoctl", "show", "state", "--json", "--monitor", monitor]


def _net(address: str) -> str:
    """``192.0.2.11`` -> ``192.0.2.11/32``; a network stays as it is."""
    return str(ipaddress.ip_network(address, strict=False))


def hba_lines(node_addresses: list[str] | tuple[str, ...], dbname: str) -> list[str]:
    """pg_hba.conf lines for pg_auto_failover between the nodes: for each node address,
    ``hostssl`` with ``cert map=`` :data:`IDENT_MAP` for the monitor's database
    (``autoctl_node``), replication and ``dbname``/``postgres`` (``pgautofailover_replicator``,
    pg_rewind reads ``postgres``) and the monitor's health check (``pgautofailover_monitor``).
    Loopback is always included. The same lines go on the monitor and every keeper."""
    nets = list(dict.fromkeys(["127.0.0.1/32", "::1/128", *(_net(a) for a in node_addresses)]))
    # the monitor's own pg_autoctl connects over the Unix socket as the OS user postgres
    out = [f"local {MONITOR_DB} autoctl_node peer map={IDENT_MAP}"]
    for net in nets:
        out += [f"hostssl {MONITOR_DB} autoctl_node {net} cert map={IDENT_MAP}",
                f"hostssl replication pgautofailover_replicator {net} cert map={IDENT_MAP}",
                f"hostssl {dbname},postgres pgautofailover_replicator {net} cert map={IDENT_MAP}",
                f"hostssl all pgautofailover_monitor {net} cert map={IDENT_MAP}"]
    return out


def ident_lines() -> list[str]:
    """pg_ident.conf lines of :data:`IDENT_MAP`: the node certificate's CN may log in as
    each of pg_auto_failover's roles, and as nothing else; the OS user ``postgres`` (the
    monitor's own pg_autoctl, over the Unix socket) as ``autoctl_node``."""
    return [*(f"{IDENT_MAP} {NODE_CLIENT_CN} {role}" for role in ROLES), f"{IDENT_MAP} postgres autoctl_node"]


#: libpq parameters that notice a node gone silent (a cut network sends no RST): data
#: unacknowledged for 10 s (``tcp_user_timeout``, ms) or an idle connection without
#: keepalive answers for 5 + 3 × 2 s closes the connection, so a COMMIT or the watch's
#: LISTEN connection sent into a cut link fails (UNAVAILABLE) instead of hanging for the
#: kernel's 15-minute retransmission limit. Found by the partition test.
DEAD_PEER = {"keepalives": "1", "keepalives_idle": "5", "keepalives_interval": "2", "keepalives_count": "3",
             "tcp_user_timeout": "10000"}


def shim_uri(hosts: list[tuple[str, int]], dbname: str, role: str, ca_file: str, cert: str, key: str,
             connect_timeout: int = 3) -> str:
    """The shims' multi-host URI: every node, ``target_session_attrs=read-write`` so libpq
    connects to whichever is the primary (libpq "Specifying Multiple Hosts"); certificate
    login as ``role``, verify-full against the CA (each node's certificate names its
    address); ``connect_timeout`` seconds per host, so a dead node is passed over quickly;
    :data:`DEAD_PEER` so a connection to a node cut off fails instead of hanging."""
    authority = ",".join(f"{_host(h)}:{p}" for h, p in hosts)
    q = {"target_session_attrs": "read-write", "connect_timeout": str(connect_timeout), **DEAD_PEER,
         "sslmode": "verify-full", "sslrootcert": ca_file, "sslcert": cert, "sslkey": key}
    return f"postgresql://{quote(role)}@{authority}/{quote(dbname)}?" + urlencode(q, safe="/")


@dataclass(frozen=True)
class NodeState:
    """One keeper as the monitor sees it (``pg_autoctl show state --json``): ``name``,
    ``host``, ``port``, ``reported`` and ``assigned`` state (``primary``, ``secondary``,
    ``catchingup``, ``demoted``, ``wait_primary``…), ``lsn`` (the reported LSN, text),
    ``healthy`` (the monitor's health check) and ``lag_bytes`` behind the primary's LSN."""

    name: str
    host: str
    port: int
    reported: str
    assigned: str
    lsn: str
    healthy: bool
    lag_bytes: int | None = None

    @property
    def role(self) -> str:
        """``primary``, ``standby`` or the state in between (``reported -> assigned``)."""
        if self.reported == self.assigned and self.reported in ("primary", "single"):
            return "primary"
        if self.reported == self.assigned == "secondary":
            return "standby"
        return self.reported if self.reported == self.assigned else f"{self.reported} -> {self.assigned}"


def lsn_bytes(lsn: str) -> int:
    """``'0/3000148'`` -> its byte position (PostgreSQL's pg_lsn text form).

    Raises:
        ValueError: not an LSN.
    """
    hi, lo = lsn.split("/")
    return (int(hi, 16) << 32) + int(lo, 16)


def parse_state(text: str) -> list[NodeState]:
    """The nodes in ``pg_autoctl show state --json`` output, each with its lag behind the
    primary (``None`` when no node is primary or an LSN is unknown).

    Raises:
        ValueError: the text is not that JSON (a list of objects with ``nodename``,
            ``nodehost``, ``nodeport``, ``current_group_state``, ``assigned_group_state``,
            ``reported_lsn``, ``health``).
    """
    rows = json.loads(text)
    if not isinstance(rows, list):
        raise ValueError("pg_autoctl show state --json: expected a list")
    try:
        nodes = [NodeState(str(r["nodename"]), str(r["nodehost"]), int(r["nodeport"]), str(r["current_group_state"]),
                           str(r["assigned_group_state"]), str(r.get("reported_lsn", "")), int(r.get("health", 0)) == 1)
                 for r in rows]
    except (KeyError, TypeError) as e:
        raise ValueError(f"pg_autoctl show state --json: a node lacks {e}") from None
    primary = next((n for n in nodes if n.reported in ("primary", "single", "wait_primary")), None)
    out = []
    for n in nodes:
        lag = None
        if primary is not None:
            try:
                lag = max(0, lsn_bytes(primary.lsn) - lsn_bytes(n.lsn))
            except ValueError:
                lag = None
        out.append(NodeState(n.name, n.host, n.port, n.reported, n.assigned, n.lsn, n.healthy, lag))
    return out


def parse_node(entry: str, default_port: int) -> tuple[str, int]:
    """A ``postgres.ha.nodes`` entry -> ``(address, port)``: ``192.0.2.11`` (``default_port``),
    ``192.0.2.11:5434``, ``2001:db8::11`` or ``[2001:db8::11]:5434``.

    Raises:
        ValueError: not an IP address with an optional numeric port.
    """
    entry = entry.strip()
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else (None if not rest else "x")
    elif entry.count(":") == 1:
        host, port = entry.split(":")
    else:
        host, port = entry, None
    ipaddress.ip_address(host)
    if port is not None and not port.isdigit():
        raise ValueError(f"{entry!r}: the port is not a number")
    return host, int(port) if port is not None else default_port


@dataclass(frozen=True)
class Layout:
    """Where a node's pg_auto_failover lives under ``postgres.ha.dataDir`` (``base``):
    the monitor's and the keeper's PostgreSQL data directories, pg_autoctl's own
    configuration and state (``XDG_CONFIG_HOME``/``XDG_DATA_HOME``), and the log of a
    service started without systemd."""

    base: str

    @property
    def monitor(self) -> str:
        return f"{self.base.rstrip('/')}/monitor"

    @property
    def keeper(self) -> str:
        return f"{self.base.rstrip('/')}/node"

    @property
    def config_home(self) -> str:
        return f"{self.base.rstrip('/')}/config"

    @property
    def data_home(self) -> str:
        return f"{self.base.rstrip('/')}/share"

    @property
    def runtime_dir(self) -> str:
        return f"{self.base.rstrip('/')}/run"

    def autoctl_cfg(self, pgdata: str) -> str:
        """pg_autoctl's configuration file of ``pgdata`` (``$XDG_CONFIG_HOME/pg_autoctl/<pgdata>/pg_autoctl.cfg``)."""
        return f"{self.config_home}/pg_autoctl{pgdata}/pg_autoctl.cfg"

    def log(self, pgdata: str) -> str:
        return f"{pgdata}.log"


def systemd_unit(description: str, pgdata: str, env: dict[str, str], pg_autoctl: str = "/usr/bin/pg_autoctl") -> str:
    """A systemd unit running ``pg_autoctl run`` for ``pgdata`` as the postgres OS user
    with ``env`` (:func:`ssl_env`); the same service as ``pg_autoctl show systemd``
    prints, with k8s-sql's environment (TLS files, where pg_autoctl keeps its files)."""
    lines = ["# Written by k8s-sql (postgres.ha): pg_auto_failover's service.", "[Unit]",
             f"Description={description}", "After=network-online.target", "Wants=network-online.target",
             "StartLimitIntervalSec=0", "", "[Service]", "Type=simple", "User=postgres", "Group=postgres",
             *(f"Environment={k}={v}" for k, v in sorted(env.items())),
             f"ExecStart={pg_autoctl} run --pgdata {pgdata}", f"ExecReload={pg_autoctl} reload --pgdata {pgdata}",
             "Restart=always", "RestartSec=2", "", "[Install]", "WantedBy=multi-user.target", ""]
    return "\n".join(lines)


def hba_file(node_addresses: list[str], dbname: str, shim_role: str = "", shim_nets: list[str] | tuple[str, ...] = ()
             ) -> str:
    """The whole ``pg_hba.conf`` of a formation's PostgreSQL (k8s-sql created its data
    directory with ``--skip-pg-hba``, so the file is k8s-sql's): the OS user postgres over
    the Unix socket (pg_autoctl itself), :func:`hba_lines`, and on a keeper (``shim_role``
    set) the shim's role by certificate from loopback, every node address and
    ``shim_nets``, then the role rejected any other way."""
    out = ["# Written by k8s-sql (postgres.ha); pg_autoctl runs with --skip-pg-hba.", "local all postgres peer",
           *hba_lines(node_addresses, dbname)]
    if shim_role:
        nets = dict.fromkeys(["127.0.0.1/32", "::1/128", *(_net(a) for a in node_addresses), *shim_nets])
        out += [f"hostssl {dbname} {shim_role} {n} cert" for n in nets]
        out += [f"hostnossl all {shim_role} all reject", f"host all {shim_role} all reject",
                f"local all {shim_role} reject"]
    return "\n".join(out) + "\n"


def ident_file() -> str:
    """The whole ``pg_ident.conf`` of a formation's PostgreSQL (:func:`ident_lines`)."""
    return "# Written by k8s-sql (postgres.ha)\n" + "\n".join(ident_lines()) + "\n"
