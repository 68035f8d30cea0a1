"""``k8s-sql status`` against the session's throwaway PostgreSQL and a real ``k8s-sql shim
serve`` (mTLS) holding keys written through the etcd API, and its exit status (1 when a
part the node should run is down).

kubectl and a running API server do not exist here: some tests put a stand-in ``kubectl``
(a shell script answering ``get --raw /readyz`` and ``get nodes -o json``) first on PATH;
the others show the API server as down, which is what status must do then. Every
configuration points ``paths.manifestsDir`` and ``paths.kubeconfig`` into the test's own
directory, so what the node runs (control plane, worker) is what the test set up.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import uuid

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "shim"))
_spec = importlib.util.spec_from_file_location("shim_fixtures", os.path.join(HERE, "shim", "conftest.py"))
shim_fixtures = importlib.util.module_from_spec(_spec)
sys.modules["shim_fixtures"] = shim_fixtures  # dataclasses look their module up
_spec.loader.exec_module(shim_fixtures)

from etcd_server import free_port, make_tls  # noqa: E402
from k8s_sql.shim.etcdpb import rpc_pb2, rpc_pb2_grpc  # noqa: E402

KUBECTL = """#!/bin/sh
# stand-in kubectl: an API server that is ready, with one control-plane node
case "$*" in
  *"get --raw /readyz"*) echo ok ;;
  *"get nodes -o json"*) cat <<'EOF'
{"items": [{"metadata": {"name": "cp1", "labels": {"node-role.kubernetes.io/control-plane": ""}},
  "status": {"conditions": [{"type": "Ready", "status": "True"}], "nodeInfo": {"kubeletVersion": "v1.34.2"}}}]}
EOF
  ;;
  *) echo "stand-in kubectl: unexpected $*" >&2; exit 1 ;;
esac
"""


@pytest.fixture(scope="module")
def running(pg, tmp_path_factory):
    """A shim on its own database with three keys under /registry/ and one compaction."""
    tls = make_tls(tmp_path_factory.mktemp("status-pki"))
    db = f"status_{uuid.uuid4().hex[:8]}"
    shim = shim_fixtures.ShimProcess(pg.create_database(db), tls).start()
    with shim.channel() as ch:
        kv = rpc_pb2_grpc.KVStub(ch)
        for i in range(3):
            kv.Put(rpc_pb2.PutRequest(key=f"/registry/pods/default/p{i}".encode(), value=b"x"))
        kv.Put(rpc_pb2.PutRequest(key=b"/registry/pods/default/p0", value=b"y"))
        rev = kv.Put(rpc_pb2.PutRequest(key=b"/registry/pods/default/p1", value=b"y")).header.revision
        kv.Compact(rpc_pb2.CompactionRequest(revision=rev - 1))
    yield shim, db, rev, os.path.dirname(tls.ca_file)
    shim.stop()


def write_config(tmp_path, pg, db, shim, pki_dir, **over) -> str:
    path = tmp_path / "cluster.yaml"
    path.write_text(
        "apiVersion: k8s-sql.io/v1alpha1\nkind: Cluster\n"
        f"postgres: {{socketDir: {pg.socket_dir}, port: {over.get('pg_port', pg.port)}, database: {db}, "
        f"configDir: {pg.config_dir}}}\n"
        f"shim: {{port: {shim.port}, metricsPort: {over.get('metrics_port', shim.metrics_port)}}}\n"
        f"paths: {{pkiDir: {pki_dir}, kubeconfig: {over.get('kubeconfig', tmp_path / 'admin.conf')}, "
        f"manifestsDir: {tmp_path / 'manifests'}}}\n")
    return str(path)


def status(*args, env=None, rc=0) -> subprocess.CompletedProcess:
    full = {**os.environ, "COLUMNS": "250", **(env or {})}
    r = subprocess.run([sys.executable, "-m", "k8s_sql", "status", *args], capture_output=True, text=True,
                       env=full, timeout=120)
    assert r.returncode == rc, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    return r


def ready_api_server(tmp_path) -> dict:
    """The stand-in kubectl first on PATH and an admin kubeconfig: the env for :func:`status`."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "kubectl").write_text(KUBECTL)
    (bindir / "kubectl").chmod(0o755)
    (tmp_path / "admin.conf").write_text("apiVersion: v1\nkind: Config\n")
    return {"PATH": f"{bindir}:{os.environ['PATH']}"}


