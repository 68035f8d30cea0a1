"""Phase ``postgres``: TLS and certificate login on the local PostgreSQL, the shim's role
and database; with ``postgres.mode: external`` only a verify-full check of ``postgres.uri``.

Local mode, in order (each step only when it differs):

- ``conf.d/k8s-sql.conf`` (see :mod:`k8s_sql.pg.conf`): ssl on with the pki phase's files,
  TLS ≥ 1.2, and ``listen_addresses`` only when the rest of the configuration does not
  already cover 127.0.0.1 and ::1 (and the node's advertise address, when further
  control-plane nodes connect: :mod:`k8s_sql.pg.clients`). postgresql.conf is never
  edited: it must include ``conf.d`` (Debian's default), else the phase stops with a hint.
- the marked block at the top of ``pg_hba.conf`` (:mod:`k8s_sql.pg.hba`), with a line
  per client network of :mod:`k8s_sql.pg.clients`; the old file backed up to
  ``paths.backupDir``; nothing else in it changes;
- the role (no password, no privileges) and the database it owns, PUBLIC revoked;
- ``pg_reload_conf()`` after a configuration change (ssl settings need only a reload since
  PostgreSQL 10); a restart only when listen_addresses must change (through systemd like
  the start below, see :func:`ctl_command`).

The cluster is the node's own: one that is installed but stopped is started first
(``systemctl start postgresql@<version>-<name>`` when systemd runs, else ``pg_ctlcluster``;
``pg_ctl`` outside the Debian layout). What can only be read from the running server is
then one step marked ``pending: after … is started``, and before prereqs has installed
PostgreSQL the whole configuration is ``pending: after prereqs installs PostgreSQL``; a
dry run and a real run plan the same steps, and applying a pending step plans it then.

SQL runs as the ``postgres`` OS user with psql over the Unix socket, so this works over SSH.
A dry run executes no SQL and reloads nothing (they are planned as actions).
"""

from __future__ import annotations

import posixpath

from k8s_sql.errors import K8sSqlError
from k8s_sql.host import Host
from k8s_sql.kubeadm import node
from k8s_sql.phases.base import Action, Change, Context, Phase, WriteFile, file_change, pending
from k8s_sql.pg import clients as pgclients
from k8s_sql.pg import cluster as pgcluster
from k8s_sql.pg import conf as pgconf
from k8s_sql.pg import connect, hba, roles
from k8s_sql.pki import files


#: The programs the SQL steps run (psql as postgres, through runuser on the node).
PSQL_ARGVS = [["runuser", "-u", "postgres", "--", "psql"]]


def _sql_action(description: str, sql: str) -> Action:
    return Action(description, lambda c: pgcluster.psql(c.host, c.config, sql), detail=sql, argvs=PSQL_ARGVS)


#: What configuring the cluster consists of (for the description of a pending step).
WHAT = "ssl in conf.d, the pg_hba.conf block, the shim's role and database"


def is_stopped(host: Host, cluster: pgcluster.PgCluster) -> bool:
    """Whether ``cluster`` is installed but not running: ``down`` in ``pg_lsclusters``, or
    outside the Debian layout ``pg_ctl status`` exits 3 (no server running). ``False``
    when that cannot be told (then ``require_running`` explains what is wrong)."""
    if cluster.name:
        rows = [r for r in pgcluster.lsclusters(host) if (r[0], r[1]) == (cluster.version, cluster.name)]
        return bool(rows) and rows[0][3] == "down"
    if not cluster.data_dir or not cluster.version.isdigit():
        return False
    res = host.run([f"/usr/lib/postgresql/{cluster.version}/bin/pg_ctl", "status", "-D", cluster.data_dir],
                   user="postgres", check=False)
    return res.returncode == 3


def ctl_command(host: Host, cluster: pgcluster.PgCluster, action: str) -> tuple[list[str], str | None]:
    """``(argv, user)`` that does ``action`` (start, restart) to the node's own ``cluster``:
    ``systemctl <action> postgresql@<version>-<name>`` when systemd runs (``/run/systemd/system``
    exists) and the cluster is Debian's, so the server stays a systemd unit (``pg_ctlcluster``
    run by hand would start it outside systemd); else ``pg_ctlcluster``/``pg_ctl`` as the
    postgres OS user."""
    if cluster.name and host.exists("/run/systemd/system"):
        return ["systemctl", action, f"postgresql@{cluster.version}-{cluster.name}"], None
    return cluster.ctl_argv(action), "postgres"


