"""Stopping a child process the way the test helpers (sshd, etcd, the bench's shim) need."""

from __future__ import annotations

import subprocess


def stop_process(proc: subprocess.Popen | None, timeout: float = 10.0) -> None:
    """SIGTERM ``proc``, then SIGKILL if it has not exited after ``timeout`` seconds; a
    process that already exited (or ``None``) is left alone, so calling twice is safe."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
