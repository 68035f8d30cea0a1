"""Phases and the changes they plan.

A phase looks at the host first and returns only the :class:`Change` objects needed to
reach the wanted state (pyinfra's idea: facts, then the difference). The runner in
:mod:`k8s_sql.phases.runner` applies them, or with ``--dry-run`` prints them (a diff for
every file) and changes nothing. A phase that plans no change is a no-op and says so.
"""

from __future__ import annotations

import difflib
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable

from rich.console import Console
from rich.markup import escape

from k8s_sql.config import Cluster
from k8s_sql.host import Host
from k8s_sql.state import State, missing_dirs, sha256


@dataclass(frozen=True)
class RunOptions:
    """What the command line asked of this run beyond the configuration file.

    ``phases``: names of the phases in this run, in order (``k8s-sql init``), or ``None``
    when a phase runs alone (``k8s-sql init phase NAME``, ``reset``, ``join``).
    ``invoking_user``: the account the admin kubeconfig is copied for (see
    :func:`k8s_sql.cli.common.invoking_user`). ``ignore_preflight_errors``: lower-case
    preflight check names whose errors become warnings, ``{"all"}`` for every one
    (kubeadm's ``--ignore-preflight-errors``).
    """

    phases: tuple[str, ...] | None = None
    invoking_user: str = "root"
    ignore_preflight_errors: frozenset[str] = frozenset()

    def runs(self, phase: str) -> bool:
        """Whether ``phase`` is part of this run (``False`` for a phase run alone)."""
        return self.phases is not None and phase in self.phases


@dataclass
class Context:
    """What a phase gets: the host to act on, the configuration, the console, the run's
    :class:`RunOptions`, and whether this is a dry run (then ``host`` is a
    :class:`~k8s_sql.host.DryRunHost`; only the runner looks at ``dry_run``: a phase plans
    the same changes either way, see :func:`pending`)."""

    host: Host
    config: Cluster
    console: Console = field(default_factory=Console)
    dry_run: bool = False
    options: RunOptions = field(default_factory=RunOptions)
    #: The record of what k8s-sql creates on ``host`` (:mod:`k8s_sql.state`): file changes
    #: note there what they create and remove. ``None`` records nothing (``render``, tests).
    state: State | None = None


class Change(ABC):
    """One step of a plan.

    ``replay_in_dry_run``: in a dry run the runner still applies the change, to the
    :class:`~k8s_sql.host.DryRunHost`, whose memory later phases plan against (file
    changes); other changes are only printed.
    """

    replay_in_dry_run: bool = False

    @abstractmethod
    def describe(self) -> str:
        """One line: what this change does (``write /etc/x (0600)``)."""

    def preview(self, ctx: Context) -> str:
        """Details shown by ``--dry-run`` (a unified diff for files); ``""`` for none."""
        return ""

    @abstractmethod
    def apply(self, ctx: Context) -> None:
        """Make the change on ``ctx.host``. Raises :class:`~k8s_sql.errors.K8sSqlError`."""


@dataclass
class WriteFile(Change):
    """Write ``content`` to ``path`` atomically with ``mode`` and owner.

    ``secret`` files (private keys) are never shown in a preview. ``backup`` keeps a
    timestamped copy of the previous content in ``backup_dir`` (or beside the file).
    ``note`` is appended to the description (e.g. a :func:`pending_note`).

    With ``ctx.state``, a file this creates (and each directory created for it) is recorded
    with the SHA-256 of ``content``; rewriting a recorded file updates its checksum; a file
    that existed before is modified, not created, and stays unrecorded.
    """

    replay_in_dry_run = True

    path: str
    content: bytes
    mode: int = 0o644
    owner: str | None = None
    group: str | None = None
    secret: bool = False
    backup: bool = False
    backup_dir: str | None = None
    tmp_dir: str | None = None
    note: str = ""

    def describe(self) -> str:
        owner = f" {self.owner}:{self.group or self.owner}" if self.owner else ""
        return f"write {self.path} ({self.mode:04o}{owner})" + (f" ({self.note})" if self.note else "")

    def preview(self, ctx: Context) -> str:
        if self.secret:
            return f"(secret, {len(self.content)} bytes, not shown)"
        old = ctx.host.read_bytes(self.path)
        return unified_diff(self.path, old, self.content)

    def apply(self, ctx: Context) -> None:
        host, state = ctx.host, ctx.state
        if state is not None:
            state.load(host)  # before the write: the record notes what was there
            existed = host.exists(self.path)
            new_dirs = missing_dirs(host, self.path) + (missing_dirs(host, self.tmp_dir + "/.") if self.tmp_dir else [])
        if self.backup:
            old = host.read_bytes(self.path)
            if old is not None and old != self.content:
                backup_path(host, self.path, old, self.backup_dir)
        try:
            host.write_bytes(self.path, self.content, mode=self.mode, owner=self.owner, group=self.group,
                             tmp_dir=self.tmp_dir)
        except BaseException:
            if state is not None:  # the directories made before the failure are still k8s-sql's
                state.record_dirs(host, new_dirs)
            raise
        if state is not None:
            state.record_write(host, self.path, self.content, existed=existed, new_dirs=new_dirs)


