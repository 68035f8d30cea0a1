"""``k8s-sql reset``: undo ``k8s-sql init`` on a node, planned from facts like a phase.

In order: ``kubeadm reset -f`` (when the node has kubeadm state), the user's copy of the
admin kubeconfig, the files k8s-sql wrote (kubeadm configuration, patches directory, the
k8s-sql pki directory, the list of further PostgreSQL clients), PostgreSQL's ``conf.d/k8s-sql.conf`` and the marked ``pg_hba.conf``
block (pg_hba.conf backed up first), then a configuration reload (``pg_reload_conf()``), or
a restart when k8s-sql's file had set ``listen_addresses``.
PostgreSQL keeps running and the database stays, unless ``delete_data``: then ``DROP
DATABASE … WITH (FORCE)`` and ``DROP ROLE``. With ``postgres.mode: external`` PostgreSQL is
not touched. Running it again finds nothing to do.
"""

from __future__ import annotations

import posixpath
import re

from k8s_sql.errors import K8sSqlError
from k8s_sql.pg.cluster import discover, psql
from k8s_sql.pg.conf import CONF_D_FILE
from k8s_sql.pg.hba import remove_block as remove_hba_block
from k8s_sql.phases.base import Action, Change, Context, Phase, RemoveFile, WriteFile


def _own_paths(cfg) -> tuple[str, ...]:
    """The files and directories k8s-sql writes on a node (removed whole)."""
    p = cfg.paths
    return (p.kubeadm_config, p.patches_dir, p.pki_dir, p.postgres_clients)


def _kubeadm_state(ctx: Context) -> bool:
    host, paths = ctx.host, ctx.config.paths
    return (bool(host.listdir(paths.manifests_dir)) or host.exists(paths.kubeconfig)
            or host.exists("/etc/kubernetes/kubelet.conf"))


class Reset(Phase):
    """The reset plan (see the module doc). ``delete_data`` also drops the database and role.

    Raises (from plan):
        K8sSqlError: ``delete_data`` but PostgreSQL cannot be reached.
    """

    name = "reset"
    title = "undo k8s-sql init on this node"

    def __init__(self, delete_data: bool = False):
        self.delete_data = delete_data

    def plan(self, ctx: Context) -> list[Change]:
        host, cfg = ctx.host, ctx.config
        changes: list[Change] = []
        if _kubeadm_state(ctx):
            if host.which("kubeadm") is None:
                raise K8sSqlError("the node has kubeadm state but kubeadm is not installed", where=host.name,
                                  hint="install kubeadm (`k8s-sql init phase prereqs`) and run reset again")
            changes.append(Action("kubeadm reset -f", lambda c: c.host.run(["kubeadm", "reset", "-f"], stream=True),
                                  detail="removes the static pods, kubelet configuration and kubeadm's pki"))
        admin = host.read_bytes(cfg.paths.kubeconfig)
        user = ctx.facts.get("invoking_user") or "root"
        if admin is not None:
            res = host.run(["getent", "passwd", user], check=False)
            home = res.stdout.split(":")[5] if res.ok and res.stdout.count(":") >= 6 else None
            if home:
                copy = posixpath.join(home, ".kube", "config")
                if host.read_bytes(copy) == admin:  # only the copy `post` made, not another cluster's
                    changes.append(RemoveFile(copy))
        for path in _own_paths(cfg):
            if host.exists(path):
                changes.append(RemoveFile(path))
        if cfg.postgres.mode == "local":
            changes += self._postgres(ctx)
        return changes

    def _postgres(self, ctx: Context) -> list[Change]:
        host, cfg = ctx.host, ctx.config
        changes: list[Change] = []
        cluster = discover(host, cfg)
        conf_dir = cluster.config_dir if cluster else None
        restart = False
        if conf_dir:
            conf_d = posixpath.join(conf_dir, "conf.d", CONF_D_FILE)
            conf_text = host.read_text(conf_d)
            if conf_text is not None:
                changes.append(RemoveFile(conf_d))
                # listen_addresses takes effect only at a restart, as when the postgres phase set it
                restart = bool(re.search(r"^\s*listen_addresses\s*=", conf_text, re.M))
            hba = posixpath.join(conf_dir, "pg_hba.conf")
            text = host.read_text(hba)
            if text is not None and remove_hba_block(text) != text:
                info = host.stat(hba)
                changes.append(WriteFile(hba, remove_hba_block(text).encode(), info.mode, owner=info.owner,
                                         group=info.group, backup=True, backup_dir=cfg.paths.backup_dir))
        up = psql(host, cfg, "SELECT 1", check=False).ok if host.which("psql") else False
        if changes:
            if up and restart:
                argv = cluster.ctl_argv("restart")
                changes.append(Action(f"restart {cluster.label} (listen_addresses back to its own setting)",
                                      lambda c: c.host.run(argv, user="postgres", timeout=120)))
            elif up:
                changes.append(Action("reload the PostgreSQL configuration (SELECT pg_reload_conf())",
                                      lambda c: psql(c.host, c.config, "SELECT pg_reload_conf()")))
            else:
                ctx.console.print("  PostgreSQL is not running: it reads the cleaned configuration when it starts",
                                  markup=False)
        if self.delete_data:
            if not up:
                raise K8sSqlError("--delete-data needs PostgreSQL, which cannot be reached", where=host.name,
                                  hint="start PostgreSQL (`systemctl start postgresql`), or reset without "
                                  "--delete-data")
            db, role = cfg.postgres.database, cfg.postgres.role
            if psql(host, cfg, f"SELECT 1 FROM pg_database WHERE datname = '{db}'").stdout.strip():
                changes.append(Action(f'DROP DATABASE "{db}" WITH (FORCE)',
                                      lambda c: psql(c.host, c.config, f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')))
            if psql(host, cfg, f"SELECT 1 FROM pg_roles WHERE rolname = '{role}'").stdout.strip():
                changes.append(Action(f'DROP ROLE "{role}"',
                                      lambda c: psql(c.host, c.config, f'DROP ROLE IF EXISTS "{role}"')))
        return changes

    def verify(self, ctx: Context) -> None:
        for path in _own_paths(ctx.config):
            if ctx.host.exists(path):
                raise K8sSqlError("still there after reset", where=path, hint="remove it by hand")