def rows(table: str) -> dict:
    return {line.split("│")[1].strip(): line for line in table.splitlines() if line.count("│") >= 3}


def test_json_reports_postgres_and_shim_with_the_same_revisions(running, pg, tmp_path):
    shim, db, rev, pki = running
    data = json.loads(status("-c", write_config(tmp_path, pg, db, shim, pki), "-o", "json", "--fail-on", "none").stdout)
    assert data["role"] == {"kind": "new", "postgres": "local", "postgres_host": None}
    assert data["down"] == ["apiserver"]
    p = data["postgres"]
    assert p["up"] and p["tls"] is False  # the test cluster has no TLS; the postgres phase turns it on
    assert p["keys"] == 3
    assert p["revision"] == rev and p["compact_revision"] == rev - 1
    assert p["revisions_kept"] >= 1 and p["database_bytes"] > 0
    size = int(pg.psql(f"SELECT pg_database_size('{db}')"))
    assert abs(p["database_bytes"] - size) < 1024 * 1024
    s = data["shim"]
    assert s["up"] and s["health"] and s["version"] == shim.emulated_etcd_version
    assert s["revision"] == rev and s["compact_revision"] == rev - 1
    assert data["apiserver"]["up"] is False and "does not exist" in data["apiserver"]["reason"]
    certs = {os.path.basename(c["path"]): c for c in data["certificates"]}
    assert certs["ca.crt"]["state"] == "ok" and certs["ca.crt"]["days_left"] == 0  # make_tls: valid one day
    from cryptography import x509
    ca = x509.load_pem_x509_certificate(open(os.path.join(pki, "ca.crt"), "rb").read())
    assert certs["ca.crt"]["not_after"] == ca.not_valid_after_utc.isoformat()
    assert certs["shim-server.crt"]["state"] == "missing"  # make_tls names it server.crt


def test_table_with_a_ready_api_server(running, pg, tmp_path):
    """Everything up: exit 0."""
    shim, db, rev, pki = running
    env = ready_api_server(tmp_path)
    cfg = write_config(tmp_path, pg, db, shim, pki)
    out = status("-c", cfg, env=env).stdout
    rows_ = rows(out)
    assert "up" in rows_["PostgreSQL"] and "3 keys" in rows_["PostgreSQL"] and f"revision {rev}" in rows_["PostgreSQL"]
    assert "up" in rows_["etcd shim"] and f"revision {rev}" in rows_["etcd shim"]
    assert "up" in rows_["API server"] and "/readyz ok" in rows_["API server"]
    assert "Ready" in rows_["node cp1"] and "control-plane" in rows_["node cp1"]


def test_unreachable_parts_are_down_not_errors(running, pg, tmp_path):
    shim, db, rev, pki = running
    cfg = write_config(tmp_path, pg, db, shim, pki, pg_port=free_port(), metrics_port=free_port())
    data = json.loads(status("-c", cfg, "-o", "json", rc=1).stdout)
    assert data["postgres"]["up"] is False and "socket" in data["postgres"]["reason"]
    assert data["shim"]["up"] is False and "no answer on http://127.0.0.1:" in data["shim"]["reason"]
    assert data["down"] == ["postgres", "shim", "apiserver"]
    out = status("-c", cfg, rc=1).stdout
    assert out.count("down") >= 3
    # --fail-on none: the same report, exit 0 (1 would then only mean status could not look)
    assert status("-c", cfg, "--fail-on", "none").stdout == out
    r = status("-c", cfg, "--fail-on", "sometimes", rc=2)
    assert "--fail-on" in r.stderr


