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

import datetime as dt
import io
import json

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from rich.console import Console

from k8s_sql.cli.common import make_context
from k8s_sql.config import Cluster, load_file
from k8s_sql.errors import K8sSqlError
from k8s_sql.host import DryRunHost, LocalHost
from k8s_sql.paths import is_system_path
from k8s_sql.phases.base import Context, RemoveDir, RemoveFile
from k8s_sql.phases.join import AllowClient
from k8s_sql.phases.kubeadm_config import KubeadmConfig
from k8s_sql.phases.pki import Pki
from k8s_sql.phases.reset import Reset
from k8s_sql.phases.runner import run_phases
from k8s_sql.state import State
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
             "postgresClients": etc / "k8s-sql/postgres-clients", "stateFile": tmp_path / "var/lib/k8s-sql/state.json"}
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
                    f"would remove {node['paths']['patchesDir']}/kube-apiserver+strategic.yaml",
                    f"would remove the empty directory {node['paths']['patchesDir']}",
                    f"would remove the empty directory {node['paths']['pkiDir']}",
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
    # kubeadm (the stand-in) left etc/kubernetes/manifests, in directories k8s-sql created:
    # they stay, and so does their record; nothing else is recorded any more
    etc = node["tmp"] / "etc"
    assert f"keep {etc}/kubernetes: not empty: admin.conf, manifests" in r.stdout  # as planned, before kubeadm reset
    kept = json.loads(node["paths"]["stateFile"].read_text())["entries"]
    assert kept == [{"path": str(etc), "kind": "dir"}, {"path": f"{etc}/kubernetes", "kind": "dir"}]
    again = k8s_sql(node, "reset", "-c", node["cfg"], "--yes").stdout
    assert "up to date" in again and f"keep {etc}/kubernetes: not empty: manifests" in again

    init(node, pgc)
    assert snapshot(node, pgc) == first

    r = k8s_sql(node, "reset", "-c", node["cfg"], "--yes", "--delete-data")
    assert 'DROP DATABASE "kubernetes" WITH (FORCE)' in r.stdout and 'DROP ROLE "k8s_sql"' in r.stdout
    assert not os.path.exists(node["paths"]["pkiDir"]) and not os.path.exists(node["paths"]["kubeadmConfig"])
    assert pgc.psql("SELECT count(*) FROM pg_database WHERE datname = 'kubernetes'") == "0"
    assert pgc.psql("SELECT count(*) FROM pg_roles WHERE rolname = 'k8s_sql'") == "0"


def test_reset_removes_the_list_of_joined_control_plane_nodes(node, pgc):
    """``join --control-plane`` wrote ``paths.postgresClients`` on this node; after reset
    a new init must not let those addresses in again."""
    init(node, pgc)
    # what `join --control-plane` runs on this node (k8s_sql.phases.join.run_join), with the
    # context the CLI makes: the file it creates is recorded like every other
    cfg = load_file(node["cfg"])
    run_phases([AllowClient("192.0.2.11", "cp2")], make_context(cfg))
    assert "192.0.2.11  # control-plane node cp2\n" in node["paths"]["postgresClients"].read_text()
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


# reset against a scratch root (LocalHost(root=…)) holding k8s-sql's files and the user's.
# PostgreSQL is external here, so reset plans only files and directories.

def scratch_config(**paths) -> Cluster:
    cfg = Cluster()
    cfg.node.name, cfg.node.advertise_address = "cp1", "192.0.2.10"
    cfg.node.cri_socket = "unix:///var/run/crio/crio.sock"
    cfg.postgres.mode, cfg.postgres.uri = "external", "postgresql://db.example:5432/kubernetes?sslmode=verify-full"
    for name, value in paths.items():  # set directly: as if validation were bypassed
        setattr(cfg.paths, name, value)
    return cfg


def scratch_ctx(root, cfg, *, record=True, dry_run=False, out=None) -> Context:
    host = LocalHost(root=str(root))
    return Context(DryRunHost(host) if dry_run else host, cfg, dry_run=dry_run,
                   console=Console(file=out if out is not None else io.StringIO(), width=300),
                   state=State.for_config(cfg) if record else None)


