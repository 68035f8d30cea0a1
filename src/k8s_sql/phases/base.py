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

from k8s_sql.config import Cluster
from k8s_sql.host import Host


@dataclass
class Context:
    """What a phase gets: the host to act on, the configuration, the console, and whether
    this is a dry run (then ``host`` is a :class:`~k8s_sql.host.DryRunHost`)."""

    host: Host
    config: Cluster
    console: Console = field(default_factory=Console)
    dry_run: bool = False
    #: Free-form facts a phase hands to later ones (e.g. the detected CRI socket).
    facts: dict = field(default_factory=dict)


class Change(ABC):
    """One step of a plan."""

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
    """

    path: str
    content: bytes
    mode: int = 0o644
    owner: str | None = None
    group: str | None = None
    secret: bool = False
    backup: bool = False
    backup_dir: str | None = None
    tmp_dir: str | None = None

    def describe(self) -> str:
        owner = f" {self.owner}:{self.group or self.owner}" if self.owner else ""
        return f"write {self.path} ({self.mode:04o}{owner})"

    def preview(self, ctx: Context) -> str:
        if self.secret:
            return f"(secret, {len(self.content)} bytes, not shown)"
        old = ctx.host.read_bytes(self.path)
        return unified_diff(self.path, old, self.content)

    def apply(self, ctx: Context) -> None:
        host = ctx.host
        if self.backup:
            old = host.read_bytes(self.path)
            if old is not None and old != self.content:
                backup_path(host, self.path, old, self.backup_dir)
        host.write_bytes(self.path, self.content, mode=self.mode, owner=self.owner, group=self.group,
                         tmp_dir=self.tmp_dir)


@dataclass
class RemoveFile(Change):
    path: str

    def describe(self) -> str:
        return f"remove {self.path}"

    def apply(self, ctx: Context) -> None:
        ctx.host.remove(self.path)


@dataclass
class Action(Change):
    """Any other step (run a command, an SQL statement): a description and a function."""

    description: str
    fn: Callable[[Context], None]
    detail: str = ""

    def describe(self) -> str:
        return self.description

    def preview(self, ctx: Context) -> str:
        return self.detail

    def apply(self, ctx: Context) -> None:
        self.fn(ctx)


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
