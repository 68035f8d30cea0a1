"""``k8s-sql reset``: undo ``k8s-sql init`` on a node, planned from facts like a phase.

In order: ``kubeadm reset -f`` (when the node has kubeadm state), the user's copy of the
admin kubeconfig, the files k8s-sql wrote (kubeadm configuration, patches directory, the
k8s-sql pki directory), PostgreSQL's ``conf.d/k8s-sql.conf`` and the marked ``pg_hba.conf``
block (pg_hba.conf backed up first), then a configuration reload (``pg_reload_conf()``).
PostgreSQL keeps running and the database stays, unless ``delete_data``: then ``DROP
DATABASE … WITH (FORCE)`` and ``DROP ROLE``. With ``postgres.mode: external`` PostgreSQL is
not touched. Running it again finds nothing to do.
"""

from __future__ import annotations

import posixpath
import re

from k8s_sql.errors import K8sSqlError
from k8s_sql.phases.base import Action, Change, Context, Phase, RemoveFile, WriteFile
from k8s_sql.status import psql

CONF_D_FILE = "k8s-sql.conf"
#: First and last line of the block the postgres phase adds to pg_hba.conf.
_HBA_BEGIN = re.compile(r"^#(?=.*\bk8s-sql\b)(?=.*\b(begin|start)\b)", re.I)
_HBA_END = re.compile(r"^#(?=.*\bk8s-sql\b)(?=.*\bend\b)", re.I)


def remove_hba_block(text: str) -> str:
    """``pg_hba.conf`` without k8s-sql's marked block (from a comment line naming k8s-sql
    and BEGIN to one naming k8s-sql and END, markers included); unchanged when there is
    none or it is not terminated. Uses the
    postgres phase's own remover when it provides one."""
    try:  # the postgres helpers own the marker format
        from k8s_sql.pg.hba import remove_block  # type: ignore[import-not-found]

        return remove_block(text)
    except ImportError:
        pass
    out, inside = [], False
    for line in text.splitlines(keepends=True):
        if not inside and _HBA_BEGIN.match(line.strip()):
            inside = True
            continue
        if inside:
            if _HBA_END.match(line.strip()):
                inside = False
            continue
        out.append(line)
    return "".join(out) if not inside else text  # an unterminated block is left alone


def pg_config_dir(ctx: Context) -> str | None:
    """``postgres.configDir``, else ``/etc/postgresql/<version>/<cluster>`` from
    ``pg_lsclusters``; ``None`` if there is no such cluster."""
    pg = ctx.config.postgres
    if pg.config_dir:
        return pg.config_dir
    if ctx.host.which("pg_lsclusters") is None:
        return None
    res = ctx.host.run(["pg_lsclusters", "--no-header"], check=False)
    for line in res.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[1] == pg.cluster and (not pg.version or fields[0] == pg.version):
            return f"/etc/postgresql/{fields[0]}/{fields[1]}"
    return None


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
        for path in (cfg.paths.kubeadm_config, cfg.paths.patches_dir, cfg.paths.pki_dir):
            if host.exists(path):
                changes.append(RemoveFile(path))
        if cfg.postgres.mode == "local":
            changes += self._postgres(ctx)
        return changes

    def _postgres(self, ctx: Context) -> list[Change]:
        host, cfg = ctx.host, ctx.config
        changes: list[Change] = []
        conf_dir = pg_config_dir(ctx)
        if conf_dir:
            conf_d = posixpath.join(conf_dir, "conf.d", CONF_D_FILE)
            if host.exists(conf_d):
                changes.append(RemoveFile(conf_d))
            hba = posixpath.join(conf_dir, "pg_hba.conf")
            text = host.read_text(hba)
            if text is not None and remove_hba_block(text) != text:
                info = host.stat(hba)
                changes.append(WriteFile(hba, remove_hba_block(text).encode(), info.mode, owner=info.owner,
                                         group=info.group, backup=True, backup_dir=cfg.paths.backup_dir))
        up = psql(host, cfg, "SELECT 1", check=False).ok if host.which("psql") else False
        if changes:
            if up:
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
        for path in (ctx.config.paths.kubeadm_config, ctx.config.paths.patches_dir, ctx.config.paths.pki_dir):
            if ctx.host.exists(path):
                raise K8sSqlError("still there after reset", where=path, hint="remove it by hand")