def scratch_init(root, cfg, *, record=True) -> None:
    """The file-writing init phases, as ``k8s-sql init`` runs them (``record=False``: as a
    k8s-sql that kept no record did)."""
    run_phases([Pki(), KubeadmConfig()], scratch_ctx(root, cfg, record=record))


def scratch_reset(root, cfg, *, dry_run=False) -> tuple[int, str]:
    out = io.StringIO()
    n = run_phases([Reset()], scratch_ctx(root, cfg, dry_run=dry_run, out=out))
    return n, out.getvalue()


def tree(root) -> dict[str, bytes | None]:
    """Every file (content) and directory (``None``) under ``root``, by node path."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out["/" + os.path.relpath(os.path.join(dirpath, d), root)] = None
        for f in filenames:
            out["/" + os.path.relpath(os.path.join(dirpath, f), root)] = Path(dirpath, f).read_bytes()
    return out


PKI_DIR = "/etc/kubernetes/pki/k8s-sql"
PKI_FILES = {f"{PKI_DIR}/{n}" for c in ("ca", "postgres-server", "shim-postgres-client", "shim-server",
                                        "apiserver-shim-client") for n in (f"{c}.crt", f"{c}.key")}
KUBEADM_FILES = {"/etc/k8s-sql/kubeadm.yaml", "/etc/k8s-sql/patches/kube-apiserver+strategic.yaml"}


def test_reset_removes_only_k8s_sql_s_unchanged_files(tmp_path):
    root = tmp_path / "root"
    (root / "etc/k8s-sql").mkdir(parents=True)  # the user made /etc/k8s-sql, for their notes
    (root / "etc/k8s-sql/notes.txt").write_text("my notes\n")
    (root / "etc/kubernetes").mkdir()
    (root / "etc/kubernetes/kubeadm-flags.env").write_text("KUBELET_EXTRA_ARGS=\n")
    cfg = scratch_config()
    scratch_init(root, cfg)
    assert PKI_FILES | KUBEADM_FILES <= set(tree(root))
    # after init: the user keeps a file in k8s-sql's pki directory and edits kubeadm.yaml
    (root / "etc/kubernetes/pki/k8s-sql/user-ca.pem").write_text("the user's own CA bundle\n")
    with open(root / "etc/k8s-sql/kubeadm.yaml", "a") as f:
        f.write("# tuned by hand\n")
    before = tree(root)

    n, out = scratch_reset(root, cfg, dry_run=True)
    assert tree(root) == before  # a dry run changes nothing
    assert f"would remove {PKI_DIR}/ca.key" in out and "would remove /etc/k8s-sql/kubeadm.yaml" not in out

    n, out = scratch_reset(root, cfg)
    after = tree(root)
    user = {"/etc/k8s-sql/notes.txt", "/etc/kubernetes/kubeadm-flags.env", f"{PKI_DIR}/user-ca.pem"}
    files_left = {p for p, data in after.items() if data is not None}
    assert files_left == user | {"/etc/k8s-sql/kubeadm.yaml", "/var/lib/k8s-sql/state.json"}
    assert all(after[p] == before[p] for p in user | {"/etc/k8s-sql/kubeadm.yaml"})
    # directories: k8s-sql's empty patches dir goes; its pki dir (a user file in it) and the
    # user's /etc/k8s-sql stay; system directories stay
    assert "/etc/k8s-sql/patches" not in after
    assert {"/etc", "/etc/k8s-sql", "/etc/kubernetes", "/etc/kubernetes/pki", PKI_DIR} <= set(after)
    assert "keep /etc/k8s-sql/kubeadm.yaml: changed since k8s-sql wrote it" in out
    assert f"keep {PKI_DIR}: not empty: user-ca.pem" in out
    assert "/etc/k8s-sql/notes.txt" not in out.replace("keep", "")  # never k8s-sql's, not even mentioned
    # the record keeps what reset kept, so that a later reset can finish the job
    assert set(record_of(root)) == {"/etc/k8s-sql/kubeadm.yaml", PKI_DIR}

    n, out = scratch_reset(root, cfg)
    assert n == 0 and "up to date" in out and tree(root) == after

    # the user clears their changes: the next reset removes the rest, then the record itself
    os.unlink(root / "etc/kubernetes/pki/k8s-sql/user-ca.pem")
    (root / "etc/k8s-sql/kubeadm.yaml").write_bytes(before["/etc/k8s-sql/kubeadm.yaml"][:-len(b"# tuned by hand\n")])
    n, out = scratch_reset(root, cfg)
    final = tree(root)
    assert "/etc/k8s-sql/kubeadm.yaml" not in final and PKI_DIR not in final
    assert "/var/lib/k8s-sql" not in final and "/var/lib" in final  # the record and its dir; /var/lib is the system's
    assert {p for p, data in final.items() if data is not None} == \
        {"/etc/k8s-sql/notes.txt", "/etc/kubernetes/kubeadm-flags.env"}


def record_of(root) -> dict:
    doc = json.loads((root / "var/lib/k8s-sql/state.json").read_text())
    return {e["path"]: e for e in doc["entries"]}


def test_reset_then_init_on_a_scratch_root_equals_one_init(tmp_path):
    root = tmp_path / "root"
    cfg = scratch_config()
    scratch_init(root, cfg)
    first = {p: (d if d is None or not p.endswith((".key", ".crt")) else "pem")
             for p, d in tree(root).items() if p != "/var/lib/k8s-sql/state.json"}
    scratch_reset(root, cfg)
    assert {p for p, d in tree(root).items() if d is not None} == set()
    scratch_init(root, cfg)
    again = {p: (d if d is None or not p.endswith((".key", ".crt")) else "pem")
             for p, d in tree(root).items() if p != "/var/lib/k8s-sql/state.json"}
    assert again == first


@pytest.mark.parametrize("record", [True, False], ids=["with a record", "without a record"])
def test_reset_never_plans_a_system_path(tmp_path, record):
    """``paths.pkiDir: /etc`` and ``patchesDir: /usr`` (validation refuses them; here they
    are set directly, as if it were bypassed): init writes k8s-sql's files there, and reset
    plans nothing for /etc or /usr themselves — with a record, or on a node without one."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/tool").write_text("#!/bin/sh\n")
    cfg = scratch_config(pki_dir="/etc", patches_dir="/usr")
    scratch_init(root, cfg, record=record)
    if record:
        rec = record_of(root)
        assert "/etc" not in rec and "/usr" not in rec and "/etc/ca.crt" in rec
        # a record that names system directories (tampered with, or from a broken build)
        doc = json.loads((root / "var/lib/k8s-sql/state.json").read_text())
        doc["entries"] += [{"path": p, "kind": "dir"} for p in ("/", "/etc", "/usr", "/var/lib")]
        (root / "var/lib/k8s-sql/state.json").write_text(json.dumps(doc))
    ctx = scratch_ctx(root, cfg)
    planned = [c for c in Reset().plan(ctx) if isinstance(c, (RemoveFile, RemoveDir))]
    for change in planned:
        assert not is_system_path(change.path), change.describe()
        if not record:  # without a record, nothing of pkiDir/patchesDir when they are system directories
            assert os.path.dirname(change.path) not in ("/etc", "/usr") or change.path == "/etc/k8s-sql", \
                change.describe()
    n, out = scratch_reset(root, cfg)
    after = tree(root)
    assert after["/etc/passwd"] == b"root:x:0:0:root:/root:/bin/sh\n" and after["/usr/bin/tool"] == b"#!/bin/sh\n"
    if record:
        assert "/etc/ca.crt" not in after and "/usr/kube-apiserver+strategic.yaml" not in after
        for p in ("/", "/etc", "/usr", "/var/lib"):
            assert f"keep {p}: a system path: never removed" in out
    else:
        assert "/etc/ca.crt" in after and "/usr/kube-apiserver+strategic.yaml" in after


