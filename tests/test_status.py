"""``k8s-sql status`` against the session's throwaway PostgreSQL and a real ``k8s-sql shim
serve`` (mTLS) holding keys written through the etcd API.

kubectl and a running API server do not exist here: one test puts a stand-in ``kubectl``
(a shell script answering ``get --raw /readyz`` and ``get nodes -o json``) first on PATH;
the others show the API server as down, which is what status must do then.
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
        f"paths: {{pkiDir: {pki_dir}, kubeconfig: {over.get('kubeconfig', tmp_path / 'admin.conf')}}}\n")
    return str(path)


def status(*args, env=None) -> subprocess.CompletedProcess:
    full = {**os.environ, "COLUMNS": "250", **(env or {})}
    r = subprocess.run([sys.executable, "-m", "k8s_sql", "status", *args], capture_output=True, text=True,
                       env=full, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def test_json_reports_postgres_and_shim_with_the_same_revisions(running, pg, tmp_path):
    shim, db, rev, pki = running
    data = json.loads(status("-c", write_config(tmp_path, pg, db, shim, pki), "-o", "json").stdout)
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
    shim, db, rev, pki = running
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "kubectl").write_text(KUBECTL)
    (bindir / "kubectl").chmod(0o755)
    kubeconfig = tmp_path / "admin.conf"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    cfg = write_config(tmp_path, pg, db, shim, pki, kubeconfig=kubeconfig)
    out = status("-c", cfg, env={"PATH": f"{bindir}:{os.environ['PATH']}"}).stdout
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") >= 3}
    assert "up" in rows["PostgreSQL"] and "3 keys" in rows["PostgreSQL"] and f"revision {rev}" in rows["PostgreSQL"]
    assert "up" in rows["etcd shim"] and f"revision {rev}" in rows["etcd shim"]
    assert "up" in rows["API server"] and "/readyz ok" in rows["API server"]
    assert "Ready" in rows["node cp1"] and "control-plane" in rows["node cp1"]


def test_unreachable_parts_are_down_not_errors(running, pg, tmp_path):
    shim, db, rev, pki = running
    cfg = write_config(tmp_path, pg, db, shim, pki, pg_port=free_port(), metrics_port=free_port())
    data = json.loads(status("-c", cfg, "-o", "json").stdout)
    assert data["postgres"]["up"] is False and "socket" in data["postgres"]["reason"]
    assert data["shim"]["up"] is False and "no answer on http://127.0.0.1:" in data["shim"]["reason"]
    out = status("-c", cfg).stdout
    assert out.count("down") >= 3


def test_status_over_ssh_matches_the_local_view(running, pg, tmp_path):
    """The same probes through a real sshd on 127.0.0.1 (tests/sshd.py): same node, same data."""
    from sshd import Sshd

    shim, db, rev, pki = running
    cfg = write_config(tmp_path, pg, db, shim, pki)
    server = Sshd().start()
    try:
        remote = json.loads(status("-c", cfg, "-o", "json", "--host", "root@127.0.0.1", "--ssh-port",
                                   str(server.port), "--ssh-key", server.client_key, "--ssh-known-hosts",
                                   server.known_hosts).stdout)
    finally:
        server.stop()
    local = json.loads(status("-c", cfg, "-o", "json").stdout)
    assert remote["host"] == "127.0.0.1" and local["host"] == "localhost"
    for part in ("shim", "certificates"):
        assert remote[part] == local[part]
    drop = lambda d: {k: v for k, v in d.items() if k != "database_bytes"}  # noqa: E731 (may grow meanwhile)
    assert drop(remote["postgres"]) == drop(local["postgres"])
    assert remote["postgres"]["keys"] == 3 and remote["shim"]["revision"] == rev
