"""``k8s-sql certs check-expiration`` on certificates made by the pki phase: the
kubeadm-style table, missing files, an unparsable file, ``--output json``, and the exit
status scripts rely on (1 when a certificate needs attention, 0 otherwise).

Every configuration points ``paths.manifestsDir`` and ``paths.kubeconfig`` into the test's
own directory, so what the node runs (control plane, worker) is what the test set up."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from k8s_sql.config import Cluster
from k8s_sql.kubeadm import manifest, sidecar, yamlio

FIXTURE_134 = Path(__file__).parent / "fixtures/manifests/kube-apiserver-1.34.yaml"


def cli(*args, rc=0, env=None):
    r = subprocess.run([sys.executable, "-m", "k8s_sql", *args], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "COLUMNS": "200", **(env or {})})
    assert r.returncode == rc, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    return r


def config(tmp_path, validity_days=100) -> Path:
    tmp_path.mkdir(exist_ok=True)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"apiVersion: k8s-sql.io/v1alpha1\nkind: Cluster\n"
                   f"paths: {{pkiDir: {tmp_path}/pki, manifestsDir: {tmp_path}/manifests, "
                   f"kubeconfig: {tmp_path}/admin.conf, stateFile: {tmp_path}/state.json}}\n"
                   f"node: {{advertiseAddress: 192.0.2.10}}\ncertificates: {{validityDays: {validity_days}}}\n")
    return cfg


def check(cfg, *args, rc=0, env=None):
    return cli("certs", "check-expiration", "-c", str(cfg), *args, rc=rc, env=env)


def test_table_json_and_missing(tmp_path):
    cfg = config(tmp_path)
    # nothing there yet: every file shown as missing (as kubeadm), and the exit status says so
    r = check(cfg, rc=1)
    assert r.stdout.count("!MISSING!") == 5
    for name in ("ca.crt", "postgres-server.crt", "shim-postgres-client.crt", "shim-server.crt",
                 "apiserver-shim-client.crt"):
        assert f"  {name} is missing\n" in r.stderr
    cli("init", "phase", "pki", "-c", str(cfg))
    r = check(cfg)
    assert r.stderr == ""
    out = r.stdout
    for header in ("CERTIFICATE", "EXPIRES", "RESIDUAL TIME", "CERTIFICATE AUTHORITY", "EXTERNALLY MANAGED"):
        assert header in out
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    for name in ("postgres-server", "shim-postgres-client", "shim-server", "apiserver-shim-client"):
        assert lines[name][-3:] == ["99d", "ca", "no"] or lines[name][-3:] == ["100d", "ca", "no"], lines[name]
    assert lines["ca"][-2:] == ["9y", "no"]
    (tmp_path / "pki" / "shim-server.crt").write_text("not a certificate\n")
    (tmp_path / "pki" / "ca.key").unlink()
    r = check(cfg, "-o", "json", rc=1)
    assert r.stderr.splitlines()[1:] == ["  shim-server.crt is invalid"]
    rows = {r["name"]: r for r in json.loads(r.stdout)["certificates"]}
    assert rows["shim-server.crt"]["state"] == "invalid"
    assert rows["ca.crt"]["externally_managed"] is True  # the CA key is not on this node
    assert 99 * 86400 <= rows["postgres-server.crt"]["residual_seconds"] <= 100 * 86400
    assert check(cfg, "-o", "yaml", rc=2).returncode == 2


def test_fail_within_threshold(tmp_path):
    """Default: 30 days (pki phase's renewal window); --fail-within DAYS moves it; an expired
    certificate fails even with --fail-within 0."""
    cfg = config(tmp_path, validity_days=100)
    cli("init", "phase", "pki", "-c", str(cfg))
    check(cfg)
    check(cfg, "--fail-within", "99")
    r = check(cfg, "--fail-within", "101", rc=1)
    assert "expiring within 101 days" in r.stderr
    assert "  shim-server.crt expires in 99 days\n" in r.stderr and "ca.crt" not in r.stderr
    check(cfg, "--fail-within", "-1", rc=2)
    # a short validity: the default window shrinks with it (a third), as the pki phase's
    short = config(tmp_path / "short", validity_days=3)
    cli("init", "phase", "pki", "-c", str(short))
    check(short)
    assert "shim-server.crt expires in 2 days" in check(short, "--fail-within", "3", rc=1).stderr
    # an expired certificate
    pki = tmp_path / "pki"
    ca = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), None)
    now = dt.datetime.now(dt.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    old = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
           .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
           .not_valid_before(now - dt.timedelta(days=10)).not_valid_after(now - dt.timedelta(days=1))
           .sign(ca_key, hashes.SHA256()))
    (pki / "apiserver-shim-client.crt").write_bytes(old.public_bytes(serialization.Encoding.PEM))
    r = check(cfg, "--fail-within", "0", rc=1)
    assert "  apiserver-shim-client.crt has expired\n" in r.stderr
    assert "<invalid>" in r.stdout  # the table itself is kubeadm's, unchanged


def test_worker_needs_no_datastore_certificates(tmp_path):
    """kubeadm's kubelet.conf without a kube-apiserver static pod: a worker, which has no
    shim; its missing datastore certificates are not a failure."""
    cfg = config(tmp_path)
    (tmp_path / "kubelet.conf").write_text("apiVersion: v1\nkind: Config\n")
    r = check(cfg)
    assert r.stdout.count("!MISSING!") == 5 and r.stderr == ""


def test_joined_control_plane_needs_no_postgres_server_certificate(tmp_path):
    """A control-plane node whose sidecar uses the first node's PostgreSQL (the patch
    ``join --control-plane`` renders, applied as kubeadm does) has the files join copies:
    no CA key, no PostgreSQL serving pair. That is not a failure; a missing shim
    certificate is."""
    cfg = config(tmp_path)
    cli("init", "phase", "pki", "-c", str(cfg))
    for name in ("ca.key", "postgres-server.crt", "postgres-server.key"):
        (tmp_path / "pki" / name).unlink()
    shim_cfg = Cluster()
    shim_cfg.paths.pki_dir = str(tmp_path / "pki")
    shim_cfg.postgres.host = "192.0.2.10"  # the first node
    pod = manifest.apply_patch_file(FIXTURE_134.read_text(), sidecar.patch_text(shim_cfg), str(FIXTURE_134))
    (tmp_path / "manifests").mkdir()
    (tmp_path / "manifests/kube-apiserver.yaml").write_text(yamlio.dump(pod))
    r = check(cfg)
    rows = {line.split()[0]: line.split()[1] for line in r.stdout.splitlines() if line.strip()}
    assert rows["postgres-server"] == "!MISSING!" and r.stderr == ""
    (tmp_path / "pki" / "shim-server.crt").unlink()
    r = check(cfg, rc=1)
    assert r.stderr.splitlines()[1:] == ["  shim-server.crt is missing"]


def test_ca_with_serial_number_zero(tmp_path):
    """A CA made as kubeadm made them before Kubernetes 1.28 (serial number 0, here by
    openssl) is read without cryptography's deprecation warning, even where warnings are
    errors."""
    cfg = config(tmp_path)
    cli("init", "phase", "pki", "-c", str(cfg))
    pki = tmp_path / "pki"
    (pki / "ca.key").unlink()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(tmp_path / "old-ca.key"), "-out", str(pki / "ca.crt"), "-days", "3650",
                    "-subj", "/CN=kubernetes", "-set_serial", "0"], check=True, capture_output=True)
    serial = subprocess.run(["openssl", "x509", "-noout", "-serial", "-in", str(pki / "ca.crt")],
                            capture_output=True, text=True, check=True).stdout
    assert serial.strip() == "serial=00"
    for env in ({}, {"PYTHONWARNINGS": "error"}):
        r = check(cfg, "-o", "json", env=env)
        assert "Warning" not in r.stderr
        ca = {row["name"]: row for row in json.loads(r.stdout)["certificates"]}["ca.crt"]
        assert ca["state"] == "ok" and ca["externally_managed"] is True
        assert ca["residual_seconds"] > 3600 * 86400
