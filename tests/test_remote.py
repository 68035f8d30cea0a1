"""Remote mode over a real OpenSSH server on 127.0.0.1 (tests/sshd.py).

RemoteHost is checked against the Host contract (files with mode/owner, binary content,
commands as another user, stdin, env, streamed output), as root and as a user with
passwordless sudo; ``k8s-sql init ... --host`` runs phases through it; and each way it can
fail (wrong key, unknown host key, unreachable host, no sudo) gives exit 1 with a message
naming the host and the next step.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from k8s_sql.errors import CommandError, K8sSqlError
from k8s_sql.host import LocalHost
from k8s_sql.phases.runner import PHASES
from k8s_sql.remote import RemoteHost, open_host
from sshd import Sshd, free_port, keygen

_SUFFIX = uuid.uuid4().hex[:6]  # test sessions running side by side must not share users
SUDO_USER = f"k8ssqlsudo{_SUFFIX}"
PLAIN_USER = f"k8ssqlplain{_SUFFIX}"


@pytest.fixture(scope="module")
def sshd():
    server = Sshd().start()
    server.add_user(SUDO_USER, sudo=True)
    server.add_user(PLAIN_USER, sudo=False)
    yield server
    server.stop()


def connect(sshd, user="root", **kw) -> RemoteHost:
    return open_host(f"{user}@127.0.0.1", port=sshd.port, key_file=sshd.client_key,
                     known_hosts=sshd.known_hosts, **kw)


def cli(*args, check_rc: int | None = 0) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "250"}  # rich wraps at 80 otherwise
    r = subprocess.run([sys.executable, "-m", "k8s_sql", *args], capture_output=True, text=True, timeout=120,
                       env=env)
    if check_rc is not None:
        assert r.returncode == check_rc, r.stdout + r.stderr
    return r


def ssh_args(sshd, user="root"):
    return ["--host", f"{user}@127.0.0.1", "--ssh-port", str(sshd.port), "--ssh-key", sshd.client_key,
            "--ssh-known-hosts", sshd.known_hosts]


@pytest.mark.parametrize("user", ["root", SUDO_USER], ids=["root", "sudo"])
def test_files_and_commands_match_the_host_contract(sshd, tmp_path, user, capsys):
    """Same results as LocalHost on the same machine: the remote end is this machine."""
    host = connect(sshd, user)
    local = LocalHost()
    assert host.sudo == (user != "root")
    assert host.is_root()
    base = str(tmp_path / "remote")
    data = bytes(range(256)) * 3  # binary-safe
    target = f"{base}/sub/dir/key.pem"
    host.write_bytes(target, data, mode=0o640, owner="postgres", group="root")
    assert local.read_bytes(target) == data
    info = host.stat(target)
    assert info == local.stat(target)
    assert (info.mode, info.owner, info.group, info.size) == (0o640, "postgres", "root", 768)
    # a numeric owner (the shim container's uid) with no passwd entry
    host.write_text(f"{base}/sub/shim.key", "secret\n", mode=0o600, owner="65532", group="65532")
    assert host.stat(f"{base}/sub/shim.key") == local.stat(f"{base}/sub/shim.key")
    assert local.stat(f"{base}/sub/shim.key").owner == "65532"
    # replacing keeps nothing half-written and leaves no temp files behind
    host.write_bytes(target, b"new\n", mode=0o600, tmp_dir=f"{base}/tmp")
    assert host.read_bytes(target) == b"new\n" and host.stat(target).mode == 0o600
    assert host.listdir(f"{base}/sub/dir") == ["key.pem"]
    assert host.listdir(f"{base}/tmp") == []
    assert host.listdir(f"{base}/sub") == local.listdir(f"{base}/sub") == ["dir", "shim.key"]
    assert host.read_bytes(f"{base}/missing") is None and host.stat(f"{base}/missing") is None
    assert host.listdir(f"{base}/missing") == []
    host.makedirs(f"{base}/made/deep", 0o700)
    assert local.stat(f"{base}/made/deep").mode == 0o700
    # a directory is never removed with its content: remove refuses it, rmdir only takes an empty one
    with pytest.raises(CommandError, match="is a directory"):
        host.remove(f"{base}/sub")
    with pytest.raises(CommandError, match="not empty"):
        host.rmdir(f"{base}/sub/dir")
    assert host.is_dir(f"{base}/sub") == local.is_dir(f"{base}/sub") is True
    assert host.is_dir(target) == local.is_dir(target) is False
    os.symlink(f"{base}/sub", f"{base}/link")
    assert not host.is_dir(f"{base}/link")
    host.remove(f"{base}/link")  # the link, not what it points to
    assert not os.path.lexists(f"{base}/link") and os.path.exists(target)
    for f in (target, f"{base}/sub/shim.key"):
        host.remove(f)
        host.remove(f)  # a missing file is not an error
    host.rmdir(f"{base}/sub/dir")
    host.rmdir(f"{base}/sub")
    host.rmdir(f"{base}/sub")  # nor is a missing directory
    assert not os.path.exists(f"{base}/sub")
    # commands: stdin, env, another user, exit status
    assert host.run(["cat"], input="über\n").stdout == "über\n"
    assert host.run(["sh", "-c", 'echo "$FOO"'], env={"FOO": "a b"}).stdout == "a b\n"
    assert host.run(["id", "-un"], user="postgres").stdout.strip() == "postgres"
    assert host.run(["id", "-un"]).stdout.strip() == "root"
    assert host.run(["false"], check=False).returncode == 1
    with pytest.raises(CommandError) as e:
        host.run(["sh", "-c", "echo boom >&2; exit 3"])
    assert "exited with 3" in str(e.value) and "boom" in str(e.value) and "127.0.0.1" in str(e.value)
    with pytest.raises(CommandError, match="not installed"):
        host.run(["no-such-binary-k8s-sql"])
    assert host.which("sshd") == "/usr/sbin/sshd"
    capsys.readouterr()
    host.run(["sh", "-c", "echo one; echo two >&2"], stream=True)
    out = capsys.readouterr().out
    assert "[127.0.0.1] one\n" in out and "[127.0.0.1] two\n" in out
    host.close()


def _config(tmp_path, name, pg=None) -> str:
    etc = tmp_path / name
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        "apiVersion: k8s-sql.io/v1alpha1\nkind: Cluster\n"
        "node: {name: node1, advertiseAddress: 192.0.2.10, criSocket: unix:///var/run/crio/crio.sock}\n"
        f"paths: {{kubeadmConfig: {etc}/kubeadm.yaml, patchesDir: {etc}/patches, pkiDir: {etc}/pki, "
        f"manifestsDir: {etc}/manifests, backupDir: {etc}/backup, kubeconfig: {etc}/admin.conf, "
        f"stateFile: {etc}/state.json}}\n"
        + (f"postgres: {{configDir: {pg.config_dir}, dataDir: {pg.data_dir}, socketDir: {pg.socket_dir}, "
           f"port: {pg.port}, version: '{pg.major}'}}\n" if pg else ""))
    return str(path)


@pytest.mark.parametrize("user", ["root", SUDO_USER], ids=["root", "sudo"])
def test_init_phase_over_ssh_writes_what_a_local_run_would(sshd, tmp_path, user):
    cfg = _config(tmp_path, "etc")
    r = cli("init", "phase", "kubeadm-config", "-c", cfg, *ssh_args(sshd, user))
    assert "write" in r.stdout and "kubeadm.yaml" in r.stdout
    info = LocalHost().stat(str(tmp_path / "etc/kubeadm.yaml"))
    assert (info.mode, info.owner, info.group) == (0o600, "root", "root")
    # a second remote run and a local dry run on the same files both find nothing to do
    assert "up to date" in cli("init", "phase", "kubeadm-config", "-c", cfg, *ssh_args(sshd, user)).stdout
    local = cli("init", "phase", "kubeadm-config", "-c", cfg, "--dry-run")
    assert "0 change(s) planned" in local.stdout


def test_init_dry_run_over_ssh_changes_nothing(sshd, pg, request):
    """Every phase that exists in this checkout, planned over SSH (PostgreSQL: the session's
    throwaway cluster, only read); no file appears. Not in tmp_path (0700, and pytest keeps
    its base 0700): the postgres phase checks that the postgres OS user could reach the
    key the pki phase plans, so the files go to a 0755 temp dir."""
    tmp_path = Path(tempfile.mkdtemp(prefix="k8s-sql-remote-dry-"))
    tmp_path.chmod(0o755)
    request.addfinalizer(lambda: shutil.rmtree(tmp_path, ignore_errors=True))
    cfg = _config(tmp_path, "dry", pg)
    before = open(os.path.join(pg.config_dir, "pg_hba.conf")).read()
    missing = [n for n, t in PHASES.items() if importlib.util.find_spec(t.split(":")[0]) is None]
    args = ["--skip-phases", ",".join(missing)] if missing else []
    r = cli("init", "--dry-run", "-c", cfg, *args, *ssh_args(sshd), check_rc=None)
    assert "[kubeadm-config]" in r.stdout, r.stdout + r.stderr
    assert "would write" in r.stdout and str(tmp_path / "dry/kubeadm.yaml") in r.stdout
    assert not (tmp_path / "dry").exists()
    assert open(os.path.join(pg.config_dir, "pg_hba.conf")).read() == before
    for phase in ("preflight", "prereqs", "pki", "postgres", "kubeadm-init", "post"):
        if phase not in missing:
            assert f"[{phase}]" in r.stdout


def _error(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    return " ".join(r.stderr.split())


def test_wrong_key_is_an_authentication_error(sshd, tmp_path):
    other = str(tmp_path / "other_key")
    keygen(other)
    args = ssh_args(sshd)
    args[args.index("--ssh-key") + 1] = other
    err = _error(cli("init", "phase", "kubeadm-config", *args, check_rc=None))
    assert f"root@127.0.0.1:{sshd.port}" in err and "authentication" in err and "authorized_keys" in err


def test_unknown_host_key_is_rejected_with_the_keyscan_hint(sshd, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    args = ssh_args(sshd)
    args[args.index("--ssh-known-hosts") + 1] = str(empty)
    err = _error(cli("init", "phase", "kubeadm-config", *args, check_rc=None))
    assert "not in" in err and "unknown host" in err
    assert f"ssh-keyscan -p {sshd.port} 127.0.0.1 >> {empty}" in err


def test_changed_host_key_is_rejected(sshd, tmp_path):
    fake = tmp_path / "fake"
    pub = keygen(str(fake))
    kh = tmp_path / "known_hosts"
    kh.write_text(f"[127.0.0.1]:{sshd.port} {' '.join(pub.split()[:2])}\n")
    with pytest.raises(K8sSqlError, match="host key of .* changed"):
        open_host("root@127.0.0.1", port=sshd.port, key_file=sshd.client_key, known_hosts=str(kh))


def test_unreachable_host(sshd):
    args = ssh_args(sshd)
    args[args.index("--ssh-port") + 1] = str(free_port())
    err = _error(cli("init", "phase", "kubeadm-config", *args, check_rc=None))
    assert "cannot reach 127.0.0.1 port" in err and "sshd runs" in err


def test_user_without_sudo_fails_before_any_change(sshd, tmp_path):
    cfg = _config(tmp_path, "nosudo")
    err = _error(cli("init", "phase", "kubeadm-config", "-c", cfg, *ssh_args(sshd, PLAIN_USER), check_rc=None))
    assert f"user {PLAIN_USER} cannot run sudo without a password" in err
    assert "NOPASSWD" in err and "/etc/sudoers.d" in err
    assert not (tmp_path / "nosudo").exists()


def test_ssh_options_need_host():
    r = cli("init", "phase", "kubeadm-config", "--ssh-port", "22", "--dry-run", check_rc=2)
    assert "--host" in r.stderr


@pytest.mark.skipif(importlib.util.find_spec("k8s_sql.phases.pki") is None
                    or importlib.util.find_spec("k8s_sql.phases.postgres") is None,
                    reason="the pki and postgres phases are not in this checkout yet")
def test_pki_and_postgres_phases_over_ssh(sshd, tmp_path):
    """``init phase pki`` and ``init phase postgres`` through sshd against a throwaway
    PostgreSQL of this test; a second run over SSH and a local dry run find nothing to do."""
    from pgcluster import TempPostgres

    pgc = TempPostgres().init().start()
    import shutil
    import tempfile
    from pathlib import Path

    tmp_path = Path(tempfile.mkdtemp(prefix="k8s-sql-remote-"))
    os.chmod(tmp_path, 0o755)  # the postgres OS user reads its key from the pki dir here
    try:
        cfg = tmp_path / "cluster.yaml"
        etc = tmp_path / "etc"
        cfg.write_text(
            "apiVersion: k8s-sql.io/v1alpha1\nkind: Cluster\n"
            f"paths: {{pkiDir: {etc}/pki, kubeadmConfig: {etc}/kubeadm.yaml, patchesDir: {etc}/patches, "
            f"backupDir: {etc}/backup, stateFile: {etc}/state.json}}\n"
            f"postgres: {{configDir: {pgc.config_dir}, dataDir: {pgc.data_dir}, socketDir: {pgc.socket_dir}, "
            f"port: {pgc.port}, version: '{pgc.major}'}}\n")
        for phase in ("pki", "postgres"):
            cli("init", "phase", phase, "-c", str(cfg), *ssh_args(sshd, SUDO_USER))
            assert "up to date" in cli("init", "phase", phase, "-c", str(cfg), *ssh_args(sshd)).stdout
            assert "0 change(s) planned" in cli("init", "phase", phase, "-c", str(cfg), "--dry-run").stdout
        assert pgc.psql("SHOW ssl") == "on"
    finally:
        pgc.destroy()
        shutil.rmtree(tmp_path, ignore_errors=True)


def test_node_name_defaults_to_the_targets_host_name(tmp_path):
    """``init --host`` without node.name names the node after the target's host name
    (``uname -n`` there), not after the machine k8s-sql runs on; a configured name stays.
    (Found by tests/vm/test_fresh_vm.py: a second init over SSH re-issued the serving
    certificates, whose SANs hold the node name.) A real sshd on this machine; so that the
    target's host name differs from this machine's, its sessions find a ``uname`` first on
    their PATH that answers another name (the only stand-in)."""
    from k8s_sql import config as configmod
    from k8s_sql.cli.common import make_context

    bindir = tmp_path / "bin"
    bindir.mkdir()
    os.chmod(tmp_path, 0o755)
    uname = bindir / "uname"
    uname.write_text('#!/bin/sh\n[ "$1" = -n ] && echo Node-B.example.org || exec /bin/uname "$@"\n')
    uname.chmod(0o755)
    server = Sshd(path=f"{bindir}:/usr/bin:/bin").start()
    try:
        cfg = configmod.load(None)
        assert cfg.node.name != "node-b"
        assert make_context(cfg, host=connect(server)).config.node.name == "node-b"
        named = configmod.load("apiVersion: k8s-sql.io/v1alpha1\nkind: Cluster\nnode: {name: cp1}\n")
        assert make_context(named, host=connect(server)).config.node.name == "cp1"
        local = configmod.load(None)
        assert make_context(local).config.node.name == configmod.host_node_name()
    finally:
        server.stop()
