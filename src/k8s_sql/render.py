"""``k8s-sql render --out DIR``: every file init would generate, written into one directory.

The pki and kubeadm-config phases plan against a :class:`RenderHost` — this machine's
file system seen through DIR — and only the contents of their file writes are kept;
nothing they would run (reloads, SQL) happens, and nothing is recorded as installed on
this node. PostgreSQL has no fixed location here, so its snippets go to
``DIR/postgresql/``: the conf.d include, the pg_hba block and the SQL that creates the
role and its database. Running render again reuses the CA and every certificate still
valid in DIR, so it rewrites nothing that is up to date.

Safety (nothing outside DIR is ever written):

* DIR must not be empty (``''``), ``/`` or a system directory (:mod:`k8s_sql.paths`),
  nor be, lie inside or contain a live path: the configured ``paths.*`` and
  :data:`LIVE_DIRS` (checked after resolving symlinks).
* Every file is first written into a temporary directory on DIR's file system (inside
  DIR when it exists, beside it when not) and only moved into place when all of them
  were generated, so a failure leaves DIR as it was and no temporary files behind.
* Every target is resolved under DIR; a symlink that leads out of DIR, a file where a
  directory is needed or a directory where a file goes is refused before anything moves.
* A DIR that already holds files is refused unless ``force`` (or nothing would change);
  with ``force``, every file it replaces is first copied to
  ``DIR/.k8s-sql-backup/<YYYYmmdd-HHMMSS>/``.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from k8s_sql.config import Cluster, client_network
from k8s_sql.errors import K8sSqlError
from k8s_sql.host import FileInfo, LocalHost
from k8s_sql.kubeadm.node import advertise_address
from k8s_sql.paths import is_system_path
from k8s_sql.pg import conf as pgconf
from k8s_sql.pg import hba, roles
from k8s_sql.phases.base import Context, WriteFile, file_change
from k8s_sql.phases.kubeadm_config import KubeadmConfig
from k8s_sql.phases.pki import Pki

#: where the PostgreSQL snippets go inside the output directory
PG_DIR = "/postgresql"
#: where replaced files are copied to inside the output directory (``--force``)
BACKUP_DIR = ".k8s-sql-backup"
#: Directories of a live node that DIR may not be, be inside, or contain, besides the
#: configured ``paths.*``: kubeadm's, k8s-sql's, PostgreSQL's (Debian), etcd's and the kubelet's.
LIVE_DIRS = ("/etc/kubernetes", "/etc/k8s-sql", "/etc/postgresql", "/var/lib/k8s-sql", "/var/lib/postgresql",
             "/var/lib/etcd", "/var/lib/kubelet")
_HINT_OUT = "choose a new or empty directory of your own for --out, e.g. ./generated"


@dataclass
class RenderResult:
    """What :func:`render` did: ``out`` (the resolved DIR), ``written`` as ``(path inside
    DIR, phase)`` (empty when everything was up to date), ``replaced``: the paths among
    them that held other content, and ``backup``: the directory those were copied to."""

    out: str
    written: list[tuple[str, str]] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    backup: str = ""


def _within(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def live_paths(cfg: Cluster) -> dict[str, str]:
    """Resolved live path -> where it comes from (``paths.pkiDir``, ``LIVE_DIRS``...).
    Relative and root (``/``) entries are left out: ``config validate`` refuses those."""
    out: dict[str, str] = {}
    for name, value in vars(cfg.paths).items():
        if not isinstance(value, str) or not value.startswith("/"):
            continue
        path = value if name.endswith("_dir") else posixpath.dirname(value)  # a file: its directory is live
        label = "paths." + name.split("_")[0] + "".join(w.title() for w in name.split("_")[1:])
        out.setdefault(os.path.realpath(path), label)
    for name in ("config_dir", "data_dir"):
        value = getattr(cfg.postgres, name, "")
        if isinstance(value, str) and value.startswith("/"):
            out.setdefault(os.path.realpath(value), f"postgres.{name.split('_')[0]}Dir")
    for path in LIVE_DIRS:
        out.setdefault(os.path.realpath(path), "a live directory of a Kubernetes node")
    return {p: label for p, label in out.items() if p != "/"}


def check_out(out: str, cfg: Cluster) -> str:
    """The resolved output directory, after refusing the values that would write into a
    live system: ``''``, ``/``, and any DIR that is, lies inside or contains a
    :func:`live_paths` entry (symlinks resolved).

    Raises:
        K8sSqlError: the value is refused (the CLI turns it into a usage error, exit 2).
    """
    if not out or not out.strip():
        raise K8sSqlError("an empty directory name: render would write into the current directory",
                          hint=_HINT_OUT)
    real = os.path.realpath(out)
    if real == "/":
        raise K8sSqlError(f"{out} is the root directory: render would write over the live files",
                          hint=_HINT_OUT)
    if is_system_path(real):
        shown = out if real == os.path.abspath(out) else f"{out} (resolves to {real})"
        raise K8sSqlError(f"{shown} is a system directory: render writes only into a directory of its own",
                          hint=_HINT_OUT)
    for live, label in live_paths(cfg).items():
        if _within(real, live) or _within(live, real):
            how = "is" if real == live else "is inside" if _within(real, live) else "contains"
            shown = out if real == os.path.abspath(out) else f"{out} (resolves to {real})"
            raise K8sSqlError(f"{shown} {how} {live} ({label}): render writes only where nothing live is",
                              hint=_HINT_OUT)
    return real


class RenderHost(LocalHost):
    """The file system seen through the output directory ``base`` (which may not exist
    yet), with every write going to a staging directory instead.

    Reads see the staged file if there is one, else the file in ``base`` — resolved
    with :meth:`target`, so a symlink out of ``base`` is refused even for reading. File
    owners are not applied (render runs as any user; modes are), so keys stay 0600 and
    owned by whoever renders. Commands run on this machine unchanged.
    """

    def __init__(self, base: str, stage: str):
        super().__init__(root=stage)
        self.base = base
        self.stage = stage

    def target(self, path: str) -> str:
        """The real path in ``base`` that ``path`` (absolute, as the phases name it) is
        written to, after checking every existing component.

        Raises:
            K8sSqlError: a component is a symlink leading out of DIR, a file where a
                directory is needed, or the target is a directory.
        """
        rel = PurePosixPath(str(PurePosixPath("/", path))).relative_to("/")
        parts = [p for p in rel.parts if p not in ("", ".")]
        if ".." in parts:
            raise K8sSqlError(f"{path}: a path with '..' cannot be rendered", where=self.base,
                              hint="use absolute paths without '..' in the configuration")
        cur = self.base
        for i, part in enumerate(parts):
            cur = os.path.join(cur, part)
            if os.path.islink(cur):
                resolved = os.path.realpath(cur)
                if not _within(resolved, self.base):
                    raise K8sSqlError(f"{cur} is a symlink to {resolved}, outside the output directory: "
                                      "render never writes through a symlink",
                                      hint="remove the symlink, or render into a new directory")
            if not os.path.lexists(cur):
                break
            if i < len(parts) - 1 and not os.path.isdir(cur):
                raise K8sSqlError(f"{cur} is a file where render needs a directory",
                                  hint="move it away, or render into a new directory")
        real = os.path.realpath(os.path.join(self.base, *parts))
        if not _within(real, self.base) or real == self.base:
            raise K8sSqlError(f"{os.path.join(self.base, *parts)} resolves to {real}, outside the output directory",
                              hint="remove the symlink, or render into a new directory")
        if os.path.isdir(real):
            raise K8sSqlError(f"{real} is a directory where render writes a file",
                              hint="move it away, or render into a new directory")
        return real

    def _staged(self, path: str) -> bool:
        return os.path.lexists(self._p(path))

    def read_bytes(self, path):
        if self._staged(path):
            return super().read_bytes(path)
        try:
            with open(self.target(path), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise K8sSqlError(f"cannot read {path}: {e.strerror}", where=self.base,
                              hint="check the permissions of the output directory") from None

    def write_bytes(self, path, data, *, mode=0o644, owner=None, group=None, tmp_dir=None):
        self.target(path)  # refuse now what could not be moved into place later
        super().write_bytes(path, data, mode=mode, tmp_dir=None)

    def stat(self, path):
        if self._staged(path):
            info = super().stat(path)
        else:
            try:
                st = os.stat(self.target(path))
            except FileNotFoundError:
                return None
            except OSError as e:
                raise K8sSqlError(f"cannot read {path}: {e.strerror}", where=self.base) from None
            info = FileInfo(st.st_mode & 0o7777, "", "", st.st_size)
        # owners are not applied here, so whatever owner a phase wants counts as met
        return FileInfo(info.mode, _AnyOwner(info.owner), _AnyOwner(info.group), info.size)

    def listdir(self, path):
        names = set(super().listdir(path))
        try:
            names.update(os.listdir(os.path.join(self.base, path.lstrip("/"))))
        except OSError:
            pass
        return sorted(names)

    def remove(self, path):
        raise K8sSqlError(f"render never removes files ({path})", where=self.base)

    def makedirs(self, path, mode=0o755):
        super().makedirs(path, mode)

    def staged_files(self) -> list[str]:
        """Every staged file as an absolute path inside DIR (``/etc/k8s-sql/kubeadm.yaml``)."""
        out = []
        for d, _, names in os.walk(self.stage):
            for n in names:
                out.append("/" + os.path.relpath(os.path.join(d, n), self.stage))
        return sorted(out)


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


def _stage(host: RenderHost, cfg: Cluster, console) -> dict[str, str]:
    """Plan the pki and kubeadm-config phases against ``host`` and stage their files;
    returns staged path -> phase name. Only the files are kept: a change is never applied
    (it might record or run something on this node)."""
    ctx = Context(host=host, config=cfg, console=console, dry_run=True)  # plans only; the writes are applied below
    staged: dict[str, str] = {}

    def write(path: str, content: bytes, mode: int, phase: str) -> None:
        host.write_bytes(path, content, mode=mode)
        staged[path] = phase

    for phase in (Pki(), KubeadmConfig()):
        try:
            changes = phase.plan(ctx)
        except (ValueError, OverflowError) as e:  # a validity that ends before it starts, or past year 9999
            raise K8sSqlError(f"cannot make the certificates: {e}", where="certificates (configuration)",
                              hint="certificates.validityDays and caValidityDays must be positive") from None
        for change in changes:
            if isinstance(change, WriteFile):
                write(change.path, change.content, change.mode, phase.name)
    address = advertise_address(host, cfg)[0]
    for name, text in pg_snippets(cfg, address).items():
        path = posixpath.join(PG_DIR, name)
        change = file_change(host, path, text.encode(), 0o644)
        if change:
            write(path, change.content, change.mode, "postgres")
    return staged


def _tempdir(parent: str, out: str) -> str:
    try:
        return tempfile.mkdtemp(prefix=".k8s-sql-render-", dir=parent)
    except OSError as e:
        raise K8sSqlError(f"cannot write into {parent}: {e.strerror}", where=out,
                          hint="choose a writable directory for --out") from None


def _nearest_existing(path: str, out: str) -> str:
    """The closest ancestor of ``path`` that exists; it must be a directory."""
    while not os.path.lexists(path):
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        raise K8sSqlError(f"{path} is not a directory", where=out, hint=_HINT_OUT)
    return path


def _dir_mode() -> int:
    """0777 less the umask: the mode ``mkdir`` would give DIR (the staging directory is 0700)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o777 & ~umask


