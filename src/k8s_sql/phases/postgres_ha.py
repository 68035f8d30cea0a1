"""Phase ``postgres`` with ``postgres.ha.enabled``: a pg_auto_failover formation (see
:mod:`k8s_sql.pg.ha` and README "HA") instead of the node's Debian cluster.

On the node whose advertise address is the first of ``postgres.ha.nodes``: the monitor
(``<dataDir>/monitor``, port ``postgres.ha.monitorPort``) and a keeper; on every further
control-plane node (``k8s-sql join --control-plane``): a keeper registered with that
monitor, cloned from the primary and then a synchronous standby. A keeper's PostgreSQL
(``<dataDir>/node``) listens on the node's address at ``postgres.ha.port`` (5433: Debian's
own cluster keeps 5432, untouched), and the node's entry in ``postgres.ha.nodes`` may
give its own port (``address:port``).

Each server, in order, each step only when it differs (facts first):

- ``pg_autoctl create monitor|postgres`` as the postgres OS user, with the pki phase's
  server certificate, ``--ssl-mode verify-full`` and ``--skip-pg-hba``, when its
  pg_autoctl configuration does not exist yet;
- ``pg_hba.conf`` and ``pg_ident.conf`` in its data directory (k8s-sql's: written whole,
  :func:`k8s_sql.pg.ha.hba_file`): certificate login of the node certificate between the
  nodes, and on a keeper the shim's role by certificate from loopback and every node;
- on a keeper, :data:`k8s_sql.pg.ha.KEEPER_SETTINGS` (``pg_autoctl config set``);
- the service: a systemd unit ``k8s-sql-pg-<monitor|keeper>.service`` (``pg_autoctl run``
  as postgres, with the TLS environment) enabled and started when systemd runs; without
  systemd (a container, the tests) ``pg_autoctl run`` is started detached with ``setsid``
  and its output in ``<pgdata>.log``;
- read from the running server: the monitor's :data:`~k8s_sql.pg.ha.MONITOR_SETTINGS`,
  the keeper's :data:`~k8s_sql.pg.ha.KEEPER_PG_SETTINGS` (``ALTER SYSTEM``, reload), and on
  the primary the shim's role and database (the same least-privilege statements as the
  single-server path, :mod:`k8s_sql.pg.roles`).

What needs a server that an earlier step creates or starts is one ``pending`` step (a dry
run and a real run plan the same steps). :func:`join_pki` and :func:`drop_node` are the
parts ``join`` and ``reset`` use.
"""

from __future__ import annotations

import posixpath
import shlex
import time
from dataclasses import dataclass

from k8s_sql.config import Cluster
from k8s_sql.errors import K8sSqlError
from k8s_sql.host import Host
from k8s_sql.kubeadm.node import advertise_address
from k8s_sql.phases.base import Action, Change, Context, Phase, file_change, pending
from k8s_sql.pg import ha, roles
from k8s_sql.pki import certs, files

#: Where the systemd units go (only when systemd runs on the node).
UNIT_DIR = "/etc/systemd/system"
UNITS = {"monitor": "k8s-sql-pg-monitor.service", "keeper": "k8s-sql-pg-keeper.service"}
#: How long a keeper may take to reach primary or secondary (a standby's pg_basebackup).
READY_TIMEOUT = 600
PSQL_ARGV = ["runuser", "-u", "postgres", "--", "psql"]
AUTOCTL_ARGV = ["runuser", "-u", "postgres", "--", "pg_autoctl"]


