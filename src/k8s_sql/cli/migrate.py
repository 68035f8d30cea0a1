"""``k8s-sql migrate``: move an existing kubeadm cluster's state from etcd into PostgreSQL.

Parses the flags; the data copy is :mod:`k8s_sql.migrate`, the node flow the phases in
:mod:`k8s_sql.phases.migrate`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from k8s_sql.cli import common

app = typer.Typer()

FromEtcdOpt = Annotated[Optional[str], typer.Option(
    "--from-etcd", help="Client URL of the etcd to copy from, e.g. https://127.0.0.1:2379 \\[default on a kubeadm "
    "node: the etcd manifest's --advertise-client-urls].", show_default=False)]
CacertOpt = Annotated[Optional[Path], typer.Option(
    "--cacert", help="CA bundle that signs etcd's server certificate, as etcdctl's flag "
    "\\[default: /etc/kubernetes/pki/etcd/ca.crt].", show_default=False)]
CertOpt = Annotated[Optional[Path], typer.Option(
    "--cert", help="Client certificate for etcd, as etcdctl's flag \\[default: kubeadm's healthcheck-client "
    "or apiserver-etcd-client].", show_default=False)]
KeyOpt = Annotated[Optional[Path], typer.Option("--key", help="Private key of --cert.", show_default=False)]
FromSnapshotOpt = Annotated[Optional[Path], typer.Option(
    "--from-snapshot", help="Copy from an etcd snapshot file (etcdctl snapshot save) instead of a running etcd; "
    "implies --data-only.", show_default=False)]
DatastoreOpt = Annotated[Optional[str], typer.Option(
    "--datastore", help="libpq URI of the (empty) database to copy into \\[default: the configuration's "
    "datastore].", show_default=False)]
DataOnlyOpt = Annotated[bool, typer.Option(
    "--data-only", help="Only copy etcd's state into the datastore and verify it; change nothing on this node.")]
ToEtcdOpt = Annotated[Optional[Path], typer.Option(
    "--to-etcd", help="The way back: write an etcd snapshot of the datastore to FILE (new file, mode 0600) and "
    "print the etcdctl snapshot restore command for this node's etcd.", show_default=False)]
RollbackOpt = Annotated[bool, typer.Option(
    "--rollback", help="Undo a migration on this node: restore kube-apiserver's and etcd's manifests as they were "
    "before it (etcd's data directory was kept).")]


def _s(p: Path | None) -> str | None:
    return str(p) if p else None


@app.command("migrate")
def migrate_cmd(
    from_etcd: FromEtcdOpt = None,
    cacert: CacertOpt = None,
    cert: CertOpt = None,
    key: KeyOpt = None,
    from_snapshot: FromSnapshotOpt = None,
    datastore: DatastoreOpt = None,
    data_only: DataOnlyOpt = False,
    rollback: RollbackOpt = False,
    to_etcd: ToEtcdOpt = None,
    config: common.ConfigOpt = None,
    dry_run: common.DryRunOpt = False,
) -> None:
    """Move this kubeadm control-plane node's cluster from its stacked etcd to PostgreSQL.

    The plan is shown first, then run as phases: check etcd (healthy, a single member) and disk; the pki and postgres phases of init (the datastore; the running cluster is not touched); snapshot etcd into paths.backupDir/migrate (the rollback point); stop kube-apiserver (its manifest moved aside) so nothing is written after revision R; copy etcd's state at R (every key with its revisions, the history etcd still has, the leases) into the empty datastore in one transaction, verified by key count and HashKV against etcd; stop etcd (manifest moved aside, data directory kept); kube-apiserver's manifest back with the shim sidecar; wait for /readyz; check that every object kept its resourceVersion. Run it again after an interruption: it continues where it stopped.

    --data-only copies and verifies only (from --from-etcd or --from-snapshot). --rollback puts the manifests back as they were. With several etcd members, it refuses (see README, "Move an existing cluster").
    """
    from k8s_sql.errors import K8sSqlError

    cfg = common.load_config(config)
    if to_etcd:
        if from_etcd or from_snapshot or rollback or data_only or dry_run:
            raise typer.BadParameter("--to-etcd takes only --datastore and --config", param_hint="--to-etcd")
        from k8s_sql.migrate.datastore import datastore_conninfo
        from k8s_sql.migrate.to_etcd import run_to_etcd

        run_to_etcd(cfg, datastore_conninfo(cfg, datastore), to_etcd, common.console)
        return
    if rollback:
        if data_only or from_snapshot or from_etcd:
            raise typer.BadParameter("--rollback takes no source or --data-only", param_hint="--rollback")
        from k8s_sql.phases import migrate as flow

        flow.run_rollback(common.make_context(cfg, dry_run=dry_run, phases=list(flow.ROLLBACK_PHASES)))
        return
    if data_only or from_snapshot:
        if dry_run:
            raise typer.BadParameter("--dry-run is for the node flow; --data-only changes only the datastore, "
                                     "and only when it is empty", param_hint="--dry-run")
        from k8s_sql.migrate.copy import migrate_data, open_source
        from k8s_sql.migrate.datastore import datastore_conninfo

        if not from_etcd and not from_snapshot:
            raise K8sSqlError("--data-only needs --from-etcd URL or --from-snapshot FILE")
        conninfo = datastore_conninfo(cfg, datastore)
        source = open_source(from_etcd, _s(cacert), _s(cert), _s(key), _s(from_snapshot))
        migrate_data(source, conninfo, common.console)
        return
    from k8s_sql.phases import migrate as flow

    options = flow.EtcdOptions(url=from_etcd, cacert=_s(cacert), cert=_s(cert), key=_s(key), datastore=datastore)
    flow.run_migration(common.make_context(cfg, dry_run=dry_run, phases=list(flow.MIGRATE_PHASES)), options)
