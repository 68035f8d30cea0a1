"""``k8s-sql join`` with the joining node reached through a real sshd on 127.0.0.1.

kubeadm cannot run here: a stand-in ``kubeadm`` shell script (first on PATH locally and,
through sshd's SetEnv, in the SSH sessions) logs its arguments, prints a join command for
``token create --print-join-command``, a certificate key for ``init phase upload-certs``,
and on ``join --config FILE`` keeps a copy of FILE and its mode (the test reads the
JoinConfiguration kubeadm would get) and writes kubelet.conf as kubeadm does; ``join``
without ``--config`` fails, as a real kubeadm would be misconfigured. The prereqs phase is skipped (it
would install packages on this machine; it has its own tests), and so is the shim phase
(it builds an image with a container runtime).

The control-plane join is real on the datastore side: the first node is this machine with
its own throwaway PostgreSQL (it gets reconfigured and restarted, so not the session's),
set up by ``init phase pki`` and ``init phase postgres``; the joining node is the same
machine over SSH with its files in another directory. Its shim is started from the
command line in the sidecar patch join wrote, and must reach the first node's PostgreSQL
over TCP at the first node's (non-loopback) address with verify-full.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import psycopg
import pytest
import yaml
from rich.console import Console

from k8s_sql.cli.common import make_context
from k8s_sql.config import Cluster, load_file
from k8s_sql.errors import K8sSqlError
from k8s_sql.host import LocalHost
from k8s_sql.phases.join import CONTROL_PLANE_PKI, Join, run_join
from k8s_sql.kubeadm import sidecar
from k8s_sql.kubeadm.yamlio import load as load_yaml
from k8s_sql.remote import open_host
from pgcluster import TempPostgres, free_port
from sshd import Sshd

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "shim"))
from etcd_server import ETCDCTL  # noqa: E402

TOKEN = "abcdef.0123456789abcdef"
CA_HASH = "sha256:" + "ab" * 32
CERT_KEY = "c0" * 32
KUBEADM = f"""#!/bin/sh
echo "$*" >>"{{log}}"
case "$1 $2" in
  "token create") echo "kubeadm join 192.0.2.10:6443 --token {TOKEN} --discovery-token-ca-cert-hash {CA_HASH} " ;;
  "init phase") echo "[upload-certs] Storing the certificates in Secret kubeadm-certs"
                echo "[upload-certs] Using certificate key:"; echo "{CERT_KEY}" ;;
  "join --config") cp "$3" "{{join_config}}"; stat -c %a "$3" >"{{join_config}}.mode"
            mkdir -p "$(dirname "{{kubelet_conf}}")"; echo "kind: Config" >"{{kubelet_conf}}"
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
    script.write_text(KUBEADM.format(log=base / "kubeadm.log", kubelet_conf=node / "kubernetes/kubelet.conf",
                                     join_config=base / "join-config.yaml"))
    script.chmod(0o755)
    path = f"{bindir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    server = Sshd(path=path).start()
    yield {"base": base, "bin": bindir, "node": node, "sshd": server, "log": base / "kubeadm.log",
           "join_config": base / "join-config.yaml"}
    server.stop()


def config(env) -> Cluster:
    cfg = Cluster()
    n = env["node"]
    cfg.paths.kubeconfig = str(n / "kubernetes/admin.conf")
    cfg.paths.pki_dir = str(n / "kubernetes/pki/k8s-sql")
    cfg.paths.patches_dir = str(n / "k8s-sql/patches")
    cfg.paths.state_file = str(n / "state.json")
    return cfg


def reset_node(env):
    for p in (env["node"] / "kubernetes/kubelet.conf", env["log"], env["join_config"],
              env["join_config"].with_name("join-config.yaml.mode")):
        if p.exists():
            p.unlink()


def log(env) -> list[str]:
    return env["log"].read_text().splitlines() if env["log"].exists() else []


def join_config(env) -> tuple[dict, str]:
    """The JoinConfiguration the stand-in kubeadm was given, and the file's mode then."""
    return (yaml.safe_load(env["join_config"].read_text()),
            env["join_config"].with_name("join-config.yaml.mode").read_text().strip())


