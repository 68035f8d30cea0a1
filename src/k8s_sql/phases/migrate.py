"""``k8s-sql migrate``: the phases that move a kubeadm control-plane node from its stacked etcd
to PostgreSQL, and ``--rollback``.

Each phase reads the node first and plans only what is left (a rerun after an interruption
continues where it stopped). The files that say how far it got live in
``<paths.backupDir>/migrate/`` (never in the manifests directory, which the kubelet reads):

``etcd-snapshot.db``          etcd's snapshot (Maintenance.Snapshot, as ``etcdctl snapshot save``): the rollback point
``kube-apiserver.yaml``       kube-apiserver's manifest as it was (moved aside = kube-apiserver stopped)
``etcd.yaml``                 etcd's manifest as it was (moved aside = etcd stopped; its data directory is kept)
``revisions.json``            every key's mod_revision (= resourceVersion) at the migrated revision R

Order: check (etcd healthy and alone, disk), pki, postgres (neither touches the running
cluster), snapshot, stop kube-apiserver (so nothing is written after R; refused while the
datastore holds data, e.g. a copy left by a rollback, so the cluster is not stopped for a copy
that would be refused), copy (one verified
transaction, :mod:`k8s_sql.migrate`), stop etcd, kube-apiserver's manifest back with the shim
sidecar (and the sidecar patch in ``paths.patchesDir`` for later kubeadm runs), wait for
/readyz, check every key kept its resourceVersion.

Several etcd members (other stacked control planes): refused, because the other
kube-apiservers would keep writing to etcd after R (see :data:`MULTI_MEMBER_HINT`).
"""

from __future__ import annotations

import json
import posixpath
import socket
import tempfile
import ssl
import time
import urllib.request
from dataclasses import dataclass
from urllib.parse import urlsplit

from k8s_sql.errors import K8sSqlError
from k8s_sql.kubeadm import manifest as kmanifest
from k8s_sql.kubeadm import sidecar, yamlio
from k8s_sql.phases.base import Action, Change, Context, Phase, RemoveFile, WriteFile, file_change, pending
from k8s_sql.phases.runner import load_phase, run_phases

#: kubeadm's etcd client files (``/etc/kubernetes/pki/etcd``): the CA, then client pairs in order of preference.
KUBEADM_ETCD_CA = "/etc/kubernetes/pki/etcd/ca.crt"
KUBEADM_ETCD_CLIENTS = (("/etc/kubernetes/pki/etcd/healthcheck-client.crt", "/etc/kubernetes/pki/etcd/healthcheck-client.key"),
                        ("/etc/kubernetes/pki/apiserver-etcd-client.crt", "/etc/kubernetes/pki/apiserver-etcd-client.key"))
APISERVER_MANIFEST = "kube-apiserver.yaml"
SNAPSHOT = "etcd-snapshot.db"
REVISIONS = "revisions.json"
#: Seconds to wait for the kubelet to stop or start a static pod.
KUBELET_TIMEOUT = 180.0

MULTI_MEMBER_HINT = (
    "k8s-sql migrate moves one stacked control plane. Migrating with other members running is unsafe: their "
    "kube-apiservers keep writing to etcd after the copy, and those writes would be lost. Do, in this order: "
    "(1) on every other control-plane node: kubeadm reset (its kube-apiserver and etcd member stop) and "
    "etcdctl member remove its member from here, until etcdctl member list shows this node alone; "
    "(2) here: k8s-sql migrate; (3) on each other node: k8s-sql join --control-plane (its shim uses this "
    "node's PostgreSQL)")

MIGRATE_PHASES = ("migrate-check", "pki", "postgres", "migrate-snapshot", "migrate-stop-apiserver", "migrate-copy",
                  "migrate-stop-etcd", "migrate-sidecar", "migrate-verify")
ROLLBACK_PHASES = ("migrate-rollback",)


@dataclass(frozen=True)
class EtcdOptions:
    """``--from-etcd``, ``--cacert``, ``--cert``, ``--key`` (``None``: kubeadm's layout) and
    ``--datastore`` (``None``: the configuration's)."""

    url: str | None = None
    cacert: str | None = None
    cert: str | None = None
    key: str | None = None
    datastore: str | None = None


def aside_dir(ctx: Context) -> str:
    """``<paths.backupDir>/migrate``: where manifests are moved aside and progress is kept."""
    return posixpath.join(ctx.config.paths.backup_dir, "migrate")


def _aside(ctx: Context, name: str) -> str:
    return posixpath.join(aside_dir(ctx), name)


def _manifest(ctx: Context, name: str) -> str:
    return posixpath.join(ctx.config.paths.manifests_dir, name)


