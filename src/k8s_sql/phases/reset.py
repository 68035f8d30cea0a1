"""``k8s-sql reset``: undo ``k8s-sql init`` on a node, planned from facts like a phase.

What goes, in order:

1. ``kubeadm reset -f`` when the node has kubeadm state (kubeadm's own files are kubeadm's
   business);
2. every file k8s-sql created, as recorded in ``paths.stateFile`` (:mod:`k8s_sql.state`),
   whose content is still what k8s-sql wrote. A file changed since is kept and reported;
   a file k8s-sql only modified was never recorded and stays;
3. PostgreSQL's marked ``pg_hba.conf`` block (pg_hba.conf backed up first) — with
   ``postgres.mode: local`` only;
4. the record itself, once everything in it is gone;
5. every directory k8s-sql created that is empty by then (``rmdir``: never its content);
6. a configuration reload (``pg_reload_conf()``), or a restart when k8s-sql's conf.d file
   had set ``listen_addresses``.

Never removed, whatever the record or the configuration says: a system path
(:func:`k8s_sql.paths.is_system_path`), a directory that is not empty, a directory
k8s-sql did not create, backups, PostgreSQL's ``conf.d`` directory.

A node set up by a k8s-sql that kept no record (no state file; or a record started on a
node that already had k8s-sql's files, marked ``legacy``): reset also looks at k8s-sql's
known files by name — ``paths.kubeadmConfig``, the sidecar patch in ``paths.patchesDir``,
the datastore certificates and keys in ``paths.pkiDir``, ``paths.postgresClients``,
``conf.d/k8s-sql.conf``, the user's ``~/.kube/config`` when it equals admin.conf — and
removes each one only if its content shows it is k8s-sql's (k8s-sql's header, a
certificate issued by k8s-sql's datastore CA, a key matching it, a parseable clients
list), and only outside system directories. Of directories it removes only
``paths.pkiDir``, ``paths.patchesDir`` and a directory named ``k8s-sql`` holding the
kubeadm configuration, and only when empty.

PostgreSQL keeps running and the database stays, unless ``delete_data``: then ``DROP
DATABASE … WITH (FORCE)`` and ``DROP ROLE``. Running reset again finds nothing to do.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from k8s_sql.errors import ConfigError, K8sSqlError
from k8s_sql.kubeadm.sidecar import PATCH_FILE
from k8s_sql.paths import is_system_path
from k8s_sql.pg import clients as pgclients
from k8s_sql.pg.cluster import discover, psql
from k8s_sql.pg.conf import CONF_D_FILE
from k8s_sql.pg.hba import remove_block as remove_hba_block
from k8s_sql.phases.base import Action, Change, Context, Phase, RemoveDir, RemoveFile, WriteFile
from k8s_sql.pki import files
from k8s_sql.pki.certs import CA_COMMON_NAME
from k8s_sql.state import DIR, FILE, State, sha256

HEADER = b"# Written by k8s-sql"


def _kubeadm_state(ctx: Context) -> bool:
    host, paths = ctx.host, ctx.config.paths
    # dotfiles do not count: the kubelet package ships manifests/.kubelet-keep, and the kubelet ignores them
    manifests = [n for n in host.listdir(paths.manifests_dir) if not n.startswith(".")]
    return (bool(manifests) or host.exists(paths.kubeconfig)
            or host.exists("/etc/kubernetes/kubelet.conf"))


# Is this file k8s-sql's? (nodes without a record)

def _kubeadm_config_is_ours(data: bytes) -> bool:
    head = data[:400]
    return head.startswith(b"# kubeadm configuration for Kubernetes") and b"k8s-sql" in head


def _written_by_us(data: bytes) -> bool:
    return HEADER in data[:400]


def _clients_list(data: bytes) -> bool:
    try:
        pgclients.parse(data.decode(), "")
    except (UnicodeDecodeError, ConfigError):
        return False
    return True


def _our_cert(data: bytes | None) -> x509.Certificate | None:
    """The certificate in ``data`` if k8s-sql's datastore CA issued it (the CA: itself)."""
    if data is None:
        return None
    try:
        cert = x509.load_pem_x509_certificate(data)
    except ValueError:
        return None
    issuer = [a.value for a in cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return cert if issuer == [CA_COMMON_NAME] else None


def _key_matches(data: bytes, cert: x509.Certificate | None) -> bool:
    if cert is None:
        return False
    try:
        key = serialization.load_pem_private_key(data, password=None)
        return key.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo) == \
            cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    except (ValueError, TypeError):
        return False