@dataclass
class RemoveFile(Change):
    """Remove the file ``path`` (never a directory: see :class:`RemoveDir`).

    ``sha256``: remove it only if its content still has this checksum (what k8s-sql wrote);
    otherwise keep it and say so. ``reason`` is appended to the description. The path's
    entry in ``ctx.state`` is dropped once the file is gone.
    """

    replay_in_dry_run = True

    path: str
    sha256: str | None = None
    reason: str = ""

    def describe(self) -> str:
        return f"remove {self.path}" + (f" ({self.reason})" if self.reason else "")

    def apply(self, ctx: Context) -> None:
        host = ctx.host
        if self.sha256 is not None:
            data = host.read_bytes(self.path)
            if data is not None and sha256(data) != self.sha256:
                ctx.console.print(f"    kept {self.path}: changed since k8s-sql wrote it", markup=False,
                                  highlight=False)
                return
        host.remove(self.path)
        if ctx.state is not None:
            ctx.state.forget(host, self.path)


@dataclass
class RemoveDir(Change):
    """Remove the directory ``path`` if it is empty (``rmdir``: never its content); a
    directory that is not empty by then is kept, with a note. Its entry in ``ctx.state``
    is dropped once it is gone."""

    replay_in_dry_run = True

    path: str
    reason: str = ""

    def describe(self) -> str:
        return f"remove the empty directory {self.path}" + (f" ({self.reason})" if self.reason else "")

    def apply(self, ctx: Context) -> None:
        host = ctx.host
        left = host.listdir(self.path)
        if left:
            ctx.console.print(f"    kept {self.path}: not empty ({', '.join(left[:5])}"
                              f"{', …' if len(left) > 5 else ''})", markup=False, highlight=False)
            return
        host.rmdir(self.path)
        if ctx.state is not None:
            ctx.state.forget(host, self.path)


@dataclass
class Action(Change):
    """Any other step (run a command, an SQL statement): a description and a function.

    ``argvs``: the commands the step runs on the host, as data (``[["apt-get", …], …]``;
    for a :func:`pending` step those its later plan runs), so that a plan can be checked
    for programs nothing installs (tests/test_plan_completeness.py)."""

    description: str
    fn: Callable[[Context], None]
    detail: str = ""
    argvs: list[list[str]] = field(default_factory=list)

    def describe(self) -> str:
        return self.description

    def preview(self, ctx: Context) -> str:
        return self.detail

    def apply(self, ctx: Context) -> None:
        self.fn(ctx)


def pending_note(after: str) -> str:
    """The uniform mark of a change whose precondition an earlier step establishes:
    ``pending: after <after>`` (``after``: a phase name and what it does, e.g. ``prereqs
    installs kubeadm``)."""
    return f"pending: after {after}"


def pending(description: str, after: str, plan: Callable[[Context], list[Change]], detail: str = "",
            argvs: list[list[str]] | None = None) -> Action:
    """A step that can only be planned once an earlier one has run (a package prereqs
    installs, a server a change above starts): described as ``<description> (pending:
    after <after>)``, in a dry run and a real run alike.

    Applying it plans the step then, with ``plan`` (which sees the host after the earlier
    step, and raises the phase's :class:`~k8s_sql.errors.K8sSqlError` when the fact is still
    missing), and applies the changes it returns, each printed like the runner does.
    """

    def apply(ctx: Context) -> None:
        for change in plan(ctx):
            ctx.console.print(f"    {escape(change.describe())}")
            change.apply(ctx)

    return Action(f"{description} ({pending_note(after)})", apply, detail=detail, argvs=list(argvs or []))


def file_change(host: Host, path: str, content: bytes, mode: int = 0o644, **kwargs) -> WriteFile | None:
    """A :class:`WriteFile` if ``path`` differs from ``content`` or its mode/owner differ;
    ``None`` when it is already right (the idempotence check every phase uses)."""
    info = host.stat(path)
    if info is not None and host.read_bytes(path) == content and info.mode == mode:
        owner, group = kwargs.get("owner"), kwargs.get("group")
        if (owner is None or info.owner == owner) and (group is None or info.group == group):
            return None
    return WriteFile(path, content, mode, **kwargs)


def unified_diff(path: str, old: bytes | None, new: bytes) -> str:
    """A unified diff of two file contents (``/dev/null`` for a new file)."""
    try:
        a = [] if old is None else old.decode().splitlines(keepends=True)
        b = new.decode().splitlines(keepends=True)
    except UnicodeDecodeError:
        return f"(binary, {len(new)} bytes)"
    return "".join(difflib.unified_diff(a, b, "/dev/null" if old is None else f"a{path}", f"b{path}"))


def backup_path(host: Host, path: str, content: bytes, backup_dir: str | None = None) -> str:
    """Save ``content`` as ``<backup_dir or dir>/<name>.<YYYYmmdd-HHMMSS>.bak`` (mode 0600);
    returns the backup's path."""
    import os.path

    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = os.path.basename(path)
    target = os.path.join(backup_dir or os.path.dirname(path), f"{name}.{stamp}.bak")
    host.write_bytes(target, content, mode=0o600)
    return target


class Phase(ABC):
    """A step of ``k8s-sql init``: ``name`` as typed on the command line
    (``k8s-sql init phase <name>``) and a one-line ``title``."""

    name: str = ""
    title: str = ""

    @abstractmethod
    def plan(self, ctx: Context) -> list[Change]:
        """Look at the host and return the changes still needed (``[]`` = up to date).

        Must not change anything: it may only read files and run read-only commands.
        """

    def verify(self, ctx: Context) -> None:
        """Check the result after the changes are applied (skipped in a dry run).

        Raises:
            K8sSqlError: the phase's goal is not reached.
        """
