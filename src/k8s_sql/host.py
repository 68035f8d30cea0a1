"""The machine a phase acts on.

Phases never call ``subprocess`` or ``open`` themselves: they talk to a :class:`Host`, so
the same phase runs on this machine (:class:`LocalHost`) or over SSH (``k8s_sql.remote``).
A :class:`DryRunHost` wraps either one and records writes instead of doing them, so the
phases after it plan against the files earlier phases *would* have written.
"""

from __future__ import annotations

import grp
import os
import pwd
import shlex
import shutil
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
        """Delete a file; a missing file is not an error."""

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
        os.makedirs(parent, mode=0o755, exist_ok=True)
        tdir = self._p(tmp_dir) if tmp_dir else parent
        os.makedirs(tdir, mode=0o700, exist_ok=True)
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
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p)
        else:
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass

    def makedirs(self, path, mode=0o755):
        os.makedirs(self._p(path), mode=mode, exist_ok=True)

    def listdir(self, path):
        try:
            return sorted(os.listdir(self._p(path)))
        except FileNotFoundError:
            return []


class DryRunHost(Host):
    """Wraps a host for ``--dry-run``: reads and commands go to the real host (phases
    only run read-only commands while planning), writes and removals are kept in memory
    so that later phases plan against them."""

    def __init__(self, inner: Host):
        self.inner = inner
        self.name = inner.name
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
        self.files[path] = None

    def makedirs(self, path, mode=0o755):
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