@dataclass(frozen=True)
class HaNode:
    """This node in the formation: its address and PostgreSQL port (from its entry of
    ``postgres.ha.nodes``), whether it is the first (runs the monitor), the monitor's
    address and port, its :class:`~k8s_sql.pg.ha.Layout` and :class:`~k8s_sql.pg.ha.Tls`."""

    address: str
    port: int
    first: bool
    monitor: tuple[str, int]
    layout: ha.Layout
    tls: ha.Tls
    addresses: tuple[str, ...]

    @property
    def env(self) -> dict[str, str]:
        """The environment of every pg_autoctl command (:func:`k8s_sql.pg.ha.ssl_env`)."""
        # pg_autoctl's pid file is under XDG_RUNTIME_DIR: the same for every session
        # (an SSH session has /run/user/0, a systemd unit none)
        return {**ha.ssl_env(self.tls, self.layout.config_home, self.layout.data_home),
                "XDG_RUNTIME_DIR": self.layout.runtime_dir}

    @property
    def monitor_uri(self) -> str:
        return ha.monitor_uri(*self.monitor, self.tls)

    def pgdata(self, role: str) -> str:
        return self.layout.monitor if role == "monitor" else self.layout.keeper

    def pg_port(self, role: str) -> int:
        return self.monitor[1] if role == "monitor" else self.port


def node_tls(cfg: Cluster) -> ha.Tls:
    """The node's :class:`~k8s_sql.pg.ha.Tls` in ``paths.pkiDir``."""
    pki = cfg.paths.pki_dir
    return ha.node_tls(pki, files.path(pki, files.POSTGRES_SERVER_CERT), files.path(pki, files.POSTGRES_SERVER_KEY),
                       files.path(pki, files.CA_CERT))


def this_node(host: Host, cfg: Cluster) -> HaNode:
    """This node's place in ``postgres.ha.nodes``, found by its advertise address.

    Raises:
        K8sSqlError: the advertise address is not listed.
    """
    h = cfg.postgres.ha
    entries = [ha.parse_node(e, h.port) for e in h.nodes]
    address, _ = advertise_address(host, cfg)
    mine = [e for e in entries if e[0] == address]
    if not entries or not mine:
        raise K8sSqlError(f"this node's address {address} is not in postgres.ha.nodes ({', '.join(h.nodes) or 'empty'})",
                          where=host.name, hint="add it to postgres.ha.nodes on the first node and run "
                          "`k8s-sql init phase postgres` there, or set node.advertiseAddress to a listed address")
    return HaNode(address, mine[0][1], entries[0][0] == address, (entries[0][0], h.monitor_port), ha.Layout(h.data_dir),
                  node_tls(cfg), tuple(e[0] for e in entries))


def pg_ctl(host: Host, cfg: Cluster) -> str | None:
    """``pg_ctl`` of the PostgreSQL major that has pg_auto_failover's extension
    (``postgres.version``, else the newest installed), or ``None``."""
    want = cfg.postgres.version.strip()
    versions = [want] if want else sorted((v for v in host.listdir("/usr/lib/postgresql") if v.isdigit()),
                                          key=int, reverse=True) if host.is_dir("/usr/lib/postgresql") else []
    for v in versions:
        if host.exists(f"/usr/lib/postgresql/{v}/lib/pgautofailover.so"):
            return f"/usr/lib/postgresql/{v}/bin/pg_ctl"
    return None


def autoctl(host: Host, node: HaNode, argv: list[str], check: bool = True, timeout: float = 300):
    """Run a ``pg_autoctl`` argv as postgres with the node's environment."""
    return host.run(argv, user="postgres", env=node.env, check=check, timeout=timeout)


def psql(host: Host, cfg: Cluster, port: int, sql: str, db: str = "postgres", check: bool = True):
    """``sql`` as the postgres superuser over the Unix socket of the server on ``port``."""
    argv = ["psql", "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h", cfg.postgres.socket_dir, "-p", str(port),
            "-d", db, "-c", sql]
    return host.run(argv, user="postgres", check=check, timeout=60)


def running(host: Host, node: HaNode, role: str) -> bool:
    """Whether the server's ``pg_autoctl run`` service is up (``pg_autoctl status`` exits 0)."""
    return autoctl(host, node, ["pg_autoctl", "status", "--pgdata", node.pgdata(role)], check=False, timeout=30).ok


def _systemd(host: Host) -> bool:
    return host.exists("/run/systemd/system")