def other_ca_cert() -> bytes:
    """A self-signed certificate of a CA that is not k8s-sql's."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "corporate-ca")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=30)).sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


def test_reset_on_a_node_without_a_record_removes_only_files_that_are_k8s_sql_s(tmp_path):
    """A node set up by a k8s-sql that kept no record: reset checks each of k8s-sql's known
    files — header, issuing CA, matching key — and removes no directory that is not empty."""
    root = tmp_path / "root"
    cfg = scratch_config()
    scratch_init(root, cfg, record=False)
    assert not (root / "var/lib/k8s-sql").exists()
    (root / "etc/kubernetes/pki/k8s-sql/user-ca.pem").write_text("the user's own CA bundle\n")
    foreign = other_ca_cert()
    (root / "etc/kubernetes/pki/k8s-sql/shim-server.crt").write_bytes(foreign)  # the user put their own there
    (root / "etc/k8s-sql/kubeadm.yaml").write_text("# my own kubeadm configuration\napiVersion: v1\n")
    before = tree(root)
    n, out = scratch_reset(root, cfg)
    after = tree(root)
    assert "no record of what k8s-sql created (/var/lib/k8s-sql/state.json)" in out
    kept = {f"{PKI_DIR}/user-ca.pem", f"{PKI_DIR}/shim-server.crt", "/etc/k8s-sql/kubeadm.yaml",
            f"{PKI_DIR}/shim-server.key"}  # the key of a certificate that is not k8s-sql's: not provably k8s-sql's
    assert {p for p, d in after.items() if d is not None} == kept
    assert all(after[p] == before[p] for p in kept)
    assert f"keep {PKI_DIR}/shim-server.crt: not recorded, and its content is not k8s-sql's" in out
    assert "keep /etc/k8s-sql/kubeadm.yaml: not recorded, and its content is not k8s-sql's" in out
    assert f"remove {PKI_DIR}/ca.key (k8s-sql's, written before k8s-sql kept a record)" in out
    assert "/etc/k8s-sql/patches" not in after  # k8s-sql's directory, empty: gone
    assert PKI_DIR in after and "/etc/k8s-sql" in after  # not empty: kept


def test_reset_of_a_record_started_over_an_older_k8s_sql_s_files(tmp_path):
    """Set up by an older k8s-sql, then ``init`` again with this one, which re-creates a
    missing file: the record is marked legacy, and reset removes both kinds of file."""
    root = tmp_path / "root"
    cfg = scratch_config()
    scratch_init(root, cfg, record=False)
    os.unlink(root / "etc/k8s-sql/patches/kube-apiserver+strategic.yaml")
    scratch_init(root, cfg)
    assert set(record_of(root)) == {"/etc/k8s-sql/patches/kube-apiserver+strategic.yaml"}
    n, out = scratch_reset(root, cfg)
    assert {p for p, d in tree(root).items() if d is not None} == set()
    assert "/etc/k8s-sql" not in tree(root) and PKI_DIR not in tree(root)


def test_a_damaged_record_stops_reset_before_anything_is_removed(tmp_path):
    root = tmp_path / "root"
    cfg = scratch_config()
    scratch_init(root, cfg)
    (root / "var/lib/k8s-sql/state.json").write_text('{"entries": "everything"}')
    before = tree(root)
    with pytest.raises(K8sSqlError, match="damaged") as e:
        scratch_reset(root, cfg)
    assert e.value.where == "/var/lib/k8s-sql/state.json"
    assert tree(root) == before


def test_the_kubelet_package_s_keep_file_is_not_kubeadm_state(tmp_path):
    """The kubelet package ships ``/etc/kubernetes/manifests/.kubelet-keep``: on a node where
    kubeadm never ran, reset must not run ``kubeadm reset -f`` (it would empty
    ``/etc/kubernetes/pki``); a real static pod manifest is kubeadm state. (Seen in the VM test.)"""
    root = tmp_path / "root"
    (root / "etc/kubernetes/manifests").mkdir(parents=True)
    (root / "etc/kubernetes/manifests/.kubelet-keep").write_text("")
    cfg = scratch_config()
    scratch_init(root, cfg)
    n, out = scratch_reset(root, cfg, dry_run=True)
    assert "kubeadm reset" not in out
    (root / "etc/kubernetes/manifests/kube-apiserver.yaml").write_text("apiVersion: v1\nkind: Pod\n")
    with pytest.raises(Exception, match="kubeadm state but kubeadm is not installed"):
        scratch_reset(root, cfg, dry_run=True)
