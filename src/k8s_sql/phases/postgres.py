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
  PostgreSQL 10); a restart (``pg_ctlcluster``/``pg_ctl``) only when listen_addresses must
  change.

SQL runs as the ``postgres`` OS user with psql over the Unix socket, so this works over SSH.
A dry run executes no SQL and reloads nothing (they are planned as actions).
"""

from __future__ import annotations

import posixpath

from k8s_sql.errors import K8sSqlError
from k8s_sql.kubeadm import node
from k8s_sql.phases.base import Action, Change, Context, Phase, WriteFile, file_change
from k8s_sql.pg import clients as pgclients
from k8s_sql.pg import cluster as pgcluster
from k8s_sql.pg import conf as pgconf
from k8s_sql.pg import connect, hba, roles
from k8s_sql.pki import files


def _sql_action(description: str, sql: str) -> Action:
    return Action(description, lambda c: pgcluster.psql(c.host, c.config, sql), detail=sql)


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
        cluster = pgcluster.discover(host, cfg)
        if cluster is None:
            if ctx.dry_run:
                ctx.console.print("  no PostgreSQL cluster yet: planned once prereqs has installed it", markup=False)
                return [Action(f"configure PostgreSQL cluster {cfg.postgres.cluster} (after prereqs installs it)",
                               lambda c: None)]
            raise K8sSqlError(f"no PostgreSQL cluster {cfg.postgres.cluster!r}"
                              + (f" of version {cfg.postgres.version}" if cfg.postgres.version else "")
                              + " on this node (pg_lsclusters)", where=host.name,
                              hint="run `k8s-sql init phase prereqs`, or set postgres.configDir/dataDir/version "
                              "for a cluster outside /etc/postgresql")
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
            argv = cluster.ctl_argv("restart")
            changes.append(Action(f"restart {cluster.label} (listen_addresses = '{listen}')",
                                  lambda c: c.host.run(argv, user="postgres", timeout=120), detail=" ".join(argv)))
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
        if ctx.dry_run and isinstance(getattr(ctx.host, "files", None), dict) and needed[2] in ctx.host.files:
            return  # planned by the pki phase in this dry run, not on disk yet
        for path in needed:
            if not ctx.host.run(["test", "-r", path], user="postgres", check=False).ok:
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