class PostgresHa(Phase):
    """See the module doc."""

    name = "postgres"
    title = "PostgreSQL with automatic failover (pg_auto_failover), certificate login for the shim's role"

    def plan(self, ctx: Context) -> list[Change]:
        node = this_node(ctx.host, ctx.config)
        if ctx.host.which("pg_autoctl") is None or pg_ctl(ctx.host, ctx.config) is None:
            return [pending(f"set up pg_auto_failover ({'monitor and ' if node.first else ''}keeper)",
                            "prereqs installs pg_auto_failover", lambda c: self._plan(c, node, required=True),
                            argvs=[AUTOCTL_ARGV, PSQL_ARGV])]
        return self._plan(ctx, node)

    def _plan(self, ctx: Context, node: HaNode, required: bool = False) -> list[Change]:
        host, cfg = ctx.host, ctx.config
        ctl = pg_ctl(host, cfg)
        if host.which("pg_autoctl") is None or ctl is None:
            raise K8sSqlError("pg_auto_failover is not installed", where=host.name,
                              hint="run `k8s-sql init phase prereqs` (pg-auto-failover-cli and "
                              "postgresql-<major>-auto-failover)")
        self._check_pki(ctx)
        changes: list[Change] = []
        for role in (("monitor", "keeper") if node.first else ("keeper",)):
            changes += self._server(ctx, node, role, ctl)
        return changes

    def _check_pki(self, ctx: Context) -> None:
        tls = node_tls(ctx.config)
        for path in (tls.ca_file, tls.server_cert, tls.server_key, tls.client_cert, tls.client_key):
            if not ctx.host.exists(path):
                raise K8sSqlError(f"certificate missing: {path}", where=ctx.host.name,
                                  hint="run `k8s-sql init phase pki` first (on a joining node, `k8s-sql join` copies "
                                  "them)")
            if not ctx.host.readable_by(path, "postgres"):
                raise K8sSqlError(f"the postgres OS user cannot read {path}", where=ctx.host.name,
                                  hint="every directory above it must be searchable by postgres (chmod o+x), and the "
                                  "keys owned by postgres: `k8s-sql init phase pki` fixes the keys")

    def _server(self, ctx: Context, node: HaNode, role: str, ctl: str) -> list[Change]:
        host, cfg = ctx.host, ctx.config
        pgdata = node.pgdata(role)
        created = host.exists(node.layout.autoctl_cfg(pgdata)) and host.exists(posixpath.join(pgdata, "PG_VERSION"))
        if created:
            return self._configure(ctx, node, role)
        if role == "monitor":
            argv = ha.create_monitor_argv(pgdata, node.address, node.monitor[1], node.tls, ctl)
        else:
            argv = ha.create_keeper_argv(pgdata, cfg.node.name or f"node-{node.address}", node.address, node.port,
                                         node.monitor_uri, cfg.postgres.database, node.tls, ctl, listen=node.address)
        dirs = ["install", "-d", "-o", "postgres", "-g", "postgres", "-m", "0750", node.layout.base,
                node.layout.config_home, node.layout.data_home, node.layout.runtime_dir]

        def create(c: Context) -> None:
            c.host.run(dirs)
            if role == "keeper":  # the monitor may still be starting (created in this same run)
                _wait(lambda: autoctl(c.host, node, ha.show_state_argv(node.monitor_uri), check=False,
                                      timeout=30).ok, 60, f"the monitor at {node.monitor[0]}:{node.monitor[1]}")
            res = autoctl(c.host, node, argv, check=False, timeout=READY_TIMEOUT)
            if not res.ok:
                raise K8sSqlError(f"pg_autoctl create {argv[2]} failed (exit {res.returncode})", where=c.host.name,
                                  hint=(res.stderr or res.stdout).strip()[-600:] or None)

        what = "monitor" if role == "monitor" else f"keeper {node.address}:{node.port}"
        return [Action(f"pg_autoctl create {argv[2]}: the pg_auto_failover {what} in {pgdata}", create,
                       detail=shlex.join(argv), argvs=[dirs, ["runuser", "-u", "postgres", "--", *argv]]),
                pending(f"configure and start the {what}", f"pg_autoctl create {argv[2]}",
                        lambda c: self._configure(c, node, role), argvs=[AUTOCTL_ARGV, PSQL_ARGV,
                                                                         ["systemctl", "enable", "--now"]])]

    def _configure(self, ctx: Context, node: HaNode, role: str) -> list[Change]:
        host, cfg = ctx.host, ctx.config
        pgdata = node.pgdata(role)
        from k8s_sql.pg import clients as pgclients

        shim_nets = pgclients.networks(host, cfg) if role == "keeper" else []
        hba_text = ha.hba_file(list(node.addresses), cfg.postgres.database,
                               cfg.postgres.role if role == "keeper" else "", shim_nets)
        conf = [c for c in (file_change(host, posixpath.join(pgdata, "pg_hba.conf"), hba_text.encode(), 0o600,
                                        owner="postgres", group="postgres"),
                            file_change(host, posixpath.join(pgdata, "pg_ident.conf"), ha.ident_file().encode(), 0o600,
                                        owner="postgres", group="postgres")) if c]
        changes: list[Change] = list(conf)
        if role == "keeper":
            for key, value in ha.KEEPER_SETTINGS.items():
                got = autoctl(host, node, ["pg_autoctl", "config", "get", "--pgdata", pgdata, key], check=False,
                              timeout=30).stdout.strip()
                if got != value:
                    argv = ha.config_set_argv(pgdata, key, value)
                    changes.append(Action(f"pg_autoctl config set {key} {value}",
                                          lambda c, a=argv: autoctl(c.host, node, a), argvs=[AUTOCTL_ARGV]))
        unit = UNITS[role]
        if _systemd(host):
            text = ha.systemd_unit(f"pg_auto_failover {role} (k8s-sql)", pgdata, node.env,
                                   host.which("pg_autoctl") or "/usr/bin/pg_autoctl")
            unit_change = file_change(host, posixpath.join(UNIT_DIR, unit), text.encode(), 0o644)
            if unit_change:
                changes += [unit_change, Action("systemctl daemon-reload",
                                                lambda c: c.host.run(["systemctl", "daemon-reload"]),
                                                argvs=[["systemctl", "daemon-reload"]])]
        up = running(host, node, role)
        what = "monitor" if role == "monitor" else "keeper"
        if not up or (_systemd(host) and not host.run(["systemctl", "is-enabled", unit], check=False).ok):
            changes.append(self._start(host, node, role))
            changes.append(pending(f"settings of the {what}" + (", the shim's role and database" if role == "keeper"
                                                                  else ""), f"the {what} is started",
                                   lambda c: self._live(c, node, role), argvs=[PSQL_ARGV, AUTOCTL_ARGV]))
            return changes
        if conf:
            port = node.pg_port(role)
            changes.append(Action("reload the PostgreSQL configuration (SELECT pg_reload_conf())",
                                  lambda c: psql(c.host, c.config, port, "SELECT pg_reload_conf()"),
                                  argvs=[PSQL_ARGV]))
        if len(changes) > len(conf) and role == "keeper" and any(isinstance(c, Action) and "config set" in
                                                                   c.description for c in changes):
            changes.append(Action("pg_autoctl reload", lambda c: autoctl(c.host, node, ["pg_autoctl", "reload",
                                                                                        "--pgdata", pgdata]),
                                  argvs=[AUTOCTL_ARGV]))
        return changes + self._live(ctx, node, role)

    def _start(self, host: Host, node: HaNode, role: str) -> Action:
        pgdata, unit = node.pgdata(role), UNITS[role]
        if _systemd(host):
            argv = ["systemctl", "enable", "--now", unit]
            run = lambda c: c.host.run(argv, timeout=120)  # noqa: E731
        else:  # no systemd (a container): pg_autoctl run detached, its output in a log file
            argv = ["setsid", "-f", "sh", "-c", 'exec pg_autoctl run --pgdata "$0" >>"$1" 2>&1 </dev/null',
                    pgdata, node.layout.log(pgdata)]
            run = lambda c: autoctl(c.host, node, argv, timeout=30)  # noqa: E731

        def start(c: Context) -> None:
            run(c)
            _wait(lambda: psql(c.host, c.config, node.pg_port(role), "SELECT 1", check=False).ok, 120,
                  f"the {role}'s PostgreSQL on port {node.pg_port(role)}")

        how = unit if _systemd(host) else "pg_autoctl run, no systemd on this node"
        return Action(f"start the pg_auto_failover {role} ({how})", start, detail=shlex.join(argv),
                      argvs=[argv if _systemd(host) else ["runuser", "-u", "postgres", "--", *argv]])

    def _live(self, ctx: Context, node: HaNode, role: str) -> list[Change]:
        """What is read from the running server: its settings; on the primary, the shim's
        role and database."""
        host, cfg = ctx.host, ctx.config
        port = node.pg_port(role)
        changes: list[Change] = []
        if role == "keeper":
            state = self._wait_ready(ctx, node)
        wanted = ha.MONITOR_SETTINGS if role == "monitor" else ha.KEEPER_PG_SETTINGS
        names = ", ".join(roles.quote_literal(k) for k in wanted)
        # what ALTER SYSTEM wrote, as written (current_setting would give 1000 ms as "1s")
        rows = psql(host, cfg, port, "SELECT name, setting FROM pg_file_settings WHERE sourcefile LIKE "
                    f"'%/postgresql.auto.conf' AND name IN ({names}) ORDER BY seqno").stdout.splitlines()
        have = dict(r.split("|", 1) for r in rows if "|" in r)
        set_sql = [f"ALTER SYSTEM SET {k} = {roles.quote_literal(v)}" for k, v in wanted.items()
                   if _norm(have.get(k)) != _norm(v)]
        if set_sql:
            sql = "; ".join(set_sql)
            changes.append(Action(f"{role} settings: " + ", ".join(s.split(" SET ")[1] for s in set_sql),
                                  lambda c: [psql(c.host, c.config, port, s) for s in
                                             [*set_sql, "SELECT pg_reload_conf()"]], detail=sql, argvs=[PSQL_ARGV]))
        if role == "keeper" and state in ("single", "primary", "wait_primary"):
            facts = roles.parse_facts(psql(host, cfg, port, roles.facts_sql(cfg.postgres.role,
                                                                            cfg.postgres.database)).stdout)
            for description, sql in roles.statements(cfg.postgres.role, cfg.postgres.database, facts):
                changes.append(Action(description, lambda c, s=sql: psql(c.host, c.config, port, s), detail=sql,
                                      argvs=[PSQL_ARGV]))
        return changes

    def _wait_ready(self, ctx: Context, node: HaNode) -> str:
        """This keeper's state once the monitor has it settled (primary/single or
        secondary); a standby's clone can take a while.

        Raises:
            K8sSqlError: not settled within :data:`READY_TIMEOUT` seconds.
        """
        last = "unknown"

        def settled() -> bool:
            nonlocal last
            res = autoctl(ctx.host, node, ha.show_state_argv(node.monitor_uri), check=False, timeout=30)
            try:
                mine = [n for n in ha.parse_state(res.stdout) if n.host == node.address and n.port == node.port]
            except ValueError:
                return False
            if mine:
                last = f"{mine[0].reported} -> {mine[0].assigned}"
                return mine[0].reported == mine[0].assigned and mine[0].reported in (
                    "single", "primary", "secondary", "wait_primary")
            return False

        _wait(settled, READY_TIMEOUT, f"keeper {node.address}:{node.port} to be primary or secondary (last: {last})")
        return last.split(" -> ")[0]

    def verify(self, ctx: Context) -> None:
        """Connect as the shim does, with its multi-host URI (verify-full, client
        certificate, ``target_session_attrs=read-write``), and print the primary's TLS.

        Raises:
            K8sSqlError: no node of the formation accepts the login.
        """
        from k8s_sql.kubeadm.sidecar import datastore_uri
        from k8s_sql.pg import connect

        cert = files.path(ctx.config.paths.pki_dir, files.SHIM_PG_CLIENT_CERT)
        if not ctx.host.exists(cert):  # a joining node: `join` copies it next, then checks this login
            ctx.console.print(f"  the shim's login is checked once {cert} is there (join copies it next)",
                              markup=False)
            return
        info = connect.tls_probe(ctx.host, datastore_uri(ctx.config))
        if info.get("user") != ctx.config.postgres.role:
            raise K8sSqlError(f"logged in as {info.get('user')!r}, not as role {ctx.config.postgres.role!r}",
                              where=ctx.host.name, hint="check pg_hba.conf and pg_ident.conf in the keeper's data "
                              "directory")
        ctx.console.print(f"  verified: {info.get('version')} {info.get('cipher')} as role {info.get('user')} on the "
                          "formation's primary, sslmode=verify-full, target_session_attrs=read-write", markup=False)