def test_worker_join_over_ssh_with_a_fresh_token(env, tmp_path):
    reset_node(env)
    sshd = env["sshd"]
    admin = env["node"] / "kubernetes/admin.conf"
    admin.parent.mkdir(parents=True, exist_ok=True)
    admin.write_text("kind: Config\n")
    cfg_file = tmp_path / "cluster.yaml"
    cfg_file.write_text(f"apiVersion: k8s-sql.io/v1alpha1\nkind: Cluster\nkubernetes: {{version: v1.28.15}}\n"
                        f"paths: {{kubeconfig: {admin}, kubeadmConfig: {tmp_path}/kubeadm.yaml}}\n")
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
    path = tmp_path / "kubeadm-join.yaml"
    assert log(env) == ["token create --print-join-command --ttl 15m", f"join --config {path}"]
    doc, mode = join_config(env)
    assert mode == "600"
    assert doc == {"apiVersion": "kubeadm.k8s.io/v1beta3", "kind": "JoinConfiguration",  # 1.28: v1beta3
                   "discovery": {"bootstrapToken": {"apiServerEndpoint": "192.0.2.10:6443", "token": TOKEN,
                                                    "caCertHashes": [CA_HASH]}},
                   "nodeRegistration": {"name": socket.gethostname().lower(),
                                        "criSocket": "unix:///var/run/crio/crio.sock"}}
    assert not path.exists()  # the token's file is gone after the join
    assert "[127.0.0.1] This node has joined the cluster" in r.stdout
    assert TOKEN not in r.stdout + r.stderr and f"kubeadm join --config {path}" in r.stdout

    again = subprocess.run(args, capture_output=True, text=True, env=run_env, timeout=120)
    assert again.returncode == 0 and "already part of a cluster" in again.stdout
    assert len(log(env)) == 2


def test_first_node_not_initialised(env, tmp_path):
    cfg = config(env)
    cfg.paths.kubeconfig = str(tmp_path / "missing/admin.conf")
    ctx = make_context(cfg, host=LocalHost(root=str(tmp_path / "joining")))
    with pytest.raises(K8sSqlError, match="not initialised") as e:
        Join(make_context(cfg, host=LocalHost(root=str(tmp_path / "first"))), control_plane=False).plan(ctx)
    assert "k8s-sql init" in e.value.hint


def test_join_needs_a_remote_side():
    r = subprocess.run([sys.executable, "-m", "k8s_sql", "join", "--dry-run"], capture_output=True, text=True)
    assert r.returncode == 2 and "--control-plane-host" in r.stderr


@pytest.mark.parametrize("args,words", [
    (["--apiserver-advertise-address", "192.0.2.12"], "add --control-plane"),
    (["--control-plane", "--apiserver-advertise-address", "cp2"], "'cp2' is not an IP address"),
])
def test_join_usage_errors(args, words):
    r = subprocess.run([sys.executable, "-m", "k8s_sql", "join", "--host", "root@192.0.2.12", "--dry-run", *args],
                       capture_output=True, text=True, env={**os.environ, "COLUMNS": "250"})
    assert r.returncode == 2 and words in " ".join(r.stderr.split()), r.stderr


# --- a further control-plane node -------------------------------------------------------

def global_address() -> str | None:
    """This machine's first global IPv4 address, standing for the first node's."""
    res = subprocess.run(["ip", "-j", "addr", "show", "scope", "global"], capture_output=True, text=True)
    for link in json.loads(res.stdout or "[]") if res.returncode == 0 else []:
        for a in link.get("addr_info", []):
            if a.get("family") == "inet":
                return a["local"]
    return None


def node_config(path, base, pgc, shim_port, metrics_port, kubeconfig, address) -> str:
    """A configuration file whose paths are all under ``base``."""
    with open(path, "w") as f:
        f.write(f"apiVersion: k8s-sql.io/v1alpha1\nkind: Cluster\nnode: {{name: cp1, advertiseAddress: '{address}'}}\n"
                f"paths: {{pkiDir: {base}/pki, backupDir: {base}/backup, patchesDir: {base}/patches, "
                f"kubeadmConfig: {base}/kubeadm.yaml, postgresClients: {base}/postgres-clients, "
                f"kubeconfig: {kubeconfig}, stateFile: {base}/state.json}}\n"
                f"postgres: {{configDir: {pgc.config_dir}, dataDir: {pgc.data_dir}, socketDir: {pgc.socket_dir}, "
                f"port: {pgc.port}, version: '{pgc.major}'}}\n"
                f"shim: {{port: {shim_port}, metricsPort: {metrics_port}}}\n")
    return str(path)


