"""``k8s-sql shim serve`` as a user runs it: PostgreSQL over TLS with verify-full and a
client certificate (no password anywhere), and clear errors with exit codes 1 and 2."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import sys

import pytest

from conftest import ShimProcess
from etcd_server import ETCDCTL, free_port, make_tls
from pgcluster import TempPostgres


@pytest.fixture(scope="module")
def tls_pg(tmp_path_factory):
    """Its own PostgreSQL with ssl on (conf.d) and only certificate authentication over TCP
    for role ``shim_tls``, which owns database ``kubernetes``."""
    pki = make_tls(tmp_path_factory.mktemp("pg-pki"), client_cn="shim_tls")
    cluster = TempPostgres().init()
    pw = pwd.getpwnam("postgres")
    copies = {}
    for name, src in (("server.crt", pki.cert_file), ("server.key", pki.key_file), ("ca.crt", pki.ca_file)):
        copies[name] = os.path.join(cluster.config_dir, name)  # the server runs as postgres: its own copies
        shutil.copy(src, copies[name])
        os.chown(copies[name], pw.pw_uid, pw.pw_gid)
        os.chmod(copies[name], 0o600)
    with open(os.path.join(cluster.config_dir, "conf.d", "ssl.conf"), "w") as f:
        f.write(f"ssl = on\nssl_cert_file = '{copies['server.crt']}'\nssl_key_file = '{copies['server.key']}'\n"
                f"ssl_ca_file = '{copies['ca.crt']}'\nssl_min_protocol_version = 'TLSv1.2'\n")
    hba = os.path.join(cluster.config_dir, "pg_hba.conf")
    old = open(hba).read()
    with open(hba, "w") as f:
        f.write("hostssl kubernetes shim_tls 127.0.0.1/32 cert\n" + old)
    cluster.start()
    cluster.psql("CREATE ROLE shim_tls LOGIN NOSUPERUSER")
    cluster.psql("CREATE DATABASE kubernetes OWNER shim_tls")
    yield cluster, pki
    cluster.destroy()


def test_shim_reaches_postgres_with_verify_full_and_a_client_certificate(tls_pg, shim_tls):
    cluster, pki = tls_pg
    uri = (f"postgresql://shim_tls@127.0.0.1:{cluster.port}/kubernetes?sslmode=verify-full"
           f"&sslrootcert={pki.ca_file}&sslcert={pki.client_cert_file}&sslkey={pki.client_key_file}")
    shim = ShimProcess(uri, shim_tls).start()
    try:
        env = dict(os.environ, ETCDCTL_API="3")
        base = [ETCDCTL, "--endpoints", shim.endpoint, "--cacert", shim.ca_file, "--cert", shim.cert_file,
                "--key", shim.key_file]
        assert subprocess.run(base + ["put", "/tls", "yes"], env=env, capture_output=True, text=True).stdout == "OK\n"
        ssl = cluster.psql("SELECT bool_and(s.ssl), min(s.version) FROM pg_stat_ssl s JOIN pg_stat_activity a "
                           "USING (pid) WHERE a.usename = 'shim_tls'")
        assert ssl.startswith("t|TLSv1.")
        owner = cluster.psql("SELECT tableowner FROM pg_tables WHERE tablename = 'kv'", db="kubernetes")
        assert owner == "shim_tls"
    finally:
        shim.stop()


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "k8s_sql", "shim", "serve", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_unreachable_postgres_is_a_clear_error(tmp_path):
    port = free_port()
    r = run_cli("--listen-client-urls", f"http://127.0.0.1:{free_port()}", "--metrics-addr", "", "--datastore-timeout", "2s",
                "--datastore", f"postgresql://nobody@127.0.0.1:{port}/x?sslmode=disable&connect_timeout=2")
    assert r.returncode == 1
    assert "cannot reach PostgreSQL" in r.stderr and "--datastore" in r.stderr
    assert "Connection refused" in r.stderr  # libpq's own reason, not just "timed out"
    assert "Traceback" not in r.stderr


def test_https_without_a_certificate_is_refused():
    r = run_cli("--listen-client-urls", "https://127.0.0.1:2399", "--datastore", "host=/nonexistent")
    assert r.returncode == 1 and "needs a server certificate" in r.stderr and "--cert-file" in r.stderr


def test_bad_duration_and_unknown_flag():
    r = run_cli("--watch-progress-notify-interval", "soon", "--datastore", "host=/nonexistent")
    assert r.returncode == 1 and "invalid duration" in r.stderr
    r = run_cli("--listen-peer-urls", "http://127.0.0.1:2380")
    assert r.returncode == 2 and "No such option" in r.stderr


def test_port_in_use_is_a_clear_error(pg):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        r = run_cli("--listen-client-urls", f"http://127.0.0.1:{busy}", "--metrics-addr", "",
                    "--datastore", pg.create_database("shim_busy"))
    assert r.returncode == 1 and f"cannot listen on http://127.0.0.1:{busy}" in r.stderr


def test_workers_share_the_port_and_stop_together(pg):
    """--workers 2: two processes listen on one port (SO_REUSEPORT) on one database; both
    go away on SIGTERM."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "k8s_sql", "shim", "serve", "--listen-client-urls",
                             f"http://127.0.0.1:{port}", "--metrics-addr", "", "--workers", "2",
                             "--datastore", pg.create_database("shim_workers")],
                            stderr=subprocess.PIPE, text=True)
    try:
        ready = 0
        while ready < 2:
            line = proc.stderr.readline()
            assert line, "shim exited"
            ready += "k8s-sql shim ready" in line
        listeners = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True).stdout
        pids = {int(x.split("pid=")[1].split(",")[0]) for x in listeners.splitlines() if "pid=" in x}
        assert len(pids) == 2 and proc.pid in pids
        env = dict(os.environ, ETCDCTL_API="3")
        ctl = [ETCDCTL, "--endpoints", f"http://127.0.0.1:{port}"]
        for i in range(8):  # new connections: the kernel spreads them over both
            assert subprocess.run(ctl + ["put", f"/wk/{i}", "v"], env=env, capture_output=True, text=True).stdout == "OK\n"
        keys = subprocess.run(ctl + ["get", "/wk/", "--prefix", "--keys-only"], env=env, capture_output=True,
                              text=True).stdout.split()
        assert keys == [f"/wk/{i}" for i in range(8)]
    finally:
        proc.terminate()
        assert proc.wait(20) == 0
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
