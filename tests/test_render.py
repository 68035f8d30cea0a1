"""``k8s-sql render --out DIR``: every generated file lands in DIR, nothing else is touched,
the certificates chain to the CA (checked with openssl), and a second render rewrites
nothing. Runs the real console script."""

from __future__ import annotations

import os
import subprocess
import sys

import yaml

FILES = [
    "etc/kubernetes/pki/k8s-sql/ca.crt", "etc/kubernetes/pki/k8s-sql/ca.key",
    "etc/kubernetes/pki/k8s-sql/postgres-server.crt", "etc/kubernetes/pki/k8s-sql/postgres-server.key",
    "etc/kubernetes/pki/k8s-sql/shim-postgres-client.crt", "etc/kubernetes/pki/k8s-sql/shim-postgres-client.key",
    "etc/kubernetes/pki/k8s-sql/shim-server.crt", "etc/kubernetes/pki/k8s-sql/shim-server.key",
    "etc/kubernetes/pki/k8s-sql/apiserver-shim-client.crt", "etc/kubernetes/pki/k8s-sql/apiserver-shim-client.key",
    "etc/k8s-sql/kubeadm.yaml", "etc/k8s-sql/patches/kube-apiserver+strategic.yaml",
    "postgresql/conf.d/k8s-sql.conf", "postgresql/pg_hba.k8s-sql.conf", "postgresql/k8s-sql-role.sql",
]


def render(out, *extra) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "k8s_sql", "render", "--out", str(out), "--node-name", "cp1",
            "--apiserver-advertise-address", "192.0.2.10", "--kubernetes-version", "v1.30.4", *extra]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def tree(root) -> dict[str, tuple[int, float]]:
    out = {}
    for d, _, names in os.walk(root):
        for n in names:
            p = os.path.join(d, n)
            st = os.stat(p)
            out[os.path.relpath(p, root)] = (st.st_mode & 0o777, st.st_mtime_ns)
    return out


def test_render_writes_everything_into_out_and_nothing_else(tmp_path):
    out = tmp_path / "out"
    before = os.path.exists("/etc/k8s-sql"), os.path.exists("/etc/kubernetes/pki/k8s-sql")
    r = render(out)
    assert r.returncode == 0, r.stderr
    files = tree(out)
    assert sorted(files) == sorted(FILES)
    assert (os.path.exists("/etc/k8s-sql"), os.path.exists("/etc/kubernetes/pki/k8s-sql")) == before
    assert {p: m for p, (m, _) in files.items() if p.endswith(".key")} == {p: 0o600 for p in FILES if p.endswith(".key")}

    pki = out / "etc/kubernetes/pki/k8s-sql"
    for cert in ("postgres-server", "shim-postgres-client", "shim-server", "apiserver-shim-client"):
        v = subprocess.run(["openssl", "verify", "-CAfile", pki / "ca.crt", pki / f"{cert}.crt"],
                           capture_output=True, text=True)
        assert v.returncode == 0 and v.stdout.strip().endswith(": OK"), v.stdout + v.stderr
    san = subprocess.run(["openssl", "x509", "-noout", "-ext", "subjectAltName", "-in", pki / "postgres-server.crt"],
                         capture_output=True, text=True).stdout
    assert "IP Address:127.0.0.1" in san and "IP Address:192.0.2.10" in san and "DNS:cp1" in san

    docs = list(yaml.safe_load_all((out / "etc/k8s-sql/kubeadm.yaml").read_text()))
    assert docs[0]["apiVersion"] == "kubeadm.k8s.io/v1beta3"  # Kubernetes 1.30
    cluster = next(d for d in docs if d["kind"] == "ClusterConfiguration")
    assert cluster["etcd"]["external"]["endpoints"] == ["https://127.0.0.1:2379"]
    hba = (out / "postgresql/pg_hba.k8s-sql.conf").read_text()
    assert "hostssl   kubernetes k8s_sql 127.0.0.1/32 cert" in hba
    assert "ssl_min_protocol_version = 'TLSv1.2'" in (out / "postgresql/conf.d/k8s-sql.conf").read_text()
    assert "PASSWORD NULL" in (out / "postgresql/k8s-sql-role.sql").read_text()

    again = render(out)
    assert again.returncode == 0 and "up to date, nothing written" in " ".join(again.stdout.split())
    assert tree(out) == files


def test_render_with_client_addresses(tmp_path):
    """postgres.clientAddresses: a pg_hba line each, and PostgreSQL also listens on the
    node's address (the one in the server certificate)."""
    out, cfg = tmp_path / "out", tmp_path / "cluster.yaml"
    cfg.write_text("apiVersion: k8s-sql.io/v1alpha1\nkind: Cluster\npostgres: {clientAddresses: [192.0.2.11]}\n")
    r = render(out, "-c", str(cfg))
    assert r.returncode == 0, r.stderr
    assert "hostssl   kubernetes k8s_sql 192.0.2.11/32 cert" in (out / "postgresql/pg_hba.k8s-sql.conf").read_text()
    assert "listen_addresses = 'localhost,192.0.2.10'" in (out / "postgresql/conf.d/k8s-sql.conf").read_text()


def test_render_refuses_a_broken_ca(tmp_path):
    out = tmp_path / "out"
    assert render(out).returncode == 0
    (out / "etc/kubernetes/pki/k8s-sql/ca.key").write_text("garbage")
    r = render(out)
    assert r.returncode == 1 and "ca" in r.stderr.lower() and "Traceback" not in r.stderr
