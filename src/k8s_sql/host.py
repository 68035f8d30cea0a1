"""The machine a phase acts on.

Phases never call ``subprocess`` or ``open`` themselves: they talk to a :class:`Host`, so
the same phase runs on this machine (:class:`LocalHost`) or over SSH (``k8s_sql.remote``).
A :class:`DryRunHost` wraps either one and records writes instead of doing them, so the
phases after it plan against the files earlier phases *would* have written. A
:class:`ScratchHost` is a node's file tree in a directory (``--root``): files under it,
commands recorded rather than run.
"""

from __future__ import annotations

import grp
import os
import posixpath
import pwd
import shlex
import stat as stat_mod
import subprocess
import sys
import tempfile
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import PurePosixPath

from k8s_sql.errors import CommandError


@dataclass(frozen=True)
class Result:
    """Outcome of a command: exit status and captured output (text)."""

    returncode: int
    stdout: str = ""
    stderr: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0


@dataclass(frozen=True)
class FileInfo:
    """Mode bits (``0o600``), owner and group names, and size in bytes of a file."""

    mode: int
    owner: str
    group: str
    size: int


class Host(ABC):
    """A machine that phases read facts from and make changes on.

    Paths are absolute POSIX paths on that machine. Writes are atomic (temporary file plus
    rename) and never leave a half-written file behind.
    """

    name: str = "localhost"
    #: Whether commands act on a running system (``False`` for a :class:`ScratchHost`,
    #: which records them instead: what they would change cannot be verified there).
    live: bool = True

    @abstractmethod
    def run(
        self,
        argv: list[str],
        *,
        check: bool = True,
        input: str | None = None,
        user: str | None = None,
        env: dict[str, str] | None = None,
        stream: bool = False,
        timeout: float | None = None,
    ) -> Result:
        """Run ``argv`` (no shell) and return its :class:`Result`.

        ``user`` runs it as another account (``runuser``/``sudo -u``); ``stream`` copies
        its output to the terminal as it comes, prefixed with the host's name.

        Raises:
            CommandError: the binary is missing, it timed out (``timeout`` seconds) or,
                with ``check``, it exited non-zero.
        """

    @abstractmethod
    def read_bytes(self, path: str) -> bytes | None:
        """Content of ``path``, or ``None`` if it does not exist.

        Raises:
            CommandError: it exists but cannot be read.
        """

    @abstractmethod
    def write_bytes(
        self,
        path: str,
        data: bytes,
        *,
        mode: int = 0o644,
        owner: str | None = None,
        group: str | None = None,
        tmp_dir: str | None = None,
    ) -> None:
        """Atomically replace ``path`` with ``data`` with the given mode and owner.

        The temporary file is created in ``tmp_dir`` (same filesystem) or beside ``path``;
        parent directories are created (0755) when missing.
        """

    @abstractmethod
    def stat(self, path: str) -> FileInfo | None:
        """Mode, owner and size of ``path``, or ``None`` if it does not exist."""

    @abstractmethod
    def remove(self, path: str) -> None:
        """Delete a file (or a symbolic link, not what it points to); a missing file is not
        an error.

        Raises:
            CommandError: ``path`` is a directory (never removed with its content: see
                :meth:`rmdir`), or it cannot be removed.
        """

    @abstractmethod
    def rmdir(self, path: str) -> None:
        """Delete an empty directory; a missing one is not an error.

        Raises:
            CommandError: it is not empty, or not a directory.
        """

    @abstractmethod
    def is_dir(self, path: str) -> bool:
        """Whether ``path`` is a directory (a symbolic link to one is not)."""

    @abstractmethod
    def makedirs(self, path: str, mode: int = 0o755) -> None:
        """Create a directory and its parents; existing ones are left as they are."""

    @abstractmethod
    def listdir(self, path: str) -> list[str]:
        """Names in a directory, sorted; ``[]`` if it does not exist."""

    def exists(self, path: str) -> bool:
        return self.stat(path) is not None

    def read_text(self, path: str) -> str | None:
        data = self.read_bytes(path)
        return None if data is None else data.decode()

    def write_text(self, path: str, text: str, **kwargs) -> None:
        self.write_bytes(path, text.encode(), **kwargs)

    def which(self, binary: str) -> str | None:
        """Absolute path of ``binary`` on the host's PATH (plus the sbin dirs), or ``None``."""
        res = self.run(["sh", "-c", f"PATH=$PATH:/usr/sbin:/sbin command -v {shlex.quote(binary)}"],
                       check=False)
        out = res.stdout.strip()
        return out or None

    def is_root(self) -> bool:
        return self.run(["id", "-u"]).stdout.strip() == "0"

    def readable_by(self, path: str, user: str) -> bool:
        """Whether OS user ``user`` can read ``path`` (``test -r`` as that user: the file's
        mode and every directory above it count)."""
        return self.run(["test", "-r", path], user=user, check=False).ok

    def chown(self, path: str, owner: str, group: str | None = None) -> None:
        """Give ``path`` (not what it contains) to ``owner`` and ``group`` (names or ids).

        Raises:
            CommandError: no such user or group, or ``path`` is missing.
        """
        self.run(["chown", "-h", f"{owner}:{group}" if group else owner, "--", path])


