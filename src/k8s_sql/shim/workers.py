"""How many processes ``k8s-sql shim serve --workers auto`` runs: one per CPU it may use.

The shim is CPU-bound in one Python process (bench/PROFILE.md), so each worker is worth
about one core, and a worker beyond the cores it may use only adds context switches. The
cores it may use are the CPU quota of its cgroup when there is one (a sidecar with a CPU
limit: cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``), rounded up,
never more than the CPUs of its affinity mask (``sched_getaffinity``).

Measured (``python3 -m bench.workers``, bench/results/2026-11-30-workers.md; 2 cores shared
with PostgreSQL and other work): put with 64 clients 484 / 1,060 / 1,040 req/s with 1 / 2 / 3
workers, txn-put 756 / 1,050 / 932, range 1,460 / 1,580 / 1,160; CPU time per put stays
~470 µs up to one worker per core and rises (558 µs) beyond. So: one worker per core, no more.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from k8s_sql.errors import K8sSqlError

#: Most workers (the --workers flag's bound).
MAX_WORKERS = 64


@dataclass(frozen=True)
class WorkerCount:
    """``workers`` processes and ``reason``, e.g. "cgroup v2 cpu.max quota 1.5 CPUs"."""
    workers: int
    reason: str


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _cgroup_dirs(root: str, mount: str, rel: str) -> list[str]:
    """The cgroup's directory under ``mount`` and its ancestors (a parent's quota limits too).

    In a container the path of /proc/self/cgroup is often the host's while the mount shows
    the container's own cgroup at its root, so the mount itself is always included.
    """
    base = os.path.join(root, mount.lstrip("/"))
    parts = [p for p in rel.split("/") if p]
    dirs = [os.path.join(base, *parts[:i]) for i in range(len(parts), 0, -1)]
    return [d for d in dirs if os.path.isdir(d)] + [base]


def cgroup_cpu_quota(root: str = "/") -> tuple[float, str] | None:
    """The smallest CPU quota, in CPUs (e.g. 1.5), of this process's cgroup and its ancestors,
    and which file said so; ``None`` when no quota is set ("max" / -1) or no cgroup is found.

    ``root`` stands for ``/``: ``<root>/proc/self/cgroup`` names the cgroup, quotas are read
    under ``<root>/sys/fs/cgroup`` (v2: ``cpu.max`` "QUOTA PERIOD"; v1: the ``cpu`` controller's
    ``cpu.cfs_quota_us`` and ``cpu.cfs_period_us``). Unreadable or malformed files count as no quota.
    """
    text = _read(os.path.join(root, "proc/self/cgroup")) or ""
    found: list[tuple[float, str]] = []
    for line in text.splitlines():
        hid, _, rest = line.partition(":")
        controllers, _, rel = rest.partition(":")
        if hid == "0" and controllers == "":  # cgroup v2 (unified)
            for d in _cgroup_dirs(root, "sys/fs/cgroup", rel):
                quota, _, period = (_read(os.path.join(d, "cpu.max")) or "max").partition(" ")
                if quota.isdigit() and period.strip().isdigit() and int(period) > 0:
                    found.append((int(quota) / int(period), "cgroup v2 cpu.max"))
        elif "cpu" in controllers.split(","):
            for d in _cgroup_dirs(root, f"sys/fs/cgroup/{controllers}", rel) + \
                    _cgroup_dirs(root, "sys/fs/cgroup/cpu", rel):
                quota, period = (_read(os.path.join(d, f"cpu.cfs_{n}_us")) for n in ("quota", "period"))
                try:
                    q, p = int(quota or -1), int(period or 0)
                except ValueError:
                    continue
                if q > 0 and p > 0:
                    found.append((q / p, "cgroup v1 cpu.cfs_quota_us"))
    return min(found) if found else None


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask), else ``os.cpu_count()``, at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def auto_workers(root: str = "/", cpus: int | None = None) -> WorkerCount:
    """``--workers auto``: ceil(cgroup CPU quota) when a quota is set, at most ``cpus``
    (default :func:`available_cpus`), else ``cpus``; between 1 and :data:`MAX_WORKERS`.

    A fractional quota is rounded up: 1.5 CPUs lets two processes each use most of a core
    in turn, and the throttled half-core is still more than one process gets alone.
    """
    cpus = cpus or available_cpus()
    quota = cgroup_cpu_quota(root)
    if quota is None:
        n, reason = cpus, f"{cpus} CPUs available, no cgroup CPU quota"
    else:
        n = min(cpus, math.ceil(quota[0] - 1e-9))
        reason = f"{quota[1]} quota {quota[0]:g} CPUs, {cpus} CPUs available"
    return WorkerCount(max(1, min(MAX_WORKERS, n)), reason)


def parse_workers(text: str, flag: str = "--workers") -> WorkerCount:
    """``--workers`` value: "auto" (:func:`auto_workers`) or a number 1..64.

    Raises:
        K8sSqlError: naming ``flag`` when ``text`` is neither.
    """
    if text.strip().lower() == "auto":
        return auto_workers()
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= MAX_WORKERS:
        raise K8sSqlError(f"invalid --workers {text!r}", where=flag,
                          hint=f"use auto (one per CPU of the cgroup quota or the machine) or 1 to {MAX_WORKERS}")
    return WorkerCount(n, "--workers")