def _norm(value: str | None) -> str:
    """A setting as written in postgresql.auto.conf, compared without case or spaces."""
    return (value or "").strip().lower()


def _wait(ok, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        if time.monotonic() > deadline:
            raise K8sSqlError(f"timed out after {timeout:.0f} s waiting for {what}",
                              hint="see the pg_autoctl log (journalctl -u k8s-sql-pg-*, or <dataDir>/*.log)")
        time.sleep(1)


def join_pki(cp: Context, node: Context) -> list[Change]:
    """The files a joining node's keeper needs, from the first node: the node client
    certificate and key (copied, mode and owner kept), and a PostgreSQL server
    certificate for the joining node's address, issued with the first node's CA (the CA
    key stays there). Each only when it differs.

    Raises:
        K8sSqlError: the first node lacks the CA or the node certificate.
    """
    cpki, npki = cp.config.paths.pki_dir, node.config.paths.pki_dir
    changes: list[Change | None] = []
    for name in (ha.NODE_CLIENT_CERT, ha.NODE_CLIENT_KEY):
        src = files.path(cpki, name)
        info, data = cp.host.stat(src), cp.host.read_bytes(src)
        if info is None or data is None:
            raise K8sSqlError("the pg_auto_failover node certificate is missing on the first node",
                              where=f"{cp.host.name}:{src}", hint="run `k8s-sql init phase pki` there")
        changes.append(file_change(node.host, files.path(npki, name), data, info.mode, owner=info.owner,
                                   group=info.group, secret=name.endswith(".key")))
    ca_pem, ca_key_pem = cp.host.read_bytes(files.path(cpki, files.CA_CERT)), \
        cp.host.read_bytes(files.path(cpki, files.CA_KEY))
    if ca_pem is None or ca_key_pem is None:
        raise K8sSqlError("the datastore CA is missing on the first node", where=f"{cp.host.name}:{cpki}",
                          hint="run `k8s-sql init phase pki` there")
    ca_cert, ca_key = certs.load_ca(ca_pem, ca_key_pem, where=f"{cp.host.name}:{files.path(cpki, files.CA_CERT)}")
    address, _ = advertise_address(node.host, node.config)
    spec = certs.leaf_specs(node.config, address, "postgres")[0]  # PostgreSQL's serving certificate
    cert_pem = node.host.read_bytes(files.path(npki, spec.cert))
    key_pem = node.host.read_bytes(files.path(npki, spec.key))
    days = cp.config.certificates.validity_days
    if certs.leaf_problem(spec, cert_pem, key_pem, ca_cert, days):
        cert_pem, key_pem = certs.issue(spec, ca_cert, ca_key, days)
    changes += [file_change(node.host, files.path(npki, spec.cert), cert_pem, 0o644, owner="root"),
                file_change(node.host, files.path(npki, spec.key), key_pem, 0o600, owner="postgres", group="postgres",
                            secret=True)]
    return [c for c in changes if c]


def drop_node(ctx: Context, delete_data: bool) -> list[Change]:
    """``reset`` on a node of the formation: ``pg_autoctl drop node`` for its keeper (the
    monitor forgets it; with ``delete_data`` also ``--destroy``, its data directory), the
    service stopped (and its unit disabled), and on the first node the monitor stopped (with
    ``delete_data`` then ``pg_autoctl drop monitor --destroy``: the formation is gone).
    Data stays unless ``delete_data``. ``[]`` when this node has no keeper or monitor.
    """
    host, cfg = ctx.host, ctx.config
    try:
        node = this_node(host, cfg)
    except K8sSqlError:
        return []
    changes: list[Change] = []
    drop: list[Change] = []
    if host.exists(node.layout.autoctl_cfg(node.layout.keeper)):
        argv = ha.drop_node_argv(node.layout.keeper, destroy=delete_data)
        drop.append(Action(f"pg_autoctl drop node: remove this keeper ({node.address}:{node.port}) from the "
                           "formation" + (" and delete its data" if delete_data else "; its data stays"),
                           lambda c, a=argv: _drop(c, node, a), detail=shlex.join(argv),
                           argvs=[["runuser", "-u", "postgres", "--", *argv]]))
    # the drop first: pg_autoctl asks the running keeper to reach "dropped" and waits
    for role in ("keeper", "monitor"):
        pgdata = node.pgdata(role)
        if not host.exists(node.layout.autoctl_cfg(pgdata)):
            continue
        unit = UNITS[role]
        if _systemd(host) and host.exists(posixpath.join(UNIT_DIR, unit)):
            changes.append(Action(f"systemctl disable --now {unit}",
                                  lambda c, u=unit: c.host.run(["systemctl", "disable", "--now", u], check=False),
                                  argvs=[["systemctl", "disable", "--now", unit]]))
        else:
            argv = ["pg_autoctl", "stop", "--pgdata", pgdata]
            changes.append(Action(f"stop the pg_auto_failover {role} ({shlex.join(argv)})",
                                  lambda c, a=argv, r=role: _stop(c, node, a, r), argvs=[AUTOCTL_ARGV]))
        if role == "monitor" and delete_data:  # after the keepers' drops, which need it
            argv = ha.drop_monitor_argv(pgdata)
            changes.append(Action("pg_autoctl drop monitor --destroy: the formation's monitor and its data",
                                  lambda c, a=argv: autoctl(c.host, node, a, timeout=120), detail=shlex.join(argv),
                                  argvs=[["runuser", "-u", "postgres", "--", *argv]]))
    return drop + changes


def _stop(ctx: Context, node: HaNode, argv: list[str], role: str) -> None:
    if running(ctx.host, node, role):
        autoctl(ctx.host, node, argv, check=False, timeout=60)
        _wait(lambda: not running(ctx.host, node, role), 60, f"the {role}'s pg_autoctl to stop")


def _drop(ctx: Context, node: HaNode, argv: list[str]) -> None:
    res = autoctl(ctx.host, node, argv, check=False, timeout=300)
    for line in (res.stderr or res.stdout).strip().splitlines()[-3:]:
        ctx.console.print(f"    {line}", markup=False, highlight=False)
    if not res.ok:
        raise K8sSqlError(f"pg_autoctl drop node failed (exit {res.returncode})", where=ctx.host.name,
                          hint=((res.stderr or res.stdout).strip()[-600:] or "") + " — is the monitor reachable?")


class JoinPki(Phase):
    """On a node joining an HA cluster: :func:`join_pki` (and the CA certificate), from
    the first node ``cp``."""

    name = "postgres-ha-pki"
    title = "the pg_auto_failover node certificate and a PostgreSQL server certificate for this node"

    def __init__(self, cp: Context):
        self.cp = cp

    def plan(self, ctx: Context) -> list[Change]:
        src = files.path(self.cp.config.paths.pki_dir, files.CA_CERT)
        ca = self.cp.host.read_bytes(src)
        if ca is None:
            raise K8sSqlError("the datastore CA certificate is missing on the first node", where=f"{self.cp.host.name}:"
                              f"{src}", hint="run `k8s-sql init phase pki` there")
        change = file_change(ctx.host, files.path(ctx.config.paths.pki_dir, files.CA_CERT), ca, 0o644, owner="root")
        return ([change] if change else []) + join_pki(self.cp, ctx)
