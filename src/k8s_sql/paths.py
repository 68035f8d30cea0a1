"""Paths k8s-sql must never own: the system's directories.

One list, used twice: ``config validate`` rejects a ``paths.*`` field that names one, and
``reset`` never removes one even if a state file or a configuration says otherwise
(defense in depth). A system path is

- a directory of the Filesystem Hierarchy Standard (``/etc``, ``/usr``, ``/var/lib``, …)
  or one that other software on a Kubernetes node owns (``/etc/kubernetes``,
  ``/etc/kubernetes/pki``, ``/var/lib/kubelet``, ``/etc/postgresql``, …),
- any parent of one (``/``), so removing a path never takes a system directory with it,
- a home directory: a direct child of ``/home``, and ``/root``,
- anything that is not an absolute path (``""``, ``etc``): there is no telling what it
  would resolve to.

k8s-sql's own directories (``/etc/k8s-sql``, ``/var/lib/k8s-sql``,
``/etc/kubernetes/pki/k8s-sql``) are not system paths.
"""

from __future__ import annotations

import posixpath

_LISTED = (
    # FHS top level
    "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/libx32", "/lost+found", "/media", "/mnt",
    "/opt", "/proc", "/root", "/run", "/sbin", "/snap", "/srv", "/sys", "/tmp", "/usr", "/var",
    "/usr/bin", "/usr/sbin", "/usr/lib", "/usr/lib32", "/usr/lib64", "/usr/libexec", "/usr/include", "/usr/share",
    "/usr/src", "/usr/local", "/usr/local/bin", "/usr/local/sbin", "/usr/local/lib", "/usr/local/share",
    "/usr/local/etc",
    "/var/lib", "/var/log", "/var/run", "/var/tmp", "/var/cache", "/var/spool", "/var/backups", "/var/mail",
    "/var/opt", "/var/local", "/var/lock",
    # what the system and the packages a Kubernetes node runs keep their configuration and data in
    "/etc/default", "/etc/ssh", "/etc/ssl", "/etc/ssl/certs", "/etc/ssl/private", "/etc/systemd", "/etc/systemd/system",
    "/etc/apt", "/etc/apt/sources.list.d", "/etc/apt/keyrings", "/etc/apt/trusted.gpg.d", "/etc/modules-load.d",
    "/etc/sysctl.d", "/etc/containerd", "/etc/crio", "/etc/containers", "/etc/cni", "/etc/cni/net.d",
    "/etc/kubernetes", "/etc/kubernetes/pki", "/etc/kubernetes/manifests", "/etc/postgresql", "/etc/postgresql-common",
    "/var/lib/kubelet", "/var/lib/etcd", "/var/lib/postgresql", "/var/lib/containerd", "/var/lib/containers",
    "/var/lib/cni", "/var/lib/dpkg", "/var/lib/apt", "/var/log/pods", "/var/log/containers",
    "/run/postgresql", "/var/run/postgresql", "/opt/cni", "/opt/cni/bin", "/usr/libexec/kubernetes",
)

#: Directories whose direct children are users' home directories.
HOME_PARENTS = ("/home",)


def _with_parents(paths: tuple[str, ...]) -> frozenset[str]:
    out = {"/"}
    for p in paths:
        while p != "/":
            out.add(p)
            p = posixpath.dirname(p)
    return frozenset(out)


#: Every listed system directory and all of its parents (normalised absolute paths).
SYSTEM_PATHS: frozenset[str] = _with_parents(_LISTED)


def normalize(path: str) -> str | None:
    """``path`` as a normalised absolute path (``//etc/./x/`` -> ``/etc/x``, ``..``
    resolved lexically, no symlinks followed), or ``None`` when it is not absolute."""
    if not isinstance(path, str) or not path.startswith("/"):
        return None
    p = posixpath.normpath(path)
    return "/" + p.lstrip("/")  # normpath keeps a leading "//"


def is_system_path(path: str) -> bool:
    """Whether ``path`` names a system directory k8s-sql must never own or remove (see the
    module doc). ``True`` for a relative or empty path as well.

    >>> is_system_path("/usr/"), is_system_path("/home/alice"), is_system_path("/etc/k8s-sql")
    (True, True, False)
    """
    p = normalize(path)
    if p is None:
        return True
    if p in SYSTEM_PATHS:
        return True
    return posixpath.dirname(p) in HOME_PARENTS


__all__ = ["SYSTEM_PATHS", "HOME_PARENTS", "normalize", "is_system_path"]