def _check(argv: list[str], res: Result, host: str) -> Result:
    if res.returncode != 0:
        detail = (res.stderr or res.stdout).strip().splitlines()[-5:]
        raise CommandError(
            f"`{shlex.join(argv)}` exited with {res.returncode}" + (": " + " / ".join(detail) if detail else ""),
            where=host,
        )
    return res


def _uid(owner: str) -> int:
    """A user name or a numeric uid (``"65532"``, for a container's user) -> uid."""
    return int(owner) if owner.isdigit() else pwd.getpwnam(owner).pw_uid


def _gid(group: str) -> int:
    return int(group) if group.isdigit() else grp.getgrnam(group).gr_gid


def _makedirs(path: str, mode: int) -> None:
    """``os.makedirs`` whose new directories get exactly ``mode``, whatever the umask: under
    ``umask 077`` a pki directory made 0700 would keep the shim (uid 65532) and postgres out."""
    missing = []
    while path and not os.path.isdir(path):
        missing.append(path)
        path = os.path.dirname(path)
    for d in reversed(missing):
        try:
            os.mkdir(d)
        except FileExistsError:
            continue
        os.chmod(d, mode)


class LocalHost(Host):
    """This machine. ``root`` (default ``/``) prefixes every file path, for tests that
    act on a scratch directory in place of the real root; commands are not affected."""

    def __init__(self, root: str = "/"):
        self.root = root
        self.name = "localhost"

    def _p(self, path: str) -> str:
        if self.root in ("", "/"):
            return path
        return os.path.join(self.root, str(PurePosixPath(path)).lstrip("/"))

    def run(self, argv, *, check=True, input=None, user=None, env=None, stream=False, timeout=None):
        argv = [str(a) for a in argv]
        full = argv
        if user is not None and user != pwd.getpwuid(os.getuid()).pw_name:
            full = ["runuser", "-u", user, "--", *argv]
        run_env = None
        if env:
            run_env = {**os.environ, **env}
        try:
            if stream:
                proc = subprocess.Popen(full, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=run_env)
                if input is not None:
                    proc.stdin.write(input)
                    proc.stdin.close()
                lines = []
                deadline = time.monotonic() + timeout if timeout else None
                for line in proc.stdout:
                    lines.append(line)
                    sys.stdout.write(f"[{self.name}] {line}")
                    sys.stdout.flush()
                    if deadline and time.monotonic() > deadline:
                        proc.kill()
                        raise subprocess.TimeoutExpired(full, timeout)
                res = Result(proc.wait(), "".join(lines), "")
            else:
                cp = subprocess.run(full, input=input, capture_output=True, text=True, env=run_env,
                                    timeout=timeout)
                res = Result(cp.returncode, cp.stdout, cp.stderr)
        except FileNotFoundError:
            raise CommandError(f"`{argv[0]}` is not installed", where=self.name,
                               hint=f"install the package that provides {argv[0]}") from None
        except subprocess.TimeoutExpired:
            raise CommandError(f"`{shlex.join(argv)}` did not finish within {timeout} s", where=self.name) from None
        return _check(argv, res, self.name) if check else res

    def read_bytes(self, path):
        try:
            with open(self._p(path), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise CommandError(f"cannot read {path}: {e.strerror}", where=self.name,
                               hint="check the file's permissions; k8s-sql init runs as root") from None

    def write_bytes(self, path, data, *, mode=0o644, owner=None, group=None, tmp_dir=None):
        target = self._p(path)
        parent = os.path.dirname(target)
        _makedirs(parent, 0o755)
        tdir = self._p(tmp_dir) if tmp_dir else parent
        _makedirs(tdir, 0o700)
        fd, tmp = tempfile.mkstemp(prefix=".k8s-sql-", dir=tdir)
        try:
            os.fchmod(fd, mode)
            if owner or group:
                uid = _uid(owner) if owner else -1
                gid = _gid(group) if group else -1
                os.fchown(fd, uid, gid)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def stat(self, path):
        try:
            st = os.stat(self._p(path))
        except FileNotFoundError:
            return None
        try:
            owner = pwd.getpwuid(st.st_uid).pw_name
        except KeyError:
            owner = str(st.st_uid)
        try:
            group = grp.getgrgid(st.st_gid).gr_name
        except KeyError:
            group = str(st.st_gid)
        return FileInfo(st.st_mode & 0o7777, owner, group, st.st_size)

    def remove(self, path):
        p = self._p(path)
        if self.is_dir(path):
            raise CommandError(f"will not remove {path}: it is a directory", where=self.name,
                               hint="k8s-sql removes only files it wrote, and directories only when empty")
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise CommandError(f"cannot remove {path}: {e.strerror}", where=self.name) from None

    def rmdir(self, path):
        try:
            os.rmdir(self._p(path))
        except FileNotFoundError:
            pass
        except OSError as e:
            raise CommandError(f"cannot remove the directory {path}: {e.strerror}", where=self.name) from None

    def is_dir(self, path):
        try:
            return stat_mod.S_ISDIR(os.lstat(self._p(path)).st_mode)
        except OSError:
            return False

    def makedirs(self, path, mode=0o755):
        _makedirs(self._p(path), mode)

    def listdir(self, path):
        try:
            return sorted(os.listdir(self._p(path)))
        except FileNotFoundError:
            return []

    def chown(self, path, owner, group=None):
        try:
            os.lchown(self._p(path), _uid(owner), _gid(group) if group else -1)
        except (OSError, KeyError) as e:
            raise CommandError(f"cannot give {path} to {owner}{':' + group if group else ''}: {e}",
                               where=self.name) from None


class ScratchHost(LocalHost):
    """A node's file tree under ``root`` instead of a running system (``k8s-sql init phase
    prereqs --root DIR``: image builds, tests).

    Files are read and written under ``root`` as with :class:`LocalHost`. Commands would act
    on this machine, not on the tree, so the host answers the queries phases make about
    what is installed from the tree itself, and runs nothing else:

    - ``which``: an executable in the tree's ``/usr/local/sbin``, ``/usr/local/bin``,
      ``/usr/sbin``, ``/usr/bin``, ``/sbin`` or ``/bin``;
    - ``dpkg-query``: run with ``--admindir=<root>/var/lib/dpkg`` (the tree's packages);
    - ``systemctl is-enabled UNIT``: the tree has
      ``/etc/systemd/system/multi-user.target.wants/UNIT.service``; ``systemctl is-active``
      answers the same (an enabled unit starts when the tree boots);
    - any other command is not run: it is recorded in :attr:`skipped`, printed as
      ``skipped under --root: <command>``, and returns success with no output.

    :attr:`live` is ``False``: nothing those commands change can be checked afterwards.
    """

    live = False
    BIN_DIRS = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
    WANTS_DIR = "/etc/systemd/system/multi-user.target.wants"

    def __init__(self, root: str):
        super().__init__(root=root)
        self.skipped: list[list[str]] = []

    def run(self, argv, *, check=True, input=None, user=None, env=None, stream=False, timeout=None):
        argv = [str(a) for a in argv]
        if argv and argv[0] == "dpkg-query":
            admindir = os.path.join(self.root, "var/lib/dpkg")
            return super().run([argv[0], f"--admindir={admindir}", *argv[1:]], check=check, input=input,
                               env=env, timeout=timeout)
        if argv[:1] == ["systemctl"] and len(argv) >= 3 and argv[1] in ("is-enabled", "is-active"):
            unit = argv[-1] if "." in argv[-1] else argv[-1] + ".service"  # dbus.socket keeps its suffix
            res = Result(0 if self.exists(posixpath.join(self.WANTS_DIR, unit)) else 1)
            return _check(argv, res, self.name) if check else res
        self.skipped.append(argv)
        sys.stdout.write(f"    skipped under --root: {shlex.join(argv)}\n")
        sys.stdout.flush()
        return Result(0)

    def which(self, binary):
        for d in self.BIN_DIRS:
            path = posixpath.join(d, binary)
            if os.access(self._p(path), os.X_OK) and not os.path.isdir(self._p(path)):
                return path
        return None

    def is_root(self):
        return os.geteuid() == 0  # the tree's files are written by this process

    def readable_by(self, path, user):
        return self.exists(path)


class DryRunHost(Host):
    """Wraps a host for ``--dry-run``: reads and commands go to the real host (phases
    only run read-only commands while planning), writes and removals are kept in memory
    so that later phases plan against them."""

    def __init__(self, inner: Host):
        self.inner = inner
        self.name = inner.name
        self.live = inner.live
        self.files: dict[str, tuple[bytes, FileInfo] | None] = {}

    def run(self, argv, **kwargs):
        return self.inner.run(argv, **kwargs)

    def read_bytes(self, path):
        if path in self.files:
            entry = self.files[path]
            return None if entry is None else entry[0]
        return self.inner.read_bytes(path)

    def write_bytes(self, path, data, *, mode=0o644, owner=None, group=None, tmp_dir=None):
        self.files[path] = (data, FileInfo(mode, owner or "root", group or "root", len(data)))

    def stat(self, path):
        if path in self.files:
            entry = self.files[path]
            return None if entry is None else entry[1]
        return self.inner.stat(path)

    def remove(self, path):
        if self.is_dir(path):
            raise CommandError(f"will not remove {path}: it is a directory", where=self.name,
                               hint="k8s-sql removes only files it wrote, and directories only when empty")
        self.files[path] = None

    def rmdir(self, path):
        if self.listdir(path):
            raise CommandError(f"cannot remove the directory {path}: Directory not empty", where=self.name)
        self.files[path] = None

    def is_dir(self, path):
        return path not in self.files and self.inner.is_dir(path)

    def makedirs(self, path, mode=0o755):
        pass

    def chown(self, path, owner, group=None):
        pass

    def listdir(self, path):
        names = set(self.inner.listdir(path))
        prefix = path.rstrip("/") + "/"
        for p, entry in self.files.items():
            if p.startswith(prefix) and "/" not in p[len(prefix):]:
                if entry is None:
                    names.discard(p[len(prefix):])
                else:
                    names.add(p[len(prefix):])
        return sorted(names)

    def which(self, binary):
        return self.inner.which(binary)

    def is_root(self):
        return self.inner.is_root()

    def readable_by(self, path, user):
        """For a file written in this dry run: its planned owner and mode, and the nearest
        existing directory above it searchable by ``user`` on the real host (missing
        directories are created 0755). Otherwise the real host answers."""
        if path not in self.files:
            return self.inner.readable_by(path, user)
        entry = self.files[path]
        if entry is None:
            return False
        info = entry[1]
        if not (info.mode & 0o004 or (info.owner == user and info.mode & 0o400)):
            return False
        parent = posixpath.dirname(path)
        while parent not in ("", "/") and self.stat(parent) is None:
            parent = posixpath.dirname(parent)
        return self.inner.run(["test", "-x", parent or "/"], user=user, check=False).ok
