"""``k8s-sql render``: every file init would generate, written into one directory.

The pki and kubeadm-config phases plan against a :class:`RenderHost` — this machine's
file system rooted at the output directory — and only their file writes are carried out;
nothing they would run (reloads, SQL) happens. PostgreSQL has no fixed location here, so
its snippets go to ``<out>/postgresql/``: the conf.d include, the pg_hba block and the SQL
that creates the role and its database. Running render again reuses the CA and every
certificate still valid in the directory, so it rewrites nothing that is up to date.
"""

from __future__ import annotations

import os
import posixpath

from k8s_sql.config import Cluster, client_network
from k8s_sql.host import LocalHost
from k8s_sql.kubeadm.node import advertise_address
from k8s_sql.pg import conf as pgconf
from k8s_sql.pg import hba, roles
from k8s_sql.phases.base import Context, WriteFile, file_change
from k8s_sql.phases.kubeadm_config import KubeadmConfig
from k8s_sql.phases.pki import Pki

#: where the PostgreSQL snippets go inside the output directory
PG_DIR = "/postgresql"


class RenderHost(LocalHost):
    """LocalHost rooted at the output directory. File owners are not applied (render
    runs as any user; modes are), so keys stay 0600 and owned by whoever renders."""

    def write_bytes(self, path, data, *, mode=0o644, owner=None, group=None, tmp_dir=None):
        super().write_bytes(path, data, mode=mode, tmp_dir=None)

    def stat(self, path):
        info = super().stat(path)
        if info is None:
            return None
        # owners are not applied here, so whatever owner a phase wants counts as met
        return info.__class__(info.mode, _AnyOwner(info.owner), _AnyOwner(info.group), info.size)


class _AnyOwner(str):
    """An owner name equal to every owner name (see :meth:`RenderHost.stat`)."""

    def __eq__(self, other):
        return isinstance(other, str)

    __hash__ = str.__hash__


def pg_snippets(cfg: Cluster, advertise_address: str | None = None) -> dict[str, str]:
    """File name -> content of the PostgreSQL snippets (pure). With
    ``postgres.clientAddresses``, the conf.d file also sets ``listen_addresses`` to
    localhost and ``advertise_address``."""
    listen = f"localhost,{advertise_address}" if cfg.postgres.client_addresses and advertise_address else None
    none = roles.RoleFacts(False, False, None, False)
    sql = "".join(f"-- {desc}\n{stmt};\n" for desc, stmt in roles.statements(cfg.postgres.role, cfg.postgres.database,
                                                                             none))
    return {
        f"conf.d/{pgconf.CONF_D_FILE}": pgconf.render_ssl_conf(cfg, listen),
        "pg_hba.k8s-sql.conf": "# put this block first in pg_hba.conf (PostgreSQL uses the first matching line)\n"
                               + hba.render_block(cfg, [client_network(a) for a in cfg.postgres.client_addresses]),
        "k8s-sql-role.sql": "-- run as a superuser: psql -f k8s-sql-role.sql\n" + sql,
    }


def render(cfg: Cluster, out: str, console) -> list[tuple[str, str]]:
    """Write every generated file under ``out``. Returns ``(path inside out, what)`` for each
    file written (empty when everything was up to date).

    Raises:
        K8sSqlError: as the pki and kubeadm-config phases (e.g. a broken CA in ``out``).
    """
    os.makedirs(out, exist_ok=True)
    host = RenderHost(root=out)
    ctx = Context(host=host, config=cfg, console=console, dry_run=True)  # dry_run: no CRI socket needed
    written: list[tuple[str, str]] = []
    for phase in (Pki(), KubeadmConfig()):
        for change in phase.plan(ctx):
            if isinstance(change, WriteFile):
                change.apply(ctx)
                written.append((change.path, phase.name))
    address = ctx.facts.get("advertise_address") or advertise_address(host, cfg)[0]
    for name, text in pg_snippets(cfg, address).items():
        path = posixpath.join(PG_DIR, name)
        change = file_change(host, path, text.encode(), 0o644)
        if change:
            change.apply(ctx)
            written.append((path, "postgres"))
    return written