def test_one_part_down_is_exit_1(running, pg, tmp_path):
    """PostgreSQL and the API server up, the shim not answering: exit 1, and only the shim
    is reported down."""
    shim, db, rev, pki = running
    env = ready_api_server(tmp_path)
    cfg = write_config(tmp_path, pg, db, shim, pki, metrics_port=free_port())
    data = json.loads(status("-c", cfg, "-o", "json", env=env, rc=1).stdout)
    assert data["down"] == ["shim"] and data["postgres"]["up"] and data["apiserver"]["up"]
    assert "down" in rows(status("-c", cfg, env=env, rc=1).stdout)["etcd shim"]


def test_worker_runs_none_of_the_parts(running, pg, tmp_path):
    """kubeadm's kubelet.conf and no kube-apiserver static pod: a worker. PostgreSQL, the
    shim and the API server are not this node's; nothing is probed, exit 0."""
    shim, db, rev, pki = running
    (tmp_path / "kubelet.conf").write_text("apiVersion: v1\nkind: Config\n")
    cfg = write_config(tmp_path, pg, db, shim, pki, pg_port=free_port(), metrics_port=free_port())
    data = json.loads(status("-c", cfg, "-o", "json").stdout)
    assert data["role"]["kind"] == "worker" and data["down"] == []
    for part in ("postgres", "shim", "apiserver"):
        assert data[part]["expected"] is False and "a worker" in data[part]["reason"]
    assert [os.path.basename(c["path"]) for c in data["certificates"]] == ["ca.crt"]  # only those that are there
    out = status("-c", cfg).stdout
    assert "(worker node)" in out and "down" not in out


def joined_manifest(tmp_path, pki, first_node: str) -> None:
    """The kube-apiserver static pod of a node joined with ``--control-plane``: kubeadm's
    manifest with the sidecar patch rendered for the first node's PostgreSQL (as join does)."""
    from k8s_sql.config import Cluster
    from k8s_sql.kubeadm import manifest, sidecar, yamlio

    fixture = os.path.join(HERE, "fixtures/manifests/kube-apiserver-1.34.yaml")
    cfg = Cluster()
    cfg.paths.pki_dir = pki
    cfg.postgres.host = first_node
    pod = manifest.apply_patch_file(open(fixture).read(), sidecar.patch_text(cfg), fixture)
    (tmp_path / "manifests").mkdir()
    (tmp_path / "manifests/kube-apiserver.yaml").write_text(yamlio.dump(pod))


def test_joined_control_plane_does_not_run_postgres(running, pg, tmp_path):
    """A control-plane node whose sidecar connects to another node's PostgreSQL: PostgreSQL
    is not expected here (not probed), the shim and the API server are."""
    shim, db, rev, pki = running
    env = ready_api_server(tmp_path)
    joined_manifest(tmp_path, pki, "192.0.2.10")
    cfg = write_config(tmp_path, pg, db, shim, pki, pg_port=free_port())
    data = json.loads(status("-c", cfg, "-o", "json", env=env).stdout)
    assert data["role"] == {"kind": "control-plane", "postgres": "remote", "postgres_host": "192.0.2.10"}
    assert data["down"] == [] and data["shim"]["up"] and data["apiserver"]["up"]
    assert data["postgres"]["expected"] is False and "192.0.2.10" in data["postgres"]["reason"]
    # its shim down: exit 1
    cfg = write_config(tmp_path, pg, db, shim, pki, pg_port=free_port(), metrics_port=free_port())
    assert json.loads(status("-c", cfg, "-o", "json", env=env, rc=1).stdout)["down"] == ["shim"]


def test_first_control_plane_runs_postgres(running, pg, tmp_path):
    """The sidecar's datastore on 127.0.0.1 (what init renders): PostgreSQL is this node's."""
    shim, db, rev, pki = running
    env = ready_api_server(tmp_path)
    joined_manifest(tmp_path, pki, "127.0.0.1")
    cfg = write_config(tmp_path, pg, db, shim, pki, pg_port=free_port())
    data = json.loads(status("-c", cfg, "-o", "json", env=env, rc=1).stdout)
    assert data["role"]["kind"] == "control-plane" and data["role"]["postgres"] == "local"
    assert data["down"] == ["postgres"]


