"""``k8s-sql migrate --to-etcd FILE``: the way back to etcd.

Writes an etcd 3.4 snapshot of the datastore (:mod:`k8s_sql.snapshot.etcdsnap`, the same file
``etcdctl snapshot save`` gets from the shim's ``Maintenance.Snapshot``) straight from
PostgreSQL, so it works with the shim stopped. ``etcdctl snapshot restore`` turns it into an
etcd data directory with every key's revisions, the history since the last compaction and
the leases (:func:`restore_argv` gives the command for kubeadm's etcd manifest).

Facts from etcd: ``snapshot restore`` checks the SHA-256 after the bbolt file and makes the
members from its ``--name``/``--initial-cluster``/``--initial-advertise-peer-urls`` flags;
kubeadm's etcd static pod carries the same flags (``etcd.yaml``) and its ``--data-dir``.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path

from k8s_sql.errors import K8sSqlError
from k8s_sql.snapshot.etcdsnap import SnapshotWriter, append_sha256


@dataclass(frozen=True)
class SavedSnapshot:
    """A snapshot written by :func:`save_snapshot`: ``revision`` (the store revision it
    holds), ``compact_revision``, ``versions`` (entries of bucket ``key``), ``leases``,
    ``size`` in bytes (with the SHA-256 trailer)."""

    path: str
    revision: int
    compact_revision: int
    versions: int
    leases: int
    size: int


async def _save(conninfo: str, f) -> tuple:
    import psycopg

    from k8s_sql.shim.storage.postgres import PostgresBackend

    try:  # one plain connection first: libpq says why it fails, the pool only that it timed out
        conn = await psycopg.AsyncConnection.connect(conninfo, connect_timeout=10)
        await conn.close()
    except psycopg.Error as e:
        raise K8sSqlError(f"cannot connect to the datastore: {str(e).strip().splitlines()[0]}",
                          hint="check --datastore / the configuration, and that PostgreSQL is running") from None
    # only the read pool: no schema migration, no writer, no lease expiry (this is a reader)
    backend = PostgresBackend(conninfo, pool_size=2)
    try:
        await backend.pool.open(wait=True, timeout=30)
    except Exception as e:  # noqa: BLE001 - the pool says only that it timed out
        await backend.pool.close()
        raise K8sSqlError(f"cannot connect to the datastore: {e}", hint="check --datastore / the configuration, and "
                          "that PostgreSQL is running") from None
    try:
        async def produce(scan, versions):
            writer = SnapshotWriter(f)
            async for batch in versions():
                writer.add(batch)
            return scan, writer.count, writer.finish(scan.revision, scan.compact_revision, scan.leases)
        return await backend.snapshot_scan(produce)
    except K8sSqlError:
        raise
    except Exception as e:  # noqa: BLE001 - StorageError subclasses carry the SQL error's first line
        raise K8sSqlError(f"cannot read the datastore: {e}",
                          hint="is this the shim's database (tables meta, log, lease)?") from None
    finally:
        await backend.pool.close()


def save_snapshot(conninfo: str, path: str | os.PathLike) -> SavedSnapshot:
    """Write an etcd snapshot of the datastore at ``conninfo`` (libpq) to ``path``, atomically
    (``path.part``, fsync, rename; mode 0600: it holds every Secret of the cluster), at one
    consistent revision. Writes continuing meanwhile are not in it: stop kube-apiserver first.

    Raises:
        K8sSqlError: ``path`` exists (it is never overwritten), its directory is missing, the
            datastore cannot be reached or is not the shim's.
    """
    target = Path(path)
    if target.exists():
        raise K8sSqlError(f"{target} exists; k8s-sql does not overwrite it", hint="give a new file name")
    if not target.parent.is_dir():
        raise K8sSqlError(f"directory {target.parent} does not exist", hint="create it or give another path")
    part = target.with_name(target.name + ".part")
    try:
        fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as e:
        raise K8sSqlError(f"cannot write {part}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "w+b") as f:
            scan, versions, size = asyncio.run(_save(conninfo, f))
            append_sha256(f, size)
            os.fsync(f.fileno())
        os.replace(part, target)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return SavedSnapshot(str(target), scan.revision, scan.compact_revision, versions, len(scan.leases),
                         size + 32)


def restore_argv(snapshot: str, etcd_flags: dict[str, str], etcdctl: str = "etcdctl") -> list[str]:
    """``etcdctl snapshot restore`` for the member an etcd static pod describes.

    ``etcd_flags`` are the etcd command's flags without dashes (kubeadm's ``etcd.yaml``:
    ``name``, ``data-dir``, ``initial-cluster``, ``initial-advertise-peer-urls``; kubeadm
    writes ``initial-cluster`` as ``<node>=https://<ip>:2380``). The data directory must not
    exist yet (etcdctl refuses otherwise): move the old one aside first.

    Raises:
        K8sSqlError: a flag ``restore`` needs is missing from the manifest.
    """
    need = ("name", "data-dir", "initial-advertise-peer-urls")
    missing = [n for n in need if not etcd_flags.get(n)]
    if missing:
        raise K8sSqlError("the etcd manifest has no " + ", ".join("--" + n for n in missing),
                          hint="give the flags to etcdctl snapshot restore yourself (see README, "
                               "\"Back to etcd\")")
    cluster = etcd_flags.get("initial-cluster") or f"{etcd_flags['name']}={etcd_flags['initial-advertise-peer-urls']}"
    return [etcdctl, "snapshot", "restore", snapshot, "--data-dir", etcd_flags["data-dir"],
            "--name", etcd_flags["name"], "--initial-cluster", cluster,
            "--initial-advertise-peer-urls", etcd_flags["initial-advertise-peer-urls"],
            "--initial-cluster-token", etcd_flags.get("initial-cluster-token", "etcd-cluster")]


def etcd_manifest_flags(text: str, source: str) -> dict[str, str]:
    """The ``--flag=value`` arguments of the etcd container in a static pod manifest
    (kubeadm's ``etcd.yaml``). Raises K8sSqlError when it is not a pod with an etcd command."""
    from k8s_sql.kubeadm import yamlio

    try:
        pod = yamlio.load(text, source)
        containers = pod["spec"]["containers"]
    except Exception as e:  # noqa: BLE001 - YAML errors or a missing field
        raise K8sSqlError(f"not a static pod manifest: {e}", where=source) from None
    for c in containers:
        argv = [*(c.get("command") or []), *(c.get("args") or [])]
        if argv and os.path.basename(str(argv[0])) == "etcd":
            flags = {}
            for a in argv[1:]:
                a = str(a)
                if a.startswith("--") and "=" in a:
                    k, v = a[2:].split("=", 1)
                    flags[k] = v
            return flags
    raise K8sSqlError("no etcd container in the manifest", where=source)


def find_etcd_manifest(manifests_dir: str, backup_dir: str) -> str | None:
    """kubeadm's etcd manifest: ``<manifests_dir>/etcd.yaml``, else the copy ``migrate`` keeps
    while PostgreSQL serves (``<backup_dir>/migrate/etcd.yaml``), else the newest ``etcd.yaml*``
    anywhere under ``backup_dir``; None if there is none."""
    for path in (Path(manifests_dir) / "etcd.yaml", Path(backup_dir) / "migrate" / "etcd.yaml"):
        if path.is_file():
            return str(path)
    saved = sorted(Path(backup_dir).glob("**/etcd.yaml*"), key=lambda p: p.stat().st_mtime) if Path(
        backup_dir).is_dir() else []
    return str(saved[-1]) if saved else None


def run_to_etcd(cfg, conninfo: str, path: str | os.PathLike, console) -> SavedSnapshot:
    """``migrate --to-etcd FILE``: save the snapshot, then print the restore command (from the
    etcd manifest when one is found, see :func:`find_etcd_manifest`) and the remaining steps.
    Raises K8sSqlError as :func:`save_snapshot`."""
    saved = save_snapshot(conninfo, path)
    console.print(f"[green]✓[/] etcd snapshot written: {saved.path} ({saved.size} bytes): revision "
                  f"{saved.revision}, compacted at {saved.compact_revision}, {saved.versions} versions, "
                  f"{saved.leases} leases")
    manifest = find_etcd_manifest(cfg.paths.manifests_dir, cfg.paths.backup_dir)
    data_dir = "/var/lib/etcd"
    if manifest:
        flags = etcd_manifest_flags(Path(manifest).read_text(), manifest)
        argv = restore_argv(saved.path, flags)
        data_dir = flags["data-dir"]
        restore = " ".join(argv)
        console.print(f"etcd member from {manifest}")
    else:
        restore = (f"etcdctl snapshot restore {saved.path} --data-dir {data_dir} --name <node name> "
                   "--initial-cluster <node name>=https://<node IP>:2380 "
                   "--initial-advertise-peer-urls https://<node IP>:2380")
        console.print("[yellow]no etcd manifest found[/]: fill in the flags kubeadm's etcd.yaml had")
    console.print("Next, on this node (kube-apiserver stopped, so nothing is written after this revision):\n"
                  f"  1. mv {data_dir} {data_dir}.before-restore   (etcdctl restores only into a new directory)\n"
                  f"  2. ETCDCTL_API=3 {restore}\n"
                  "  3. k8s-sql migrate --rollback   (puts back the etcd and kube-apiserver manifests)\n"
                  "See README, \"Back to etcd\".")
    return saved
