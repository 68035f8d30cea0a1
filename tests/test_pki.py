"""The pki phase through the CLI: files, modes and owners, ``openssl verify``, real TLS
handshakes with the issued certificates, reuse on a second run, re-issue when the
configuration or expiry asks for it, and a broken CA key stopping the phase."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import threading

import pytest
from cryptography import x509


LEAVES = ("postgres-server", "shim-postgres-client", "shim-server", "apiserver-shim-client")


def cli(*args, rc=0):
    r = subprocess.run([sys.executable, "-m", "k8s_sql", *args], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "COLUMNS": "250"})
    assert r.returncode == rc, r.stdout + r.stderr
    return r


def write_config(tmp_path, name="cp1", extra=""):
    cfg = tmp_path / "cluster.yaml"
    cfg.write_text("apiVersion: k8s-sql.io/v1alpha1\nkind: Cluster\n"
                   f"node: {{name: {name}, advertiseAddress: 192.0.2.10}}\n"
                   f"paths: {{pkiDir: {tmp_path / 'pki'}, stateFile: {tmp_path / 'state.json'}}}\n" + extra)
    return str(cfg)


def snapshot(pki):
    return {n: (os.stat(pki / n).st_mtime_ns, (pki / n).read_bytes()) for n in sorted(os.listdir(pki))}


@pytest.fixture
def pki(tmp_path):
    cfg = write_config(tmp_path)
    cli("init", "phase", "pki", "-c", cfg)
    return tmp_path / "pki", cfg


def test_files_modes_owners_and_openssl_verify(pki):
    d, _ = pki
    names = {"ca.crt", "ca.key"} | {f"{n}.{e}" for n in LEAVES for e in ("crt", "key")}
    assert set(os.listdir(d)) == names
    for name in names:
        st = os.stat(d / name)
        assert st.st_mode & 0o777 == (0o600 if name.endswith(".key") else 0o644), name
    assert os.stat(d / "postgres-server.key").st_uid == int(subprocess.check_output(["id", "-u", "postgres"]))
    for key in ("shim-server.key", "shim-postgres-client.key"):
        assert (os.stat(d / key).st_uid, os.stat(d / key).st_gid) == (65532, 65532)
    assert os.stat(d / "apiserver-shim-client.key").st_uid == 0
    r = subprocess.run(["openssl", "verify", "-CAfile", d / "ca.crt", *(d / f"{n}.crt" for n in LEAVES)],
                       capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.count(": OK") == 4, r.stdout + r.stderr
    # purpose checks as a TLS stack does them
    for leaf, purpose in (("shim-server", "sslserver"), ("postgres-server", "sslserver"),
                          ("apiserver-shim-client", "sslclient"), ("shim-postgres-client", "sslclient")):
        r = subprocess.run(["openssl", "verify", "-purpose", purpose, "-CAfile", d / "ca.crt", d / f"{leaf}.crt"],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
    client = x509.load_pem_x509_certificate((d / "shim-postgres-client.crt").read_bytes())
    assert client.subject.rfc4514_string() == "CN=k8s_sql"  # the PostgreSQL role
    san = x509.load_pem_x509_certificate((d / "postgres-server.crt").read_bytes()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "cp1"}
    assert {str(i) for i in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1", "192.0.2.10"}
    ca = x509.load_pem_x509_certificate((d / "ca.crt").read_bytes())
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca


def _tls_server(d, cafile):
    """A TLS server on 127.0.0.1 with the shim's serving certificate that requires a
    client certificate from ``cafile``; returns (port, results list, thread)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(cafile))
    ctx.load_cert_chain(d / "shim-server.crt", d / "shim-server.key")
    ctx.verify_mode = ssl.CERT_REQUIRED
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    results = []

    def serve():
        conn, _ = sock.accept()
        try:
            with ctx.wrap_socket(conn, server_side=True) as tls:
                results.append(tls.getpeercert()["subject"])
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError) as e:
            results.append(e)
        finally:
            sock.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return sock.getsockname()[1], results, t