def test_kubeadm_ca_with_serial_number_zero(tmp_path):
    """kubeadm before Kubernetes 1.28 made CAs with serial number 0 (kubernetes#117790);
    status reads them (here made by openssl) without cryptography's deprecation warning
    turning into an error."""
    import warnings

    from k8s_sql import status as statusmod
    from k8s_sql.config import Cluster
    from k8s_sql.host import LocalHost

    kubeadm_pki = tmp_path / "kubernetes-pki"
    (kubeadm_pki / "etcd").mkdir(parents=True)
    for path in (kubeadm_pki / "ca.crt", kubeadm_pki / "etcd/ca.crt"):
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                        "-keyout", str(tmp_path / "ca.key"), "-out", str(path), "-days", "3650",
                        "-subj", "/CN=kubernetes", "-set_serial", "0"], check=True, capture_output=True)
    cfg = Cluster()
    cfg.paths.pki_dir = str(tmp_path / "k8s-sql-pki")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = statusmod.certificates(LocalHost(), cfg, kubeadm_pki=str(kubeadm_pki), needed=frozenset())
    assert [(os.path.relpath(c["path"], kubeadm_pki), c["state"]) for c in got] == \
        [("ca.crt", "ok"), ("etcd/ca.crt", "ok")]
    assert all(3649 <= c["days_left"] <= 3650 for c in got)


def test_datastore_ca_with_serial_number_zero_through_the_cli(running, pg, tmp_path):
    """The same through ``k8s-sql status`` with warnings as errors (``PYTHONWARNINGS=error``):
    a datastore CA with serial number 0 is an ok certificate, not a traceback."""
    shim, db, rev, pki = running
    mine = tmp_path / "pki"
    mine.mkdir()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(tmp_path / "ca.key"), "-out", str(mine / "ca.crt"), "-days", "3650",
                    "-subj", "/CN=kubernetes", "-set_serial", "0"], check=True, capture_output=True)
    cfg = write_config(tmp_path, pg, db, shim, str(mine))
    for env in ({}, {"PYTHONWARNINGS": "error"}):
        r = status("-c", cfg, "-o", "json", "--fail-on", "none", env=env)
        assert "Warning" not in r.stderr
        ca = {os.path.basename(c["path"]): c for c in json.loads(r.stdout)["certificates"]}["ca.crt"]
        assert ca["state"] == "ok" and ca["days_left"] >= 3649


def test_status_over_ssh_matches_the_local_view(running, pg, tmp_path):
    """The same probes through a real sshd on 127.0.0.1 (tests/sshd.py): same node, same data."""
    from sshd import Sshd

    shim, db, rev, pki = running
    cfg = write_config(tmp_path, pg, db, shim, pki)
    server = Sshd().start()
    try:
        remote = json.loads(status("-c", cfg, "-o", "json", "--fail-on", "none", "--host", "root@127.0.0.1",
                                   "--ssh-port",
                                   str(server.port), "--ssh-key", server.client_key, "--ssh-known-hosts",
                                   server.known_hosts).stdout)
    finally:
        server.stop()
    local = json.loads(status("-c", cfg, "-o", "json", "--fail-on", "none").stdout)
    assert remote["host"] == "127.0.0.1" and local["host"] == "localhost"
    for part in ("role", "shim", "apiserver", "certificates", "down"):
        assert remote[part] == local[part]
    drop = lambda d: {k: v for k, v in d.items() if k != "database_bytes"}  # noqa: E731 (may grow meanwhile)
    assert drop(remote["postgres"]) == drop(local["postgres"])
    assert remote["postgres"]["keys"] == 3 and remote["shim"]["revision"] == rev