def quiet(ctx, sink):
    ctx.console = Console(file=sink, width=250)
    return ctx


@pytest.fixture(scope="module")
def cp_node(env):
    """The first control-plane node: this machine, its own PostgreSQL configured by
    ``init phase pki`` and ``init phase postgres``, files in a 0755 temp dir (postgres must
    reach its key), an admin.conf; and the joining node's configuration (files under the
    ssh fixture's node directory, where the stand-in kubeadm writes kubelet.conf)."""
    address = global_address()
    if address is None:
        pytest.skip("needs a network interface with a global address to stand for the first node's address")
    pgc = TempPostgres().init().start()
    base = tempfile.mkdtemp(prefix="k8s-sql-cp1-")
    os.chmod(base, 0o755)
    admin = os.path.join(base, "admin.conf")
    with open(admin, "w") as f:
        f.write("kind: Config\n")
    ports = (free_port(), free_port())
    first = node_config(os.path.join(base, "first.yaml"), base, pgc, *ports, admin, address)
    second = node_config(env["base"] / "second.yaml", env["node"] / "k8s-sql", pgc, *ports,
                         env["node"] / "kubernetes/admin.conf", address)
    for phase in ("pki", "postgres"):
        r = subprocess.run([sys.executable, "-m", "k8s_sql", "init", "phase", phase, "-c", first],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
    from k8s_sql.kubeadm import config as kconfig  # the kubeadm.yaml of init (controlPlaneEndpoint)

    with open(os.path.join(base, "kubeadm.yaml"), "w") as f:
        f.write(kconfig.render(load_file(first), advertise_address=address, cri_socket="unix:///x.sock"))
    yield {"pgc": pgc, "base": base, "first": first, "second": second, "address": address}
    pgc.destroy()
    shutil.rmtree(base, ignore_errors=True)


def contexts(env, cp_node, sink, dry_run=False):
    target = open_host("root@127.0.0.1", port=env["sshd"].port, key_file=env["sshd"].client_key,
                       known_hosts=env["sshd"].known_hosts)
    cp = quiet(make_context(load_file(cp_node["first"]), dry_run=dry_run, host=LocalHost()), sink)
    return cp, quiet(make_context(load_file(cp_node["second"]), dry_run=dry_run, host=target), sink), target


def hba_lines(pgc) -> list[str]:
    return [ln.split() for ln in open(os.path.join(pgc.config_dir, "pg_hba.conf")) if ln.startswith("hostssl")]


def test_control_plane_dry_run_changes_nothing(env, cp_node, monkeypatch):
    reset_node(env)
    monkeypatch.setenv("PATH", f"{env['bin']}:{os.environ['PATH']}")
    pgc, addr = cp_node["pgc"], cp_node["address"]
    hba_before = open(os.path.join(pgc.config_dir, "pg_hba.conf")).read()
    sink = io.StringIO()
    cp, node, target = contexts(env, cp_node, sink, dry_run=True)
    try:
        run_join(cp, node, control_plane=True, skip=frozenset({"prereqs", "shim"}))
    finally:
        target.close()
    out = sink.getvalue()
    assert f"+{addr}  # control-plane node 127.0.0.1" in out
    assert f"+hostssl   kubernetes k8s_sql {addr}/32 cert" in out
    assert "would restart PostgreSQL" in out and f"listen_addresses = '127.0.0.1,::1,{addr}'" in out
    assert f"--datastore=postgresql://k8s_sql@{addr}:{pgc.port}/kubernetes?sslmode=verify-full" in out
    assert "would kubeadm join as a control-plane node" in out
    assert out.count("nothing was changed") == 1
    assert open(os.path.join(pgc.config_dir, "pg_hba.conf")).read() == hba_before
    assert not os.path.exists(os.path.join(cp_node["base"], "postgres-clients"))
    assert not (env["node"] / "k8s-sql").exists() and log(env) == []


def test_control_plane_join_runs_its_own_shim_against_the_first_nodes_postgresql(env, cp_node, monkeypatch):
    reset_node(env)
    monkeypatch.setenv("PATH", f"{env['bin']}:{os.environ['PATH']}")
    pgc, addr = cp_node["pgc"], cp_node["address"]
    first_pki = os.path.join(cp_node["base"], "pki")
    probe = (f"host={addr} port={pgc.port} dbname=kubernetes user=k8s_sql sslmode=verify-full "
             f"sslrootcert={first_pki}/ca.crt sslcert={first_pki}/shim-postgres-client.crt "
             f"sslkey={first_pki}/shim-postgres-client.key connect_timeout=5")
    with pytest.raises(psycopg.OperationalError):  # loopback only so far
        psycopg.connect(probe).close()

    sink = io.StringIO()
    cp, node, target = contexts(env, cp_node, sink)
    try:
        run_join(cp, node, control_plane=True, skip=frozenset({"prereqs", "shim"}),
                 apiserver_advertise_address="192.0.2.12")
    finally:
        target.close()
    out = sink.getvalue()

    # the first node: the address listed, a pg_hba line for it, PostgreSQL listening on it
    assert open(os.path.join(cp_node["base"], "postgres-clients")).read().splitlines()[-1] == \
        f"{addr}  # control-plane node 127.0.0.1"
    assert ["hostssl", "kubernetes", "k8s_sql", f"{addr}/32", "cert"] in hba_lines(pgc)
    assert addr in pgc.psql("SHOW listen_addresses").split(",")
    # the joining node: only the certificates its shim and kube-apiserver need, modes and owners kept
    pki = env["node"] / "k8s-sql/pki"
    assert sorted(os.listdir(pki)) == sorted(CONTROL_PLANE_PKI)
    local = LocalHost()
    for name in CONTROL_PLANE_PKI:
        a, b = local.stat(os.path.join(first_pki, name)), local.stat(str(pki / name))
        assert (b.mode, b.owner, b.group) == (a.mode, a.owner, a.group), name
    assert local.stat(str(pki / "shim-server.key")).mode == 0o600
    assert "reached: TLSv1.3 as role k8s_sql" in out
    path = env["node"] / "k8s-sql/kubeadm-join.yaml"
    assert log(env)[-1] == f"join --config {path}"
    doc, mode = join_config(env)
    assert mode == "600" and not path.exists()
    assert doc["apiVersion"] == "kubeadm.k8s.io/v1beta4"  # the default version, 1.31 and later
    assert doc["discovery"] == {"bootstrapToken": {"apiServerEndpoint": "192.0.2.10:6443", "token": TOKEN,
                                                   "caCertHashes": [CA_HASH]}}
    assert doc["controlPlane"] == {"localAPIEndpoint": {"advertiseAddress": "192.0.2.12", "bindPort": 6443},
                                   "certificateKey": CERT_KEY}
    assert doc["patches"] == {"directory": str(env["node"] / "k8s-sql/patches")}  # where the sidecar patch is
    assert TOKEN not in out and CERT_KEY not in out

    # the joining node's shim, started with the sidecar's own command line, serves etcdctl
    patch_file = env["node"] / "k8s-sql/patches" / sidecar.PATCH_FILE
    pod = load_yaml(patch_file.read_text(), str(patch_file))
    shim = next(c for c in pod["spec"]["containers"] if c["name"] == sidecar.CONTAINER_NAME)
    assert f"--datastore=postgresql://k8s_sql@{addr}:{pgc.port}/kubernetes?sslmode=verify-full" in " ".join(shim["args"])
    proc = subprocess.Popen([sys.executable, "-m", "k8s_sql", *shim["args"]], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        cfg = load_file(cp_node["second"])
        etcdctl = [ETCDCTL, "--endpoints", f"https://127.0.0.1:{cfg.shim.port}", "--cacert", str(pki / "ca.crt"),
                   "--cert", str(pki / "apiserver-shim-client.crt"), "--key", str(pki / "apiserver-shim-client.key"),
                   "--dial-timeout", "2s", "--command-timeout", "10s"]
        run = lambda *a: subprocess.run([*etcdctl, *a], capture_output=True, text=True, timeout=30,  # noqa: E731
                                        env={**os.environ, "ETCDCTL_API": "3"})
        deadline = time.monotonic() + 30
        while run("put", "/registry/ns/cp2", "joined").returncode != 0:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else "timeout"
            time.sleep(0.5)
        assert run("get", "/registry/ns/cp2", "--print-value-only").stdout.strip() == "joined"
        rows = pgc.psql("SELECT a.client_addr, s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) "
                        "WHERE a.usename = 'k8s_sql' AND a.datname = 'kubernetes'").splitlines()
        assert f"{addr}|t" in rows, rows
    finally:
        proc.terminate()
        proc.wait(10)

    # again: nothing to do on either node; a later `init phase postgres` keeps the joined node
    sink = io.StringIO()
    cp, node, target = contexts(env, cp_node, sink)
    try:
        assert run_join(cp, node, control_plane=True, skip=frozenset({"prereqs", "shim"})) == 0
    finally:
        target.close()
    assert "already part of a cluster" in sink.getvalue()
    r = subprocess.run([sys.executable, "-m", "k8s_sql", "init", "phase", "postgres", "-c", cp_node["first"]],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "up to date" in r.stdout, r.stdout + r.stderr
    assert ["hostssl", "kubernetes", "k8s_sql", f"{addr}/32", "cert"] in hba_lines(pgc)


def test_first_node_config_is_the_one_init_recorded_there(tmp_path):
    """The first node's configuration is read from the first node (what init recorded), not
    taken from the joining node's file; a first node without the record falls back to the
    joining configuration and says so."""
    from k8s_sql.config import dump
    from k8s_sql.phases.join import first_node_config

    joining = Cluster()
    joining.paths.state_file = "/srv/k8s-sql/state.json"
    first = Cluster()
    first.postgres.port, first.paths.pki_dir, first.node.name = 5433, "/etc/k8s-sql-pki", "cp1"
    root = tmp_path / "first"
    (root / "srv/k8s-sql").mkdir(parents=True)
    (root / "srv/k8s-sql/cluster.yaml").write_text(dump(first))
    cfg, source = first_node_config(LocalHost(root=str(root)), joining)
    assert (cfg.postgres.port, cfg.paths.pki_dir, cfg.node.name) == (5433, "/etc/k8s-sql-pki", "cp1")
    assert source == "localhost:/srv/k8s-sql/cluster.yaml"
    (root / "srv/k8s-sql/cluster.yaml").unlink()
    cfg, source = first_node_config(LocalHost(root=str(root)), joining)
    assert dump(cfg) == dump(joining) and "the joining node's configuration (no /var/lib/k8s-sql/cluster.yaml" in source


def test_cli_join_uses_the_first_nodes_recorded_configuration(env, tmp_path):
    """Through the command line: the first node (this machine) has its admin kubeconfig
    where its recorded configuration says, not where the joining file says; join finds it."""
    reset_node(env)
    sshd = env["sshd"]
    stale = env["node"] / "kubernetes/admin.conf"
    if stale.exists():
        stale.unlink()
    first_admin = tmp_path / "first/admin.conf"
    first_admin.parent.mkdir()
    first_admin.write_text("kind: Config\n")
    (tmp_path / "cluster.yaml").write_text("apiVersion: k8s-sql.io/v1alpha1\nkind: Cluster\n"
                                          f"paths: {{kubeconfig: {first_admin}}}\n")
    cfg_file = tmp_path / "joining.yaml"
    cfg_file.write_text("apiVersion: k8s-sql.io/v1alpha1\nkind: Cluster\n"
                        f"paths: {{kubeconfig: {stale}, stateFile: {tmp_path}/state.json, "
                        f"kubeadmConfig: {tmp_path}/kubeadm.yaml}}\n")
    args = [sys.executable, "-m", "k8s_sql", "join", "-c", str(cfg_file), "--host", "root@127.0.0.1",
            "--ssh-port", str(sshd.port), "--ssh-key", sshd.client_key, "--ssh-known-hosts", sshd.known_hosts,
            "--skip-phases", "prereqs"]
    run_env = {**os.environ, "PATH": f"{env['bin']}:{os.environ['PATH']}", "COLUMNS": "250"}
    r = subprocess.run(args, capture_output=True, text=True, env=run_env, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"first node's configuration: localhost:{tmp_path}/cluster.yaml" in r.stdout
    assert log(env)[-1] == f"join --config {tmp_path}/kubeadm-join.yaml"
    assert join_config(env)[0]["discovery"]["bootstrapToken"]["apiServerEndpoint"] == "192.0.2.10:6443"