def _flag(text: str | None, container: str, name: str) -> str | None:
    if not text:
        return None
    pod = yamlio.load(text, name)
    for c in (pod.get("spec") or {}).get("containers") or []:
        if c.get("name") == container:
            return kmanifest.flag_value(c, name)
    return None


def resolve_etcd(ctx: Context, opts: EtcdOptions) -> EtcdOptions:
    """Fill what ``opts`` leaves open from kubeadm's layout: the URL from the etcd manifest's
    ``--advertise-client-urls`` (its first), the CA and the first client pair that exists.

    Raises K8sSqlError when no URL can be found (no etcd manifest and no --from-etcd)."""
    host = ctx.host
    url = opts.url
    if not url:
        text = host.read_text(_manifest(ctx, kmanifest.ETCD_MANIFEST)) or host.read_text(
            _aside(ctx, kmanifest.ETCD_MANIFEST))
        urls = _flag(text, "etcd", "--advertise-client-urls")
        if not urls:
            raise K8sSqlError("no etcd to migrate from: no etcd static pod with --advertise-client-urls in "
                              f"{ctx.config.paths.manifests_dir}", hint="give --from-etcd URL")
        url = urls.split(",")[0].strip()
    cacert = opts.cacert or KUBEADM_ETCD_CA
    cert, key = opts.cert, opts.key
    if not cert:
        for c, k in KUBEADM_ETCD_CLIENTS:
            if host.exists(c) and host.exists(k):
                cert, key = c, k
                break
    return EtcdOptions(url, cacert, cert, key, opts.datastore)


def _port_open(url: str) -> bool:
    u = urlsplit(url)
    try:
        with socket.create_connection((u.hostname, u.port), timeout=2):
            return True
    except OSError:
        return False


