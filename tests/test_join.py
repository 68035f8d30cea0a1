"""``k8s-sql join`` with the joining node reached through a real sshd on 127.0.0.1.

kubeadm cannot run here: a stand-in ``kubeadm`` shell script (first on PATH locally and,
through sshd's SetEnv, in the SSH sessions) logs its arguments, prints a join command for
``token create --print-join-command``, a certificate key for ``init phase upload-certs``,
and on ``join`` writes kubelet.conf as kubeadm does. The prereqs phase is skipped (it
would install packages on this machine; it has its own tests).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from rich.console import Console

from k8s_sql.cli.common import make_context
from k8s_sql.cli.join import Join
from k8s_sql.config import Cluster
from k8s_sql.errors import K8sSqlError
from k8s_sql.host import LocalHost
from k8s_sql.phases.runner import run_phases
from k8s_sql.remote import open_host
from sshd import Sshd

TOKEN = "abcdef.0123456789abcdef"
CA_HASH = "sha256:" + "ab" * 32
CERT_KEY = "c0" * 32
KUBEADM = f"""#!/bin/sh
echo "$*" >>"{{log}}"
case "$1 $2" in
  "token create") echo "kubeadm join 192.0.2.10:6443 --token {TOKEN} --discovery-token-ca-cert-hash {CA_HASH} " ;;
  "init phase") echo "[upload-certs] Storing the certificates in Secret kubeadm-certs"
                echo "[upload-certs] Using certificate key:"; echo "{CERT_KEY}" ;;
  "join "*) mkdir -p "$(dirname "{{kubelet_conf}}")"; echo "kind: Config" >"{{kubelet_conf}}"
            echo "This node has joined the cluster" ;;
  *) echo "stand-in kubeadm: unexpected $*" >&2; exit 1 ;;
esac
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("join")
    bindir = base / "bin"
    bindir.mkdir()
    node = base / "node"  # paths of the cluster configuration
    script = bindir / "kubeadm"
    script.write_text(KUBEADM.format(log=base / "kubeadm.log", kubelet_conf=node / "kubernetes/kubelet.conf"))
    script.chmod(0o755)
    path = f"{bindir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    server = Sshd(path=path).start()
    yield {"base": base, "bin": bindir, "node": node, "sshd": server, "log": base / "kubeadm.log"}
    server.stop()


def config(env) -> Cluster:
    cfg = Cluster()
    n = env["node"]
    cfg.paths.kubeconfig = str(n / "kubernetes/admin.conf")
    cfg.paths.pki_dir = str(n / "kubernetes/pki/k8s-sql")
    cfg.paths.patches_dir = str(n / "k8s-sql/patches")
    return cfg


def reset_node(env):
    for p in (env["node"] / "kubernetes/kubelet.conf", env["log"]):
        if p.exists():
            p.unlink()


def log(env) -> list[str]:
    return env["log"].read_text().splitlines() if env["log"].exists() else []


def test_worker_join_over_ssh_with_a_fresh_token(env, tmp_path):
    reset_node(env)
    sshd = env["sshd"]
    admin = env["node"] / "kubernetes/admin.conf"
    admin.parent.mkdir(parents=True, exist_ok=True)
    admin.write_text("kind: Config\n")
    cfg_file = tmp_path / "cluster.yaml"
    cfg_file.write_text(f"apiVersion: k8s-sql.io/v1alpha1\nkind: Cluster\npaths: {{kubeconfig: {admin}}}\n")
    args = [sys.executable, "-m", "k8s_sql", "join", "-c", str(cfg_file), "--host", "root@127.0.0.1",
            "--ssh-port", str(sshd.port), "--ssh-key", sshd.client_key, "--ssh-known-hosts", sshd.known_hosts,
            "--skip-phases", "prereqs"]
    run_env = {**os.environ, "PATH": f"{env['bin']}:{os.environ['PATH']}", "COLUMNS": "250"}

    dry = subprocess.run([*args, "--dry-run"], capture_output=True, text=True, env=run_env, timeout=120)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "would kubeadm join as a worker (token from localhost)" in dry.stdout
    assert log(env) == []  # a dry run creates no token

    r = subprocess.run(args, capture_output=True, text=True, env=run_env, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert log(env) == ["token create --print-join-command --ttl 15m",
                        f"join 192.0.2.10:6443 --token {TOKEN} --discovery-token-ca-cert-hash {CA_HASH}"]
    assert "[127.0.0.1] This node has joined the cluster" in r.stdout
    assert TOKEN not in r.stdout + r.stderr and "--token ***" in r.stdout

    again = subprocess.run(args, capture_output=True, text=True, env=run_env, timeout=120)
    assert again.returncode == 0 and "already part of a cluster" in again.stdout
    assert len(log(env)) == 2


def test_control_plane_join_copies_the_shim_pki_and_patches(env, tmp_path, monkeypatch):
    """The first node is a LocalHost rooted in a scratch dir (its files differ from the
    joining node's); the joining node is reached over SSH."""
    reset_node(env)
    monkeypatch.setenv("PATH", f"{env['bin']}:{os.environ['PATH']}")
    cfg = config(env)
    first = tmp_path / "first"
    cp = LocalHost(root=str(first))
    cp.write_text(cfg.paths.kubeconfig, "kind: Config\n", mode=0o600)
    cp.write_text(f"{cfg.paths.pki_dir}/ca.crt", "CA\n", mode=0o644)
    cp.write_text(f"{cfg.paths.pki_dir}/shim-server.key", "KEY\n", mode=0o600, owner="65532", group="65532")
    cp.write_text(f"{cfg.paths.patches_dir}/kube-apiserver+strategic.yaml", "spec: {}\n", mode=0o600)
    target = open_host("root@127.0.0.1", port=env["sshd"].port, key_file=env["sshd"].client_key,
                       known_hosts=env["sshd"].known_hosts)
    ctx = make_context(cfg, host=target)
    ctx.console = Console(file=open(os.devnull, "w"))
    run_phases([Join(cp, control_plane=True)], ctx)

    local = LocalHost()
    key = local.stat(f"{cfg.paths.pki_dir}/shim-server.key")
    assert (key.mode, key.owner, key.group) == (0o600, "65532", "65532")
    assert local.read_text(f"{cfg.paths.pki_dir}/shim-server.key") == "KEY\n"
    assert local.read_text(f"{cfg.paths.patches_dir}/kube-apiserver+strategic.yaml") == "spec: {}\n"
    assert log(env) == ["token create --print-join-command --ttl 15m", "init phase upload-certs --upload-certs",
                        f"join 192.0.2.10:6443 --token {TOKEN} --discovery-token-ca-cert-hash {CA_HASH} "
                        f"--control-plane --certificate-key {CERT_KEY} --patches {cfg.paths.patches_dir}"]
    target.close()


def test_first_node_not_initialised(env, tmp_path):
    cfg = config(env)
    cfg.paths.kubeconfig = str(tmp_path / "missing/admin.conf")
    ctx = make_context(cfg, host=LocalHost(root=str(tmp_path / "joining")))
    with pytest.raises(K8sSqlError, match="not initialised") as e:
        Join(LocalHost(root=str(tmp_path / "first")), control_plane=False).plan(ctx)
    assert "k8s-sql init" in e.value.hint


def test_join_needs_a_remote_side():
    r = subprocess.run([sys.executable, "-m", "k8s_sql", "join", "--dry-run"], capture_output=True, text=True)
    assert r.returncode == 2 and "--control-plane-host" in r.stderr