@dataclass
class _Plan:
    """What reset decided about files and directories (paths on the host)."""

    remove: list[tuple[str, str, str]] = field(default_factory=list)  # (path, sha256, reason)
    keep: list[tuple[str, str]] = field(default_factory=list)  # (path, why): reported
    kept_recorded: set[str] = field(default_factory=set)  # recorded entries that stay
    gone: set[str] = field(default_factory=set)  # paths that will not exist afterwards

    def remove_file(self, path: str, data: bytes, reason: str = "") -> None:
        self.remove.append((path, sha256(data), reason))
        self.gone.add(path)


class Reset(Phase):
    """The reset plan (see the module doc). ``delete_data`` also drops the database and role.

    Raises (from plan):
        K8sSqlError: ``delete_data`` but PostgreSQL cannot be reached; the state file is
            damaged (nothing is planned then).
    """

    name = "reset"
    title = "undo k8s-sql init on this node"

    def __init__(self, delete_data: bool = False):
        self.delete_data = delete_data
        self._removed: list[tuple[str, str]] = []

    def plan(self, ctx: Context) -> list[Change]:
        host, cfg = ctx.host, ctx.config
        state = ctx.state if ctx.state is not None else State.for_config(cfg)
        state.load(host)  # a damaged record stops reset before anything is planned
        changes: list[Change] = []
        if _kubeadm_state(ctx):
            if host.which("kubeadm") is None:
                raise K8sSqlError("the node has kubeadm state but kubeadm is not installed", where=host.name,
                                  hint="install kubeadm (`k8s-sql init phase prereqs`) and run reset again")
            changes.append(Action("kubeadm reset -f", lambda c: c.host.run(["kubeadm", "reset", "-f"], stream=True),
                                  detail="removes the static pods, kubelet configuration and kubeadm's pki"))
        ha = cfg.postgres.mode == "local" and cfg.postgres.ha.enabled
        if ha:  # leave the formation first (the data stays unless --delete-data)
            from k8s_sql.phases.postgres_ha import drop_node

            changes += drop_node(ctx, self.delete_data)
        cluster = discover(host, cfg) if cfg.postgres.mode == "local" and not ha else None
        conf_dir = cluster.config_dir if cluster else None
        conf_d = posixpath.join(conf_dir, "conf.d", CONF_D_FILE) if conf_dir else None

        plan = _Plan()
        legacy = not state.exists(host) or state.legacy(host)
        if not state.exists(host):
            ctx.console.print(f"  no record of what k8s-sql created ({state.path}): a node set up by an older "
                              "k8s-sql; looking for k8s-sql's known files", markup=False, highlight=False)
        self._recorded_files(ctx, state, plan)
        legacy_dirs: list[str] = []
        if legacy:
            legacy_dirs = self._legacy_files(ctx, state, plan, conf_d)
        conf_text = host.read_text(conf_d) if conf_d and conf_d in plan.gone else None
        dirs, state_goes = self._dirs(ctx, state, plan, legacy_dirs, conf_dir)

        for path, why in plan.keep:
            ctx.console.print(f"  keep {path}: {why}", markup=False, highlight=False)
        for path, digest, reason in plan.remove:
            changes.append(RemoveFile(path, sha256=digest, reason=reason))
        self._removed = [(p, d) for p, d, _ in plan.remove]

        pg_changes, restart = self._postgres_files(ctx, conf_dir, conf_text)
        changes += pg_changes
        if state.exists(host):
            dropped = any(e.path not in plan.kept_recorded for e in state.entries(host))
            if state_goes:
                changes.append(DropState(state))
            elif dropped:
                kept = sorted(plan.kept_recorded)
                changes.append(Action(f"keep {state.path} recording the {len(kept)} path(s) reset keeps",
                                      lambda c: state.keep_only(c.host, kept)))
        changes += [RemoveDir(d, reason=why) for d, why in dirs]
        if cfg.postgres.mode == "local" and not ha:
            changes += self._postgres_server(ctx, cluster, bool(pg_changes) or conf_text is not None, restart)
        return changes

    def _recorded_files(self, ctx: Context, state: State, plan: _Plan) -> None:
        host = ctx.host
        for e in state.entries(host):
            if e.kind != FILE:
                continue
            if is_system_path(e.path):
                plan.keep.append((e.path, "a system path: never removed"))
                plan.kept_recorded.add(e.path)
            elif host.is_dir(e.path):
                plan.keep.append((e.path, "k8s-sql wrote a file here; it is a directory now"))
                plan.kept_recorded.add(e.path)
            else:
                data = host.read_bytes(e.path)
                if data is None:
                    plan.gone.add(e.path)  # already gone: only its record goes
                elif sha256(data) == e.sha256:
                    plan.remove_file(e.path, data)
                else:
                    plan.keep.append((e.path, "changed since k8s-sql wrote it"))
                    plan.kept_recorded.add(e.path)

    def _legacy_files(self, ctx: Context, state: State, plan: _Plan, conf_d: str | None) -> list[str]:
        """Plan k8s-sql's known files that are not recorded (see the module doc); returns
        the directories that may go when empty."""
        host, p = ctx.host, ctx.config.paths
        pki = p.pki_dir
        read = lambda path: None if host.is_dir(path) else host.read_bytes(path)  # noqa: E731
        certs = {name: _our_cert(read(files.path(pki, name))) for name in files.ALL_CERTS} \
            if not is_system_path(pki) else {}
        checks = [(p.kubeadm_config, _kubeadm_config_is_ours),
                  (posixpath.join(p.patches_dir, PATCH_FILE), _written_by_us),
                  (p.postgres_clients, _clients_list)]
        if conf_d:
            checks.append((conf_d, _written_by_us))
        for name, cert in certs.items():
            checks.append((files.path(pki, name), lambda data, cert=cert: cert is not None))
            key = files.CA_KEY if name == files.CA_CERT else files.key_of(name)
            checks.append((files.path(pki, key), lambda data, cert=cert: _key_matches(data, cert)))
        admin = read(p.kubeconfig)
        copy = self._admin_copy(ctx)
        if admin is not None and copy:
            checks.append((copy, lambda data: data == admin))  # only the copy `post` made
        for path, ours in checks:
            if state.get(host, path) is not None or is_system_path(posixpath.dirname(path)) or host.is_dir(path):
                continue
            data = host.read_bytes(path)
            if data is None:
                continue
            if ours(data):
                plan.remove_file(path, data, "k8s-sql's, written before k8s-sql kept a record")
            elif path != copy:
                plan.keep.append((path, "not recorded, and its content is not k8s-sql's"))
        dirs = [pki, p.patches_dir]
        dirs += [d for d in {posixpath.dirname(p.kubeadm_config), posixpath.dirname(p.postgres_clients)}
                 if posixpath.basename(d) == "k8s-sql"]
        return dirs

    def _admin_copy(self, ctx: Context) -> str | None:
        res = ctx.host.run(["getent", "passwd", ctx.options.invoking_user], check=False)
        home = res.stdout.split(":")[5] if res.ok and res.stdout.count(":") >= 6 else None
        return posixpath.join(home, ".kube", "config") if home else None

    def _dirs(self, ctx: Context, state: State, plan: _Plan, legacy_dirs: list[str],
              conf_dir: str | None) -> tuple[list[tuple[str, str]], bool]:
        """The directories to remove, deepest first, and whether the record goes too."""
        host = ctx.host
        recorded = {e.path for e in state.entries(host) if e.kind == DIR}
        candidates = recorded | set(state.state_dirs(host)) | set(legacy_dirs)
        protected = set()
        if conf_dir:  # PostgreSQL's include_dir must stay, whoever made it
            d = posixpath.join(conf_dir, "conf.d")
            while d not in ("", "/"):
                protected.add(d)
                d = posixpath.dirname(d)
        order = sorted(candidates, key=lambda d: (-d.count("/"), d))

        state_dirs = set(state.state_dirs(host))

        def decide(state_goes: bool) -> tuple[list[tuple[str, str]], list[tuple[str, str]], set[str]]:
            gone = set(plan.gone) | ({state.path} if state_goes else set())
            out, keep, kept = [], [], set()
            for d in order:
                if d in state_dirs - recorded and not state_goes:
                    continue  # holds the record, which stays
                if is_system_path(d) or d in protected:
                    if d in recorded:
                        keep.append((d, "a system path: never removed" if is_system_path(d)
                                     else "PostgreSQL's configuration includes it"))
                        kept.add(d)
                    continue
                if not host.exists(d):
                    gone.add(d)
                    continue
                if not host.is_dir(d):
                    if d in recorded:
                        keep.append((d, "k8s-sql made a directory here; it is not one now"))
                        kept.add(d)
                    continue
                left = [n for n in host.listdir(d) if posixpath.join(d, n) not in gone]
                if left:
                    if d in recorded or d in state_dirs:
                        keep.append((d, f"not empty: {', '.join(left[:5])}{', …' if len(left) > 5 else ''}"))
                    if d in recorded:
                        kept.add(d)
                    continue
                gone.add(d)
                out.append((d, "" if d in recorded or d in state_dirs else "k8s-sql's directory"))
            return out, keep, kept

        state_goes = state.exists(host) and not plan.kept_recorded
        dirs, keep, kept = decide(state_goes)
        if state_goes and kept:  # a directory stays, so its record stays too
            state_goes = False
            dirs, keep, kept = decide(False)
        plan.keep += keep
        plan.kept_recorded |= kept
        return dirs, state_goes

    def _postgres_files(self, ctx: Context, conf_dir: str | None, conf_text: str | None) -> tuple[list[Change], bool]:
        """The pg_hba.conf block's removal; whether a restart is needed (k8s-sql's conf.d
        file, which goes, had set ``listen_addresses``, which only a restart undoes)."""
        host, cfg = ctx.host, ctx.config
        changes: list[Change] = []
        restart = bool(conf_text and re.search(r"^\s*listen_addresses\s*=", conf_text, re.M))
        if conf_dir:
            hba = posixpath.join(conf_dir, "pg_hba.conf")
            text = host.read_text(hba)
            if text is not None and remove_hba_block(text) != text:
                info = host.stat(hba)
                changes.append(WriteFile(hba, remove_hba_block(text).encode(), info.mode, owner=info.owner,
                                         group=info.group, backup=True, backup_dir=cfg.paths.backup_dir))
        return changes, restart

    def _postgres_server(self, ctx: Context, cluster, changed: bool, restart: bool) -> list[Change]:
        host, cfg = ctx.host, ctx.config
        changes: list[Change] = []
        up = psql(host, cfg, "SELECT 1", check=False).ok if host.which("psql") else False
        if changed:
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
        """No file reset removed is still there with k8s-sql's content.

        Raises:
            K8sSqlError: one is (names it).
        """
        for path, digest in self._removed:
            data = ctx.host.read_bytes(path)
            if data is not None and sha256(data) == digest:
                raise K8sSqlError("still there after reset", where=path, hint="remove it by hand")


@dataclass
class DropState(Change):
    """Remove the record (:mod:`k8s_sql.state`) once everything it lists is gone."""

    replay_in_dry_run = True

    state: State

    def describe(self) -> str:
        return f"remove {self.state.path} (the record of what k8s-sql created: all of it is gone)"

    def apply(self, ctx: Context) -> None:
        self.state.drop(ctx.host)
