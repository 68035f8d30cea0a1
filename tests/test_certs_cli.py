"""``k8s-sql certs check-expiration`` on certificates made by the pki phase: the
kubeadm-style table, missing files, an unparsable file, and ``--output json``."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def cli(*args, rc=0):
    r = subprocess.run([sys.executable, "-m", "k8s_sql", *args], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "COLUMNS": "200"})
    assert r.returncode == rc, r.stdout + r.stderr
    return r


def test_table_json_and_missing(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"apiVersion: k8s-sql.io/v1alpha1\nkind: Cluster\npaths: {{pkiDir: {tmp_path}/pki}}\n"
                   "node: {advertiseAddress: 192.0.2.10}\ncertificates: {validityDays: 100}\n")
    # nothing there yet: every file shown as missing, and it is not an error (as kubeadm)
    out = cli("certs", "check-expiration", "-c", str(cfg)).stdout
    assert out.count("!MISSING!") == 5
    cli("init", "phase", "pki", "-c", str(cfg))
    out = cli("certs", "check-expiration", "-c", str(cfg)).stdout
    for header in ("CERTIFICATE", "EXPIRES", "RESIDUAL TIME", "CERTIFICATE AUTHORITY", "EXTERNALLY MANAGED"):
        assert header in out
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    for name in ("postgres-server", "shim-postgres-client", "shim-server", "apiserver-shim-client"):
        assert lines[name][-3:] == ["99d", "ca", "no"] or lines[name][-3:] == ["100d", "ca", "no"], lines[name]
    assert lines["ca"][-2:] == ["9y", "no"]
    (tmp_path / "pki" / "shim-server.crt").write_text("not a certificate\n")
    (tmp_path / "pki" / "ca.key").unlink()
    data = json.loads(cli("certs", "check-expiration", "-c", str(cfg), "-o", "json").stdout)
    rows = {r["name"]: r for r in data["certificates"]}
    assert rows["shim-server.crt"]["state"] == "invalid"
    assert rows["ca.crt"]["externally_managed"] is True  # the CA key is not on this node
    assert 99 * 86400 <= rows["postgres-server.crt"]["residual_seconds"] <= 100 * 86400
    assert cli("certs", "check-expiration", "-o", "yaml", rc=2).returncode == 2