def ctl_action(host: Host, cluster: pgcluster.PgCluster, action: str, why: str) -> Action:
    """An :class:`Action` running :func:`ctl_command` (``why`` ends the description)."""
    argv, user = ctl_command(host, cluster, action)
    return Action(f"{action} {cluster.label} ({why})", lambda c: c.host.run(argv, user=user, timeout=120),
                  detail=" ".join(argv), argvs=[(["runuser", "-u", user, "--"] if user else []) + argv])


def start_action(host: Host, cluster: pgcluster.PgCluster) -> Action:
    """Start the node's own ``cluster`` (see :func:`ctl_command`)."""
    return ctl_action(host, cluster, "start", "installed, not running")


class Postgres(Phase):
    """See the module doc."""

    name = "postgres"
    title = "PostgreSQL with TLS, certificate login for the shim's role, and its database"

    def plan(self, ctx: Context) -> list[Change]:
        host, cfg = ctx.host, ctx.config
        if cfg.postgres.mode == "external":
            _, warning = connect.external_conninfo(cfg.postgres.uri)
            ctx.console.print("  external PostgreSQL (postgres.uri): nothing to configure, verified after this"
                              + (f"; warning: {warning}" if warning else ""), markup=False)
            return []
        if cfg.postgres.ha.enabled:  # a pg_auto_failover formation instead of the Debian cluster
            from k8s_sql.phases.postgres_ha import PostgresHa

            return PostgresHa().plan(ctx)
        return self._plan_local(ctx, missing_ok=True)

    def _plan_local(self, ctx: Context, *, missing_ok: bool) -> list[Change]:
        """The local cluster's changes; a missing cluster is a pending step with
        ``missing_ok``, else an error."""
        host, cfg = ctx.host, ctx.config
        cluster = pgcluster.discover(host, cfg)
        if cluster is None:
            if missing_ok:
                return [pending(f"configure the PostgreSQL cluster {cfg.postgres.cluster}: {WHAT}", "prereqs installs "
                                "PostgreSQL", lambda c: self._plan_local(c, missing_ok=False),
                                argvs=[["pg_lsclusters"], *PSQL_ARGVS, ["systemctl", "restart", "postgresql@"],
                                       ["runuser", "-u", "postgres", "--", "pg_ctlcluster"]])]
            raise K8sSqlError(f"no PostgreSQL cluster {cfg.postgres.cluster!r}"
                              + (f" of version {cfg.postgres.version}" if cfg.postgres.version else "")
                              + " on this node (pg_lsclusters)", where=host.name,
                              hint="run `k8s-sql init phase prereqs`, or set postgres.configDir/dataDir/version "
                              "for a cluster outside /etc/postgresql")
        if is_stopped(host, cluster):
            self._check_pki(ctx)
            return [start_action(host, cluster),
                    pending(f"configure {cluster.label}: {WHAT}", f"{cluster.label} is started", argvs=PSQL_ARGVS,
                            plan=lambda c: self._plan_running(c, cluster))]
        return self._plan_running(ctx, cluster)

    def _plan_running(self, ctx: Context, cluster: pgcluster.PgCluster) -> list[Change]:
        """The changes, read from the running server.

        Raises:
            K8sSqlError: the server is down or unreachable (see ``require_running``), the
                certificates are missing or unreadable, postgresql.conf lacks conf.d.
        """
        host, cfg = ctx.host, ctx.config
        settings = pgcluster.require_running(host, cfg, cluster)
        self._check_pki(ctx)
        changes: list[Change] = []
        conf_file = settings["config_file"]
        if not pgconf.has_include_dir(host.read_text(conf_file) or ""):
            raise K8sSqlError("postgresql.conf does not include conf.d", where=conf_file,
                              hint="add the line `include_dir = 'conf.d'` (Debian's default) and run the phase again; "
                              "k8s-sql does not edit postgresql.conf")
        own = posixpath.join(posixpath.dirname(conf_file), "conf.d", pgconf.CONF_D_FILE)
        nets = pgclients.networks(host, cfg)
        extra = [node.advertise_address(host, cfg)[0]] if nets else []
        listen = pgconf.listen_addresses_for(pgcluster.base_listen_addresses(host, cfg, own), extra)
        conf_change = file_change(host, own, pgconf.render_ssl_conf(cfg, listen).encode(), 0o644)
        hba_file = settings["hba_file"]
        old_hba = host.read_text(hba_file)
        if old_hba is None:
            raise K8sSqlError("pg_hba.conf is missing", where=hba_file, hint="restore it from a backup")
        new_hba = hba.merge_block(old_hba, hba.render_block(cfg, nets))
        hba_change = None
        if new_hba != old_hba:
            info = host.stat(hba_file)
            hba_change = WriteFile(hba_file, new_hba.encode(), info.mode, owner=info.owner, group=info.group,
                                   backup=True, backup_dir=cfg.paths.backup_dir)
        changes += [c for c in (conf_change, hba_change) if c]
        facts = roles.parse_facts(pgcluster.psql(host, cfg, roles.facts_sql(cfg.postgres.role,
                                                                             cfg.postgres.database)).stdout)
        for description, sql in roles.statements(cfg.postgres.role, cfg.postgres.database, facts):
            changes.append(_sql_action(description, sql))
        if listen and settings["listen_addresses"] != listen:
            changes.append(ctl_action(host, cluster, "restart", f"listen_addresses = '{listen}'"))
        elif conf_change or hba_change:
            changes.append(_sql_action("reload the PostgreSQL configuration (SELECT pg_reload_conf())",
                                       "SELECT pg_reload_conf()"))
        return changes

    def _check_pki(self, ctx: Context) -> None:
        """The pki phase's files are there and PostgreSQL's key is readable by ``postgres``
        (a directory above ``pki_dir`` that is closed to others would keep ssl off)."""
        pki = ctx.config.paths.pki_dir
        needed = [files.path(pki, n) for n in (files.CA_CERT, files.POSTGRES_SERVER_CERT, files.POSTGRES_SERVER_KEY)]
        missing = [p for p in needed if not ctx.host.exists(p)]
        if missing:
            raise K8sSqlError("certificates missing: " + ", ".join(missing), where=ctx.host.name,
                              hint="run `k8s-sql init phase pki` first")
        for path in needed:
            if not ctx.host.readable_by(path, "postgres"):
                raise K8sSqlError(f"the postgres OS user cannot read {path}", where=ctx.host.name,
                                  hint=f"every directory above {pki} must be searchable by postgres (chmod o+x), "
                                  f"and the key owned by postgres: `k8s-sql init phase pki` fixes the key")

    def verify(self, ctx: Context) -> None:
        """Connect as the shim would (verify-full, client certificate, to 127.0.0.1) and
        print the TLS version and cipher from ``pg_stat_ssl``.

        Raises:
            K8sSqlError: the connection fails, is not TLS, or logs in as another role.
        """
        cfg = ctx.config
        if cfg.postgres.mode == "local" and cfg.postgres.ha.enabled:
            from k8s_sql.phases.postgres_ha import PostgresHa

            return PostgresHa().verify(ctx)
        if cfg.postgres.mode == "external":
            conninfo, _ = connect.external_conninfo(cfg.postgres.uri)
        else:
            conninfo = connect.local_conninfo(cfg)
        info = connect.tls_probe(ctx.host, conninfo)
        if cfg.postgres.mode == "local" and info.get("user") != cfg.postgres.role:
            raise K8sSqlError(f"logged in as {info.get('user')!r}, not as role {cfg.postgres.role!r}",
                              where=ctx.host.name, hint="check pg_hba.conf and pg_ident.conf")
        ctx.console.print(f"  verified: {info.get('version')} {info.get('cipher')} ({info.get('bits')} bits) as role "
                          f"{info.get('user')}, sslmode=verify-full", markup=False)
