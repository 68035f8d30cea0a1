"""``k8s-sql reset`` on a node made by ``k8s-sql init``, against a throwaway PostgreSQL.

kubeadm and the kubelet cannot run here: a stand-in ``kubeadm`` first on PATH does what the
real one does to the files reset cares about — ``init`` (the stand-in of
test_kubeadm_init.py) writes the kube-apiserver manifest with the shim patch and admin.conf;
``reset -f`` removes the manifests and admin.conf. The init phases that exist in this
checkout run for real (kubeadm-config, kubeadm-init, and pki/postgres once present); when
the postgres phase is not there yet, the test makes its PostgreSQL changes itself (a
conf.d file, a marked pg_hba.conf block, the role and database) and says so below.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from pgcluster import TempPostgres
from test_kubeadm_init import BASE, STAND_IN

HAS_POSTGRES_PHASE = importlib.util.find_spec("k8s_sql.phases.postgres") is not None
HAS_PKI_PHASE = importlib.util.find_spec("k8s_sql.phases.pki") is not None
WRAPPER = """#!/bin/sh
if [ "$1" = reset ]; then
  echo "reset $*" >>"$KUBEADM_LOG"
  rm -f "$KUBEADM_MANIFESTS"/*.yaml "$KUBEADM_ADMIN_CONF"
  echo "[reset] stand-in: removed the static pod manifests and admin.conf"
  exit 0
fi
exec {python} {init} "$@"
"""
HBA_BLOCK = ("# BEGIN k8s-sql (managed by k8s-sql; do not edit)\n"
             "hostssl kubernetes k8s_sql 127.0.0.1/32 cert\n# END k8s-sql\n")


@pytest.fixture(scope="module")
def pgc():
    cluster = TempPostgres().init()
    conf = os.path.join(cluster.config_dir, "postgresql.conf")
    text = open(conf).read()  # IPv4 only: the postgres phase adds ::1 (a restart), reset takes it back
    open(conf, "w").write(text.replace("listen_addresses = '127.0.0.1,::1'", "listen_addresses = '127.0.0.1'"))
    cluster.start()
    yield cluster
    cluster.destroy()


@pytest.fixture
def node(pgc):
    """Config and environment for one node in a temp dir that the postgres OS user can
    search (PostgreSQL reads its certificate and key from the pki dir there)."""
    tmp_path = Path(tempfile.mkdtemp(prefix="k8s-sql-reset-"))
    os.chmod(tmp_path, 0o755)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "kubeadm-init.py").write_text(STAND_IN.format(python=sys.executable))
    (bindir / "kubeadm").write_text(WRAPPER.format(python=sys.executable, init=bindir / "kubeadm-init.py"))
    (bindir / "kubeadm").chmod(0o755)
    etc = tmp_path / "etc"
    paths = {"kubeadmConfig": etc / "k8s-sql/kubeadm.yaml", "patchesDir": etc / "k8s-sql/patches",
             "pkiDir": etc / "kubernetes/pki/k8s-sql", "manifestsDir": etc / "kubernetes/manifests",
             "backupDir": tmp_path / "backup", "kubeconfig": etc / "kubernetes/admin.conf",
             "postgresClients": etc / "k8s-sql/postgres-clients"}
    cfg = tmp_path / "cluster.yaml"
    cfg.write_text(
        "apiVersion: k8s-sql.io/v1alpha1\nkind: Cluster\n"
        "node: {name: cp1, advertiseAddress: 192.0.2.10, criSocket: unix:///var/run/crio/crio.sock}\n"
        "paths: {" + ", ".join(f"{k}: {v}" for k, v in paths.items()) + "}\n"
        f"postgres: {{configDir: {pgc.config_dir}, dataDir: {pgc.data_dir}, socketDir: {pgc.socket_dir}, "
        f"port: {pgc.port}, version: '{pgc.major}'}}\n")
    env = {**os.environ, "COLUMNS": "250", "PATH": f"{bindir}:{os.environ['PATH']}",
           "KUBEADM_LOG": str(tmp_path / "kubeadm.log"), "KUBEADM_BASE": str(BASE),
           "KUBEADM_MANIFESTS": str(paths["manifestsDir"]), "KUBEADM_ADMIN_CONF": str(paths["kubeconfig"])}
    hba = os.path.join(pgc.config_dir, "pg_hba.conf")
    original_hba = open(hba).read()
    yield {"cfg": str(cfg), "env": env, "paths": paths, "tmp": tmp_path, "hba": hba, "original_hba": original_hba}
    # leave the module's cluster as it was
    open(hba, "w").write(original_hba)
    conf_d = os.path.join(pgc.config_dir, "conf.d", "k8s-sql.conf")
    if os.path.exists(conf_d):
        os.unlink(conf_d)
    pgc.psql("DROP DATABASE IF EXISTS kubernetes WITH (FORCE)")
    pgc.psql("DROP ROLE IF EXISTS k8s_sql")
    pgc.reload()
    shutil.rmtree(tmp_path, ignore_errors=True)


def k8s_sql(node, *args, rc=0, stdin=subprocess.DEVNULL) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "k8s_sql", *args], env=node["env"], capture_output=True, text=True,
                       timeout=300, stdin=stdin)
    assert r.returncode == rc, r.stdout + r.stderr
    return r


def init(node, pgc) -> None:
    skip = ["preflight", "prereqs", "shim", "post"]
    skip += [] if HAS_PKI_PHASE else ["pki"]
    skip += [] if HAS_POSTGRES_PHASE else ["postgres"]
    k8s_sql(node, "init", "-c", node["cfg"], "--skip-phases", ",".join(skip))
    if not HAS_POSTGRES_PHASE:  # what the postgres phase does, made by hand until it lands
        with open(os.path.join(pgc.config_dir, "conf.d", "k8s-sql.conf"), "w") as f:
            f.write("# k8s-sql\nlog_connections = on\n")
        with open(node["hba"], "a") as f:
            f.write(HBA_BLOCK)
        pgc.psql("DO $$BEGIN CREATE ROLE k8s_sql LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END$$")
        if not pgc.psql("SELECT 1 FROM pg_database WHERE datname = 'kubernetes'"):
            pgc.psql("CREATE DATABASE kubernetes OWNER k8s_sql")
        pgc.reload()


def snapshot(node, pgc) -> dict:
    """What init leaves: every file under the node's etc with its mode (content for the
    non-secret ones: keys and certificates are made afresh), pg_hba.conf and conf.d."""
    out = {}
    root = node["tmp"] / "etc"
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            st = os.stat(path)
            content = None if name.endswith((".key", ".crt", ".pem")) else open(path, "rb").read()
            out[os.path.relpath(path, root)] = (st.st_mode & 0o7777, content)
    out["pg_hba.conf"] = open(node["hba"]).read()
    conf_d = os.path.join(pgc.config_dir, "conf.d")
    out["conf.d"] = {n: open(os.path.join(conf_d, n)).read() for n in sorted(os.listdir(conf_d))}
    return out


def test_reset_then_init_equals_one_init(node, pgc):
    init(node, pgc)
    first = snapshot(node, pgc)
    assert "k8s-sql/kubeadm.yaml" in first and "kubernetes/manifests/kube-apiserver.yaml" in first
    assert "k8s-sql.conf" in first["conf.d"] and first["pg_hba.conf"] != node["original_hba"]
    if HAS_POSTGRES_PHASE:
        assert pgc.psql("SHOW listen_addresses") == "127.0.0.1,::1"

    dry = k8s_sql(node, "reset", "-c", node["cfg"], "--dry-run")
    for planned in ("would kubeadm reset -f", f"would remove {node['paths']['kubeadmConfig']}",
                    f"would remove {node['paths']['patchesDir']}",
                    f"would remove {os.path.join(pgc.config_dir, 'conf.d', 'k8s-sql.conf')}",
                    f"would write {node['hba']}",
                    "would restart" if HAS_POSTGRES_PHASE else "would reload the PostgreSQL configuration"):
        assert planned in dry.stdout, dry.stdout
    assert "DROP" not in dry.stdout
    assert snapshot(node, pgc) == first  # a dry run changes nothing

    r = k8s_sql(node, "reset", "-c", node["cfg"], "--yes")
    assert "stand-in: removed" in r.stdout
    assert not os.path.exists(node["paths"]["kubeadmConfig"]) and not os.path.exists(node["paths"]["patchesDir"])
    assert not os.path.exists(node["paths"]["pkiDir"])
    assert open(node["hba"]).read() == node["original_hba"]
    assert not os.path.exists(os.path.join(pgc.config_dir, "conf.d", "k8s-sql.conf"))
    backups = os.listdir(node["paths"]["backupDir"])
    assert any(b.startswith("pg_hba.conf.") for b in backups)
    # PostgreSQL still runs, with the cleaned configuration loaded; the data is kept
    assert pgc.psql("SELECT count(*) FROM pg_hba_file_rules WHERE 'k8s_sql' = ANY(user_name)") == "0"
    assert pgc.psql("SELECT datname FROM pg_database WHERE datname = 'kubernetes'") == "kubernetes"
    assert pgc.psql("SHOW listen_addresses") == "127.0.0.1"
    assert pgc.psql("SHOW ssl") == "off"
    assert "up to date" in k8s_sql(node, "reset", "-c", node["cfg"], "--yes").stdout

    init(node, pgc)
    assert snapshot(node, pgc) == first

    r = k8s_sql(node, "reset", "-c", node["cfg"], "--yes", "--delete-data")
    assert 'DROP DATABASE "kubernetes" WITH (FORCE)' in r.stdout and 'DROP ROLE "k8s_sql"' in r.stdout
    assert pgc.psql("SELECT count(*) FROM pg_database WHERE datname = 'kubernetes'") == "0"
    assert pgc.psql("SELECT count(*) FROM pg_roles WHERE rolname = 'k8s_sql'") == "0"


def test_reset_removes_the_list_of_joined_control_plane_nodes(node, pgc):
    """``join --control-plane`` wrote ``paths.postgresClients`` on this node; after reset
    a new init must not let those addresses in again."""
    init(node, pgc)
    node["paths"]["postgresClients"].write_text("192.0.2.11  # control-plane node cp2\n")
    r = k8s_sql(node, "reset", "-c", node["cfg"], "--yes")
    assert f"remove {node['paths']['postgresClients']}" in r.stdout
    assert not node["paths"]["postgresClients"].exists()


def test_reset_without_a_terminal_needs_yes(node, pgc):
    init(node, pgc)
    before = snapshot(node, pgc)
    r = k8s_sql(node, "reset", "-c", node["cfg"], rc=1)
    assert "no terminal to confirm" in r.stderr and "--yes" in r.stderr
    assert snapshot(node, pgc) == before


def test_reset_over_ssh_plans_what_a_local_reset_plans(node, pgc):
    """The same node through a real sshd on 127.0.0.1 whose sessions have the stand-in first
    on PATH; the plans are identical."""
    from sshd import Sshd

    init(node, pgc)
    server = Sshd(path=node["env"]["PATH"]).start()
    try:
        remote = k8s_sql(node, "reset", "-c", node["cfg"], "--dry-run", "--host", "root@127.0.0.1", "--ssh-port",
                         str(server.port), "--ssh-key", server.client_key, "--ssh-known-hosts", server.known_hosts)
    finally:
        server.stop()
    local = k8s_sql(node, "reset", "-c", node["cfg"], "--dry-run")
    assert remote.stdout == local.stdout
    assert "would kubeadm reset -f" in remote.stdout and f"would write {node['hba']}" in remote.stdout