def _wait(what: str, done, timeout: float = KUBELET_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise K8sSqlError(f"{what}: not after {timeout:.0f} s", hint="is the kubelet running? "
                              "(systemctl status kubelet); then run k8s-sql migrate again")
        time.sleep(0.5)


def _apiserver_url(text: str | None) -> str:
    port = _flag(text, "kube-apiserver", "--secure-port") or "6443"
    return f"https://127.0.0.1:{port}"


def _readyz_url(ctx: Context) -> str:
    return _apiserver_url(ctx.host.read_text(_manifest(ctx, APISERVER_MANIFEST))) + "/readyz"


def _ready(url: str) -> bool:
    """kube-apiserver's ``/readyz`` answers 200 (readiness only, as the kubelet's probe: no
    certificate check)."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=5, context=context) as r:
            return r.status == 200
    except OSError:
        return False


def _move_aside(ctx: Context, name: str, waiting: str, stopped) -> list[Change]:
    """Changes that move the manifest ``name`` to the aside directory (the copy first, so an
    interruption never loses it), then wait until the kubelet stopped the pod (``stopped()``)."""
    src, dst = _manifest(ctx, name), _aside(ctx, name)
    data = ctx.host.read_bytes(src)
    changes: list[Change] = []
    if ctx.host.read_bytes(dst) != data:
        changes.append(WriteFile(dst, data, 0o600, note="the manifest as it was"))
    changes.append(RemoveFile(src, reason="the kubelet stops the static pod"))
    changes.append(Action(f"wait until the kubelet stopped {waiting}", lambda ctx: _wait(f"{waiting} to stop", stopped)))
    return changes


def _source(ctx: Context, opts: EtcdOptions):
    from k8s_sql.migrate.source import EtcdSource, open_channel

    return EtcdSource(open_channel(opts.url, opts.cacert, opts.cert, opts.key), opts.url)


def _conninfo(ctx: Context, opts: EtcdOptions) -> str:
    from k8s_sql.migrate.datastore import datastore_conninfo

    return datastore_conninfo(ctx.config, opts.datastore)


class _Step(Phase):
    """A migrate phase with the run's :class:`EtcdOptions`."""

    def __init__(self, opts: EtcdOptions):
        self.opts = opts


class Check(_Step):
    """etcd reachable, healthy and alone; enough disk for its snapshot. Plans nothing."""

    name, title = "migrate-check", "check etcd (health, members), disk"

    def plan(self, ctx: Context) -> list[Change]:
        host = ctx.host
        if host.exists(_aside(ctx, kmanifest.ETCD_MANIFEST)) and not host.exists(
                _manifest(ctx, kmanifest.ETCD_MANIFEST)):
            ctx.console.print("  etcd already stopped by an earlier run: continuing", highlight=False)
            return []
        opts = resolve_etcd(ctx, self.opts)
        from k8s_sql.shim.etcdpb import rpc_pb2

        src = _source(ctx, opts)
        members = src.members()
        if len(members) > 1:
            names = ", ".join(f"{m.name or hex(m.ID)} ({','.join(m.clientURLs)})" for m in members)
            raise K8sSqlError(f"etcd has {len(members)} members: {names}", hint=MULTI_MEMBER_HINT)
        status = src.maintenance.Status(rpc_pb2.StatusRequest(), timeout=30)
        if status.errors:
            raise K8sSqlError(f"etcd at {opts.url} reports errors: {'; '.join(status.errors)}")
        backup = ctx.config.paths.backup_dir
        probe = backup
        while not host.exists(probe) and probe not in ("/", ""):
            probe = posixpath.dirname(probe)
        res = host.run(["df", "-B1", "--output=avail", probe], check=False)
        lines = (res.stdout or "").split()
        free = int(lines[-1]) if res.ok and lines and lines[-1].isdigit() else None
        if free is not None and free < 2 * status.dbSize:
            raise K8sSqlError(f"{free} bytes free under {backup}, and etcd's database is {status.dbSize} bytes",
                              hint="free at least twice etcd's database size for its snapshot")
        ctx.console.print(f"  etcd {opts.url}: healthy, 1 member, revision {src.revision}, db {status.dbSize} "
                          f"bytes; {free if free is not None else '?'} bytes free under {backup}", highlight=False, markup=False)
        return []


class Snapshot(_Step):
    """etcd's snapshot into ``<backupDir>/migrate/etcd-snapshot.db``: the rollback point."""

    name, title = "migrate-snapshot", "snapshot etcd (the rollback point)"

    def plan(self, ctx: Context) -> list[Change]:
        path = _aside(ctx, SNAPSHOT)
        if ctx.host.exists(path) or not ctx.host.exists(_manifest(ctx, kmanifest.ETCD_MANIFEST)):
            return []
        opts = resolve_etcd(ctx, self.opts)

        def save(ctx: Context) -> None:
            from k8s_sql.shim.etcdpb import rpc_pb2
            from k8s_sql.snapshot.etcdsnap import EtcdSnapshot

            src = _source(ctx, opts)
            with tempfile.NamedTemporaryFile(prefix="k8s-sql-etcd-snapshot-") as f:
                for r in src.maintenance.Snapshot(rpc_pb2.SnapshotRequest(), timeout=600):
                    f.write(r.blob)
                f.flush()
                EtcdSnapshot(f.name)  # refuses a truncated or corrupted file
                f.seek(0)
                ctx.host.write_bytes(path, f.read(), mode=0o600)
        return [Action(f"save etcd's snapshot from {opts.url} to {path} (as etcdctl snapshot save)", save)]


class StopApiserver(_Step):
    """kube-apiserver's manifest moved aside; wait until it no longer answers."""

    name, title = "migrate-stop-apiserver", "stop kube-apiserver (manifest moved aside)"

    def plan(self, ctx: Context) -> list[Change]:
        path = _manifest(ctx, APISERVER_MANIFEST)
        text = ctx.host.read_text(path)
        if text is None or kmanifest.is_patched(text, ctx.config):
            return []
        used = _datastore_in_use(ctx, self.opts)
        if used:
            drop = (f"sudo -u postgres psql -c 'DROP DATABASE {ctx.config.postgres.database} WITH (FORCE)'"
                    if not self.opts.datastore else "drop and recreate the --datastore database")
            raise K8sSqlError(f"{used}; kube-apiserver was not stopped", hint=(
                f"after k8s-sql migrate --rollback the datastore keeps its earlier copy: drop it ({drop}), then "
                "run k8s-sql migrate again"))
        url = _apiserver_url(text)
        return _move_aside(ctx, APISERVER_MANIFEST, f"kube-apiserver ({url})", lambda: not _port_open(url))


def _datastore_in_use(ctx: Context, opts: EtcdOptions) -> str | None:
    """Why the datastore cannot take the copy (it holds data: checked before kube-apiserver is
    stopped, not only in the copy), or ``None``: empty, not created yet (a dry run) or not
    reachable (the copy checks again and says why)."""
    import psycopg

    from k8s_sql.migrate import importer

    try:
        with psycopg.connect(_conninfo(ctx, opts), connect_timeout=10) as conn, conn.transaction():
            importer.check_empty(conn)
    except importer.DatastoreNotEmptyError as e:
        return e.what
    except (psycopg.Error, K8sSqlError):
        return None
    return None


class Copy(_Step):
    """etcd's state at R into the empty datastore, verified; every key's mod_revision kept in revisions.json."""

    name, title = "migrate-copy", "copy etcd's state into PostgreSQL"

    def plan(self, ctx: Context) -> list[Change]:
        if ctx.host.exists(_aside(ctx, REVISIONS)):
            return []
        opts = resolve_etcd(ctx, self.opts)

        def copy(ctx: Context) -> None:
            from k8s_sql.migrate import importer
            from k8s_sql.migrate.copy import migrate_data

            src = _source(ctx, opts)
            revisions = key_revisions(src)
            conninfo = _conninfo(ctx, opts)
            try:
                migrate_data(src, conninfo, ctx.console)
            except importer.DatastoreNotEmptyError:
                done = importer.holds_copy_of(conninfo, src)  # committed by a run interrupted right after
                if done is None:
                    raise
                ctx.console.print("  the datastore already holds this copy; " + done.summary(), highlight=False,
                                  markup=False)
            ctx.host.write_bytes(_aside(ctx, REVISIONS), json.dumps(
                {"revision": src.revision, "keys": revisions}).encode(), mode=0o600)
        what = f"copy {opts.url} at its current revision into the datastore (one transaction, verified)"
        return [pending(what, "postgres creates the datastore", lambda ctx: [Action(what, copy)])]


def key_revisions(src) -> dict[str, int]:
    """Every live key at the source's revision (hex) -> its mod_revision."""
    from k8s_sql.shim.etcdpb import rpc_pb2

    out, key = {}, b"\x00"
    while True:
        r = src.kv.Range(rpc_pb2.RangeRequest(key=key, range_end=b"\x00", revision=src.revision, keys_only=True,
                                              limit=5000), timeout=60)
        out.update({kv.key.hex(): kv.mod_revision for kv in r.kvs})
        if not r.more or not r.kvs:
            return out
        key = r.kvs[-1].key + b"\x00"


class StopEtcd(_Step):
    """etcd's manifest moved aside (data directory kept); wait until its client port is closed."""

    name, title = "migrate-stop-etcd", "stop etcd (manifest moved aside, data kept)"

    def plan(self, ctx: Context) -> list[Change]:
        path = _manifest(ctx, kmanifest.ETCD_MANIFEST)
        text = ctx.host.read_text(path)
        if text is None:
            return []
        urls = [u for u in (_flag(text, "etcd", "--listen-client-urls") or "").split(",") if u]
        return _move_aside(ctx, kmanifest.ETCD_MANIFEST, "etcd", lambda: not any(_port_open(u) for u in urls))


class Sidecar(_Step):
    """kube-apiserver's manifest back, with the shim sidecar; the sidecar patch for kubeadm."""

    name, title = "migrate-sidecar", "kube-apiserver on the shim (sidecar patch and manifest)"

    def plan(self, ctx: Context) -> list[Change]:
        cfg, host = ctx.config, ctx.host
        changes: list[Change] = []
        patch = file_change(host, posixpath.join(cfg.paths.patches_dir, sidecar.PATCH_FILE),
                            sidecar.patch_text(cfg).encode(), 0o644)
        if patch:
            changes.append(patch)
        path = _manifest(ctx, APISERVER_MANIFEST)
        current = host.read_text(path)
        if current is not None and kmanifest.is_patched(current, cfg):
            return changes
        original = host.read_text(_aside(ctx, APISERVER_MANIFEST))
        if original is None:
            raise K8sSqlError(f"kube-apiserver's manifest is neither in {cfg.paths.manifests_dir} nor in "
                              f"{aside_dir(ctx)}", hint="restore it from kubeadm (kubeadm init phase control-plane "
                              "apiserver) or a backup, then run k8s-sql migrate again")
        new, _ = kmanifest.patch_text(original, cfg, _aside(ctx, APISERVER_MANIFEST))
        changes.append(WriteFile(path, new.encode(), 0o600))
        return changes


class Verify(_Step):
    """/readyz, then every key copied at R still has its mod_revision (or a newer one: written since)."""

    name, title = "migrate-verify", "wait for /readyz; every object kept its resourceVersion"

    def plan(self, ctx: Context) -> list[Change]:
        return [pending("wait for kube-apiserver's /readyz and compare every resourceVersion", "migrate-sidecar "
                        "starts kube-apiserver", lambda ctx: [Action("verify", self._verify)])]

    def _verify(self, ctx: Context) -> None:
        url = _readyz_url(ctx)
        _wait(f"kube-apiserver's {url}", lambda: _ready(url))
        record = json.loads(ctx.host.read_bytes(_aside(ctx, REVISIONS)))
        import psycopg

        try:
            with psycopg.connect(_conninfo(ctx, self.opts), connect_timeout=10) as conn:
                now = {bytes(k).hex(): m for k, m in conn.execute("SELECT key, mod_revision FROM kv")}
        except psycopg.Error as e:
            raise K8sSqlError(f"cannot read the datastore: {' '.join(str(e).split())}") from None
        r = record["revision"]
        changed = [k for k, m in record["keys"].items() if k in now and now[k] != m and now[k] <= r]
        if changed:
            raise K8sSqlError(f"{len(changed)} keys have a resourceVersion other than etcd's, e.g. "
                              f"{bytes.fromhex(changed[0])!r}", hint="roll back with k8s-sql migrate --rollback")
        kept = sum(1 for k, m in record["keys"].items() if now.get(k) == m)
        ctx.console.print(f"  /readyz ok; {kept} of {len(record['keys'])} keys have etcd's resourceVersion, the "
                          "rest were written or deleted by the cluster since", highlight=False, markup=False)


class Rollback(Phase):
    """The manifests as they were before ``migrate``: etcd's back (its data directory was
    kept), kube-apiserver's unpatched; the sidecar patch removed. The aside files move to
    ``<backupDir>/migrate.rolled-back.<time>`` so a later ``migrate`` starts afresh."""

    name, title = "migrate-rollback", "restore etcd's and kube-apiserver's manifests"

    def plan(self, ctx: Context) -> list[Change]:
        host, changes = ctx.host, []
        for name in (kmanifest.ETCD_MANIFEST, APISERVER_MANIFEST):
            saved = host.read_bytes(_aside(ctx, name))
            if saved is not None:
                c = file_change(host, _manifest(ctx, name), saved, 0o600)
                if c:
                    changes.append(c)
        patch = posixpath.join(ctx.config.paths.patches_dir, sidecar.PATCH_FILE)
        if host.exists(patch) and host.read_text(patch) == sidecar.patch_text(ctx.config):
            changes.append(RemoveFile(patch, reason="the sidecar patch migrate wrote"))
        aside = aside_dir(ctx)
        if host.listdir(aside) if host.is_dir(aside) else []:
            stamp = time.strftime("%Y%m%d-%H%M%S")

            def archive(ctx: Context) -> None:
                for name in ctx.host.listdir(aside):
                    data = ctx.host.read_bytes(posixpath.join(aside, name))
                    ctx.host.write_bytes(posixpath.join(f"{aside}.rolled-back.{stamp}", name), data, mode=0o600)
                    ctx.host.remove(posixpath.join(aside, name))
            changes.append(Action(f"move {aside}/* to {aside}.rolled-back.{stamp}/ (the datastore keeps its copy: "
                                  "empty it before migrating again)", archive))
        if any(getattr(c, "path", None) == _manifest(ctx, APISERVER_MANIFEST) for c in changes):
            changes.append(Action("wait until the kubelet restarted kube-apiserver on etcd and /readyz answers",
                                  self._wait_restarted))
        return changes

    def _wait_restarted(self, ctx: Context) -> None:
        """The kubelet replaces a running kube-apiserver pod whose manifest changed: wait
        until the old one (on the shim) stops answering — it takes seconds to shut down,
        a new one seconds to become ready, so a poll cannot miss the gap — then until the
        new one (on etcd) is ready. A stopped kube-apiserver (moved aside) just starts."""
        url = _readyz_url(ctx)
        if _ready(url):
            _wait("the kubelet to stop kube-apiserver on the shim", lambda: not _ready(url))
        _wait(f"kube-apiserver's {url} on etcd", lambda: _ready(url))



_STEPS = {"migrate-check": Check, "migrate-snapshot": Snapshot, "migrate-stop-apiserver": StopApiserver,
          "migrate-copy": Copy, "migrate-stop-etcd": StopEtcd, "migrate-sidecar": Sidecar, "migrate-verify": Verify}


def phases(opts: EtcdOptions) -> list[Phase]:
    """The migrate phases in order (init's ``pki`` and ``postgres`` among them)."""
    return [_STEPS[n](opts) if n in _STEPS else load_phase(n) for n in MIGRATE_PHASES]


def run_migration(ctx: Context, opts: EtcdOptions) -> None:
    """Show the plan (the phases), then run them (``--dry-run``: print only)."""
    ctx.console.print("plan: " + " -> ".join(MIGRATE_PHASES), highlight=False, markup=False)
    run_phases(phases(opts), ctx)


def run_rollback(ctx: Context) -> None:
    """``migrate --rollback``."""
    run_phases([Rollback()], ctx)