def test_tls_handshake_apiserver_to_shim(pki, tmp_path):
    """kube-apiserver's client certificate against the shim's serving certificate, both
    sides verified (the server name is the IP SAN 127.0.0.1, as the apiserver dials it)."""
    d, _ = pki
    port, results, t = _tls_server(d, d / "ca.crt")
    ctx = ssl.create_default_context(cafile=str(d / "ca.crt"))
    ctx.load_cert_chain(d / "apiserver-shim-client.crt", d / "apiserver-shim-client.key")
    with socket.create_connection(("127.0.0.1", port)) as raw, ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        assert tls.recv(2) == b"ok"
    t.join(10)
    assert results and not isinstance(results[0], Exception)
    assert ((("commonName", "kube-apiserver-k8s-sql-client"),),) == results[0]

    # a client certificate from another CA is refused by the server
    other = tmp_path / "other"
    other.mkdir()
    cli("init", "phase", "pki", "-c", write_config(other))
    port, results, t = _tls_server(d, d / "ca.crt")
    ctx = ssl.create_default_context(cafile=str(d / "ca.crt"))
    ctx.load_cert_chain(other / "pki/apiserver-shim-client.crt", other / "pki/apiserver-shim-client.key")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        with socket.create_connection(("127.0.0.1", port)) as raw, \
                ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.recv(2)
    t.join(10)
    assert isinstance(results[0], ssl.SSLError)


def test_second_run_changes_nothing(pki):
    d, cfg = pki
    before = snapshot(d)
    assert "up to date" in cli("init", "phase", "pki", "-c", cfg).stdout
    assert "0 change(s) planned" in cli("init", "phase", "pki", "-c", cfg, "--dry-run").stdout
    assert snapshot(d) == before


def test_reissue_on_config_change_and_expiry_keeps_ca(tmp_path):
    cfg = write_config(tmp_path, extra="certificates: {validityDays: 10}\n")
    cli("init", "phase", "pki", "-c", cfg)
    d = tmp_path / "pki"
    short = snapshot(d)
    # 10-day certificates are renewed only near their end (a third of 10 days), not now
    assert "up to date" in cli("init", "phase", "pki", "-c", cfg).stdout
    # with the default validity (renew 30 days ahead) they are due: every leaf is re-issued
    r = cli("init", "phase", "pki", "-c", write_config(tmp_path))
    assert "expires in 9 days; re-issuing it" in r.stdout
    now = snapshot(d)
    assert now["ca.crt"] == short["ca.crt"] and now["ca.key"] == short["ca.key"]
    assert all(now[f"{n}.crt"] != short[f"{n}.crt"] for n in LEAVES)
    # a new node name changes the serving certificates' SANs only
    r = cli("init", "phase", "pki", "-c", write_config(tmp_path, name="cp2"))
    assert "SANs differ" in r.stdout
    after = snapshot(d)
    changed = {n for n in after if after[n] != now[n]}
    assert changed == {"postgres-server.crt", "postgres-server.key", "shim-server.crt", "shim-server.key"}
    subprocess.run(["openssl", "verify", "-CAfile", d / "ca.crt", d / "shim-server.crt"], check=True,
                   capture_output=True)


def test_garbage_ca_key_stops_before_writing(tmp_path):
    cfg = write_config(tmp_path)
    d = tmp_path / "pki"
    d.mkdir()
    cli("init", "phase", "pki", "-c", cfg)
    for n in LEAVES:
        (d / f"{n}.crt").unlink()
    (d / "ca.key").write_text("garbage\n")
    r = cli("init", "phase", "pki", "-c", cfg, rc=1)
    assert "ca.key is not an unencrypted PEM private key" in r.stderr
    assert "hint: restore ca.crt/ca.key from a backup" in r.stderr
    assert sorted(os.listdir(d)) == sorted(["ca.crt", "ca.key"] + [f"{n}.key" for n in LEAVES])
    assert "Traceback" not in r.stderr
