"""What the VM tests share: ``k8s-sql`` run from the host against a VM over SSH
(:class:`Cli`), a check of its exit code (:func:`ok`), the output of each phase
(:func:`phase_blocks`), and a snapshot of a node's configuration to compare before and
after (:func:`snapshot`, :func:`diff`)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

#: What a snapshot covers: the whole configuration, k8s-sql's own state, the packages, the
#: enabled units, PostgreSQL's roles and databases.
SNAPSHOT = r"""
set -e
find /etc /var/lib/k8s-sql /usr/local -xdev -printf '%y %m %u:%g %p -> %l\n' 2>/dev/null | sort
find /etc /var/lib/k8s-sql /usr/local -xdev -type f -exec sha256sum {} + 2>/dev/null | sort -k2
dpkg-query -W -f '${db:Status-Abbrev} ${Package} ${Version}\n' | sort
systemctl list-unit-files --state=enabled --no-legend | sort
if command -v psql >/dev/null; then
  runuser -u postgres -- psql -X -A -t -c "SELECT 'role ' || rolname FROM pg_roles ORDER BY 1" \
    -c "SELECT 'database ' || datname FROM pg_database ORDER BY 1"
fi
"""


def snapshot(vm) -> list[str]:
    """The node's configuration as sorted lines (see :data:`SNAPSHOT`)."""
    return vm.ssh(SNAPSHOT, timeout=300).stdout.splitlines()


def diff(before: list[str], after: list[str]) -> list[str]:
    """``- line`` for what is gone, ``+ line`` for what is new."""
    b, a = set(before), set(after)
    return [f"- {x}" for x in sorted(b - a)] + [f"+ {x}" for x in sorted(a - b)]


class Cli:
    """``k8s-sql`` (this checkout's, with the test's Python) against the VM over SSH, with
    ``config`` (YAML text) as ``--config`` when given; every run's output is kept in
    ``workdir``."""

    def __init__(self, booted, workdir: Path, config: str | None = None):
        self.booted = booted
        self.workdir = workdir
        self.config = None
        if config is not None:
            self.config = workdir / "k8s-sql.yaml"
            self.config.write_text(config)
        self.runs = 0

    def ssh_args(self) -> list[str]:
        b = self.booted
        return ["--host", "root@127.0.0.1", "--ssh-port", str(b.port), "--ssh-key", str(b.key),
                "--ssh-known-hosts", str(b.known_hosts)]

    def __call__(self, *args: str, timeout: float = 2400) -> tuple[subprocess.CompletedProcess, float]:
        self.runs += 1
        config = ["--config", str(self.config)] if self.config else []
        argv = [sys.executable, "-m", "k8s_sql", *args, *config, *self.ssh_args()]
        start = time.monotonic()
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                             env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}, stdin=subprocess.DEVNULL)
        seconds = time.monotonic() - start
        log = self.workdir / f"k8s-sql.{self.runs}.log"
        log.write_text(f"$ {' '.join(argv)}\nexit {res.returncode} after {seconds:.1f} s\n--- stdout\n"
                       f"{res.stdout}\n--- stderr\n{res.stderr}\n")
        return res, seconds


def ok(res: subprocess.CompletedProcess, what: str) -> str:
    """``res.stdout``, after asserting ``res`` exited 0 (the end of its output if not)."""
    assert res.returncode == 0, f"{what} exited {res.returncode}\n--- stdout (end)\n" + "\n".join(
        res.stdout.splitlines()[-60:]) + f"\n--- stderr\n{res.stderr[-3000:]}"
    return res.stdout


ALL_PHASES = ("preflight", "prereqs", "pki", "postgres", "shim", "kubeadm-config", "kubeadm-init", "post")


def phase_blocks(out: str, phases: tuple[str, ...] = ALL_PHASES) -> dict[str, str]:
    """``[name] title`` headers of the phase runner's output -> the lines under each."""
    blocks: dict[str, str] = {}
    name = None
    for line in out.splitlines():
        m = re.match(r"^\[([a-z-]+)\] ", line)
        if m and m.group(1) in phases:
            name = m.group(1)
            blocks[name] = ""
        elif name:
            blocks[name] += line + "\n"
    return blocks
