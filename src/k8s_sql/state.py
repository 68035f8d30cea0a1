"""The record of what k8s-sql created on a node, so that ``reset`` removes that and nothing else.

The record is a JSON file (``paths.stateFile``, by default ``/var/lib/k8s-sql/state.json``,
mode 0600, written atomically) on the node::

    {"apiVersion": "k8s-sql.io/v1alpha1", "kind": "State", "legacy": false,
     "stateDirs": ["/var/lib/k8s-sql"],
     "entries": [{"path": "/etc/k8s-sql", "kind": "dir"},
                 {"path": "/etc/k8s-sql/kubeadm.yaml", "kind": "file", "sha256": "…"}]}

- ``entries``: every file k8s-sql *created* (with the SHA-256 of the content it last wrote
  there) and every directory it created on the way (a parent that did not exist). A file
  that existed before (``pg_hba.conf``, ``/etc/fstab``, a file it backed up and replaced)
  is never an entry; neither is a system path (:func:`k8s_sql.paths.is_system_path`).
  Backups are not entries either: reset keeps them.
- ``stateDirs``: the directories writing the record itself created (removed after it, when
  empty).
- ``legacy``: when the record was started, k8s-sql's files were already in place — the
  node was set up by a k8s-sql that kept no record; reset then also looks at those files
  (see :mod:`k8s_sql.phases.reset`).

Recording happens in one place, :meth:`k8s_sql.phases.base.WriteFile.apply` (and removal
in ``RemoveFile``/``RemoveDir``), for a :class:`~k8s_sql.phases.base.Context` whose
``state`` is a :class:`State`; ``None`` records nothing (``render``). Writes go through the
context's host, so a dry run keeps the record in the :class:`~k8s_sql.host.DryRunHost`'s
memory like every other file.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from k8s_sql.errors import K8sSqlError
from k8s_sql.paths import is_system_path, normalize

if TYPE_CHECKING:
    from k8s_sql.config import Cluster
    from k8s_sql.host import Host

#: Where the record is kept unless ``paths.stateFile`` says otherwise.
STATE_FILE = "/var/lib/k8s-sql/state.json"
API_VERSION = "k8s-sql.io/v1alpha1"
KIND = "State"
FILE, DIR = "file", "dir"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def sha256(data: bytes) -> str:
    """Hex SHA-256 of ``data`` (64 lower-case characters)."""
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Entry:
    """One thing k8s-sql created: ``path`` (absolute, normalised), ``kind`` (``file`` or
    ``dir``) and, for a file, ``sha256`` of the content k8s-sql wrote."""

    path: str
    kind: str
    sha256: str = ""

    def to_json(self) -> dict:
        out = {"path": self.path, "kind": self.kind}
        if self.kind == FILE:
            out["sha256"] = self.sha256
        return out


def missing_dirs(host: Host, path: str) -> list[str]:
    """The directories above ``path`` that do not exist on ``host``, outermost first (what
    writing ``path`` would create)."""
    out: list[str] = []
    d = posixpath.dirname(path)
    while d not in ("", "/") and not host.exists(d):
        out.append(d)
        d = posixpath.dirname(d)
    return out[::-1]


class State:
    """The record at ``path`` on a host (loaded on first use, then kept in memory; every
    change is written back at once).

    ``markers``: files only k8s-sql writes (its kubeadm configuration, the datastore CA…);
    if one exists when the record is started, the record is marked ``legacy``.
    """

    def __init__(self, path: str = STATE_FILE, markers: Sequence[str] = ()):
        self.path = path
        self.markers = tuple(markers)
        self._entries: dict[str, Entry] | None = None
        self._state_dirs: list[str] = []
        self._legacy = False
        self._on_disk = False

    @classmethod
    def for_config(cls, cfg: Cluster) -> State:
        """The record at ``cfg.paths.state_file``, with k8s-sql's own files as markers."""
        from k8s_sql.kubeadm.sidecar import PATCH_FILE
        from k8s_sql.pki import files

        p = cfg.paths
        return cls(p.state_file, (p.kubeadm_config, posixpath.join(p.patches_dir, PATCH_FILE),
                                  files.path(p.pki_dir, files.CA_CERT), p.postgres_clients))

    # reading

    def load(self, host: Host) -> None:
        """Read the record from ``host`` (once; later calls do nothing).

        Raises:
            K8sSqlError: the file is not a record k8s-sql wrote (bad JSON, wrong shape).
        """
        if self._entries is not None:
            return
        data = host.read_bytes(self.path)
        if data is None:
            self._entries, self._state_dirs, self._on_disk = {}, [], False
            self._legacy = any(host.exists(m) for m in self.markers)
            return
        self._entries, self._state_dirs, self._legacy = self._parse(data)
        self._on_disk = True

    def _parse(self, data: bytes) -> tuple[dict[str, Entry], list[str], bool]:
        def bad(what: str) -> K8sSqlError:
            return K8sSqlError(f"the record of what k8s-sql created is damaged: {what}", where=self.path,
                               hint="restore it from a backup; if it is lost, move it away: reset then removes only "
                                    "k8s-sql's known files that are still k8s-sql's (as on a node set up by an older "
                                    "k8s-sql)")

        try:
            doc = json.loads(data.decode())
        except (UnicodeDecodeError, ValueError) as e:
            raise bad(f"not JSON ({e})") from None
        if not isinstance(doc, dict) or doc.get("apiVersion") != API_VERSION or doc.get("kind") != KIND:
            raise bad(f"expected apiVersion {API_VERSION}, kind {KIND}")
        entries: dict[str, Entry] = {}
        raw = doc.get("entries", [])
        if not isinstance(raw, list):
            raise bad("entries is not a list")
        for n, item in enumerate(raw):
            if not isinstance(item, dict):
                raise bad(f"entries[{n}] is not a mapping")
            path, kind, digest = item.get("path"), item.get("kind"), item.get("sha256", "")
            if not isinstance(path, str) or normalize(path) != path:
                raise bad(f"entries[{n}].path {path!r} is not a normalised absolute path")
            if kind not in (FILE, DIR):
                raise bad(f"entries[{n}].kind {kind!r} is neither {FILE} nor {DIR}")
            if kind == FILE and not (isinstance(digest, str) and _SHA256.match(digest)):
                raise bad(f"entries[{n}].sha256 is not a SHA-256 in hex")
            entries[path] = Entry(path, kind, digest if kind == FILE else "")
        dirs = doc.get("stateDirs", [])
        if not isinstance(dirs, list) or not all(isinstance(d, str) and normalize(d) == d for d in dirs):
            raise bad("stateDirs is not a list of normalised absolute paths")
        return entries, list(dirs), bool(doc.get("legacy", False))

    def entries(self, host: Host) -> list[Entry]:
        """Every entry, sorted by path."""
        self.load(host)
        return [self._entries[p] for p in sorted(self._entries)]

    def get(self, host: Host, path: str) -> Entry | None:
        self.load(host)
        return self._entries.get(path)

    def exists(self, host: Host) -> bool:
        """Whether the record is on the host (``False`` on a node no k8s-sql recorded)."""
        self.load(host)
        return self._on_disk

    def legacy(self, host: Host) -> bool:
        """Whether k8s-sql's files were on the node before the record was started."""
        self.load(host)
        return self._legacy

    def state_dirs(self, host: Host) -> list[str]:
        self.load(host)
        return list(self._state_dirs)

    # changing

    def record_write(self, host: Host, path: str, content: bytes, *, existed: bool, new_dirs: Sequence[str]) -> None:
        """Note that ``content`` was written to ``path``: a new entry when the file did not
        exist before (``existed``), a new checksum when it is already an entry, nothing for
        a file k8s-sql only modified. ``new_dirs``: directories the write created (those
        that exist now become entries; system paths never do). Saves when anything changed.
        """
        self.load(host)
        before = dict(self._entries)
        self._add_dirs(host, new_dirs)
        p = normalize(path)
        if p and not is_system_path(p):
            known = self._entries.get(p)
            if (not existed and known is None) or (known is not None and known.kind == FILE):
                self._entries[p] = Entry(p, FILE, sha256(content))
        if self._entries != before:
            self.save(host)

    def record_dirs(self, host: Host, new_dirs: Sequence[str]) -> None:
        """Note the directories in ``new_dirs`` that exist now (a write that failed after
        creating them); saves when anything changed."""
        self.load(host)
        before = dict(self._entries)
        self._add_dirs(host, new_dirs)
        if self._entries != before:
            self.save(host)

    def _add_dirs(self, host: Host, dirs: Sequence[str]) -> None:
        for d in dirs:
            d = normalize(d)
            if d and not is_system_path(d) and host.is_dir(d):
                self._entries.setdefault(d, Entry(d, DIR))

    def forget(self, host: Host, path: str) -> None:
        """Drop ``path``'s entry (it was removed); saves when there was one."""
        self.load(host)
        if self._entries.pop(normalize(path) or path, None) is not None:
            self.save(host)

    def keep_only(self, host: Host, paths: Sequence[str]) -> None:
        """Drop every entry not in ``paths`` and save (reset: what it kept)."""
        self.load(host)
        wanted = set(paths)
        self._entries = {p: e for p, e in self._entries.items() if p in wanted}
        self.save(host)

    def save(self, host: Host) -> None:
        """Write the record atomically (0600). The first write notes the directories it
        creates for itself in ``stateDirs``."""
        self.load(host)
        if not self._on_disk:
            self._state_dirs = [d for d in missing_dirs(host, self.path) if not is_system_path(d)]
        doc = {"apiVersion": API_VERSION, "kind": KIND, "legacy": self._legacy, "stateDirs": self._state_dirs,
               "entries": [e.to_json() for e in self.entries(host)]}
        host.write_bytes(self.path, (json.dumps(doc, indent=1) + "\n").encode(), mode=0o600)
        self._on_disk = True

    def drop(self, host: Host) -> None:
        """Remove the record file (reset, once everything it recorded is gone); the
        directories in ``stateDirs`` are left to the caller."""
        host.remove(self.path)
        self._entries, self._on_disk, self._legacy = {}, False, False


__all__ = ["STATE_FILE", "Entry", "State", "missing_dirs", "sha256", "FILE", "DIR"]