def render(cfg: Cluster, out: str, console, *, force: bool = False) -> RenderResult:
    """Write every generated file under the directory ``out`` (see the module docstring
    for what is refused and how the files are moved into place).

    Returns:
        a :class:`RenderResult`; ``written`` is empty when ``out`` was up to date.

    Raises:
        K8sSqlError: ``out`` is refused (:func:`check_out`), is not a directory, holds
            files and ``force`` is not set, has a symlink out of it or a file in the way;
            the pki and kubeadm-config phases fail (e.g. a broken CA in ``out``); a
            directory is not writable.
    """
    real = check_out(out, cfg)
    if os.path.lexists(real) and not os.path.isdir(real):
        raise K8sSqlError(f"{out} is not a directory", hint=_HINT_OUT)
    exists = os.path.isdir(real)
    try:
        occupied = exists and bool(os.listdir(real))
    except OSError as e:
        raise K8sSqlError(f"cannot read {out}: {e.strerror}", hint=_HINT_OUT) from None
    stage = _tempdir(real if exists else _nearest_existing(os.path.dirname(real), out), out)
    try:
        host = RenderHost(real, stage)
        staged = _stage(host, cfg, console)
        result = RenderResult(real, [(p, staged[p]) for p in host.staged_files()])
        if not result.written:
            return result
        targets = {p: host.target(p) for p, _ in result.written}
        result.replaced = [p for p, t in targets.items() if os.path.lexists(t)]
        if occupied and not force:
            n, r = len(result.written), len(result.replaced)
            what = f"{r} of them replacing files there" if r else "none replacing a file"
            raise K8sSqlError(f"{out} already holds files; render would write {n} file{'s' * (n != 1)} ({what})",
                              hint="pass --force to write into it (every replaced file is first copied to "
                                   f"{posixpath.join(out, BACKUP_DIR)}/), or render into a new or empty directory")
        if not exists:
            os.makedirs(os.path.dirname(real), exist_ok=True)
            os.chmod(stage, _dir_mode())
            os.rename(stage, real)
            return result
        result.backup = _commit(host, real, stage, targets, result.replaced)
        return result
    except OSError as e:
        raise K8sSqlError(f"cannot write: {e.strerror}", where=getattr(e, "filename", None) or out,
                          hint="check that the output directory is writable; nothing was changed in it") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _commit(host: RenderHost, real: str, stage: str, targets: dict[str, str], replaced: list[str]) -> str:
    """Move the staged files into the existing DIR ``real``: the files to be replaced are
    copied to a backup directory first; on a failure every file already moved is put
    back (restored from its copy, or removed when it was new). Returns the backup
    directory (``""`` when nothing was replaced)."""
    backup = ""
    if replaced:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        backup_stage = os.path.join(stage, BACKUP_DIR, stamp)
        for p in replaced:
            dest = os.path.join(backup_stage, p.lstrip("/"))
            os.makedirs(os.path.dirname(dest), mode=0o700, exist_ok=True)
            shutil.copyfile(targets[p], dest)
            os.chmod(dest, 0o600)
        root = os.path.join(real, BACKUP_DIR)
        os.makedirs(root, mode=0o700, exist_ok=True)
        backup = os.path.join(root, stamp)
        n = 1
        while os.path.lexists(backup):
            n += 1
            backup = os.path.join(root, f"{stamp}.{n}")
        os.rename(backup_stage, backup)
    done: list[tuple[str, str]] = []  # (target, backup copy or "" for a new file)
    made: list[str] = []
    try:
        for p, t in targets.items():
            parent = os.path.dirname(t)
            missing = []
            while not os.path.isdir(parent):
                missing.append(parent)
                parent = os.path.dirname(parent)
            for d in reversed(missing):
                os.mkdir(d, 0o755)
                made.append(d)
            copy = os.path.join(backup, p.lstrip("/")) if p in replaced else ""
            os.replace(host._p(p), t)
            done.append((t, copy))
    except BaseException:
        for t, copy in reversed(done):
            if copy:
                shutil.copy2(copy, t)
            else:
                os.unlink(t)
        for d in reversed(made):
            os.rmdir(d)
        if backup:
            shutil.rmtree(backup, ignore_errors=True)
        raise
    return backup
