"""Directories k8s-sql creates get their modes whatever the umask: under ``umask 077`` (a
hardened root account) a pki directory made 0700 keeps the shim (uid 65532) and postgres
from their certificates. The pki phase runs for real on this machine into a temp dir, and
``nobody`` tries to read what it wrote with ``runuser`` (the same check as for the
postgres OS user)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from typer.testing import CliRunner

from k8s_sql.cli import app
from k8s_sql.host import LocalHost


def test_pki_directories_are_0755_under_umask_077():
    tmp_path = Path(tempfile.mkdtemp(prefix="k8s-sql-umask-"))  # /tmp/pytest-of-root is closed to nobody
    os.chmod(tmp_path, 0o755)
    try:
        check_pki_under_umask(tmp_path)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


def check_pki_under_umask(tmp_path: Path) -> None:
    pki = tmp_path / "etc/kubernetes/pki/k8s-sql"
    cfg = tmp_path / "cluster.yaml"
    cfg.write_text("apiVersion: k8s-sql.io/v1alpha1\nkind: Cluster\nnode: {advertiseAddress: 192.0.2.10}\n"
                   f"paths: {{pkiDir: {pki}, backupDir: {tmp_path}/backup, stateFile: {tmp_path}/state.json}}\n")
    old = os.umask(0o077)
    try:
        r = CliRunner().invoke(app, ["init", "phase", "pki", "-c", str(cfg)])
    finally:
        os.umask(old)
    assert r.exit_code == 0, r.output
    for d in (tmp_path / "etc", tmp_path / "etc/kubernetes", tmp_path / "etc/kubernetes/pki", pki):
        assert oct(d.stat().st_mode & 0o777) == "0o755", d
    cert = pki / "ca.crt"
    assert oct(cert.stat().st_mode & 0o777) == "0o644"
    assert subprocess.run(["runuser", "-u", "nobody", "--", "test", "-r", str(cert)]).returncode == 0
    assert LocalHost().readable_by(str(cert), "nobody")


def test_makedirs_gives_the_mode_asked_for(tmp_path):
    old = os.umask(0o077)
    try:
        LocalHost(root=str(tmp_path)).makedirs("/a/b/c", 0o750)
    finally:
        os.umask(old)
    assert [oct((tmp_path / p).stat().st_mode & 0o777) for p in ("a", "a/b", "a/b/c")] == ["0o750"] * 3
