"""``k8s-sql shim serve`` as a user runs it: PostgreSQL over TLS with verify-full and a
client certificate (no password anywhere), and clear errors with exit codes 1 and 2."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import sys
import time

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


def serve_until_ready(*args: str) -> list[str]:
    """Start ``k8s-sql shim serve``, return its stderr lines up to "ready", then stop it.

    Its exit status is not checked here: a SIGTERM right after "ready" sometimes leaves the
    shim hanging in shutdown (seen on the committed code too; reported), so it is killed
    after 20 s instead of failing a test about start-up warnings."""
    proc = subprocess.Popen([sys.executable, "-m", "k8s_sql", "shim", "serve", *args], stderr=subprocess.PIPE,
                            text=True)
    lines = []
    try:
        while True:
            line = proc.stderr.readline()
            assert line, "shim exited:\n" + "".join(lines)
            lines.append(line)
            if "k8s-sql shim ready" in line:
                return lines
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(20)


def test_plaintext_listener_off_loopback_is_warned_about(pg):
    """etcd's rule: plain http:// anywhere but loopback is warned about (anyone who reaches it
    reads and writes every key); on loopback or a Unix socket it is not."""
    datastore = pg.create_database("shim_plain")
    lines = serve_until_ready("--listen-client-urls", f"http://0.0.0.0:{free_port()}", "--metrics-addr", "",
                              "--datastore", datastore)
    warnings = [line for line in lines if " WARNING " in line]
    assert len(warnings) == 1 and "serving client traffic insecurely on http://0.0.0.0:" in warnings[0]
    sock = os.path.join(pg.socket_dir, f"shim-{free_port()}.sock")
    lines = serve_until_ready("--listen-client-urls", f"http://127.0.0.1:{free_port()},http://[::1]:{free_port()},"
                              f"unix://{sock}", "--metrics-addr", "", "--datastore", datastore)
    assert not [line for line in lines if " WARNING " in line]


def test_tls_without_client_certificates_off_loopback_is_warned_about(pg, shim_tls):
    datastore = pg.create_database("shim_noauth")
    tls = ["--cert-file", shim_tls.cert_file, "--key-file", shim_tls.key_file, "--metrics-addr", "",
           "--datastore", datastore]
    lines = serve_until_ready("--listen-client-urls", f"https://0.0.0.0:{free_port()}", *tls)
    assert any("without --client-cert-auth" in line for line in lines if " WARNING " in line)
    lines = serve_until_ready("--listen-client-urls", f"https://0.0.0.0:{free_port()}", *tls, "--client-cert-auth",
                              "--trusted-ca-file", shim_tls.ca_file)
    assert not [line for line in lines if " WARNING " in line]


@pytest.mark.parametrize("datastore", [
    "postgresql://k8s_sql:s3cr3t-pw@127.0.0.1:5432/kubernetes?sslmode=verify-full",
    "host=127.0.0.1 dbname=kubernetes user=k8s_sql password=s3cr3t-pw",
    "postgresql://k8s_sql@127.0.0.1/kubernetes?password=s3cr3t-pw",
], ids=["uri-userinfo", "keyword", "uri-query"])
@pytest.mark.parametrize("via", ["flag", "env"])
def test_password_in_datastore_is_refused_and_never_echoed(datastore, via):
    args = ["--listen-client-urls", f"http://127.0.0.1:{free_port()}", "--metrics-addr", "",
            "--datastore-timeout", "2s"]
    env = dict(os.environ)
    if via == "flag":
        args += ["--datastore", datastore]
    else:
        env["K8S_SQL_DATASTORE"] = datastore
    r = subprocess.run([sys.executable, "-m", "k8s_sql", "shim", "serve", *args], capture_output=True, text=True,
                       timeout=60, env=env)
    assert r.returncode == 1, r.stderr
    assert "--datastore carries a password" in r.stderr and "PGPASSFILE" in r.stderr and "sslcert" in r.stderr
    assert "s3cr3t" not in r.stderr + r.stdout and "Traceback" not in r.stderr


def test_unparsable_datastore_is_not_echoed():
    r = run_cli("--listen-client-urls", f"http://127.0.0.1:{free_port()}", "--metrics-addr", "",
                "--datastore", "host=x password='s3cr3t-pw")
    assert r.returncode == 1 and "not a libpq connection string" in r.stderr
    assert "s3cr3t" not in r.stderr


def test_key_that_does_not_belong_to_the_certificate_says_so(pg, shim_tls):
    """Today's gRPC error is "cannot listen … the port is in use"; the shim says what is wrong,
    before it contacts PostgreSQL."""
    r = run_cli("--listen-client-urls", f"https://127.0.0.1:{free_port()}", "--metrics-addr", "",
                "--cert-file", shim_tls.cert_file, "--key-file", shim_tls.client_key_file,
                "--datastore", pg.create_database("shim_mismatch"))
    assert r.returncode == 1, r.stderr
    assert f"the key {shim_tls.client_key_file} does not belong to the certificate {shim_tls.cert_file}" in r.stderr
    assert "--key-file" in r.stderr and "cannot listen" not in r.stderr and "port is in use" not in r.stderr


@pytest.mark.parametrize("problem", ["missing", "directory", "not-pem", "encrypted-key", "bad-ca"])
def test_unusable_tls_files_are_named_before_postgres_is_contacted(problem, shim_tls, tmp_path):
    """Each TLS file problem is reported as such, with the flag, even though PostgreSQL is
    unreachable (the files are checked first)."""
    cert, key, ca = shim_tls.cert_file, shim_tls.key_file, shim_tls.ca_file
    if problem == "missing":
        cert, flag, words = str(tmp_path / "nope.crt"), "--cert-file", "No such file or directory"
    elif problem == "directory":
        key, flag, words = str(tmp_path), "--key-file", "Is a directory"
    elif problem == "not-pem":
        cert = str(tmp_path / "junk.crt")
        open(cert, "w").write("not a certificate\n")
        flag, words = "--cert-file", "is not a PEM certificate"
    elif problem == "encrypted-key":
        key = str(tmp_path / "enc.key")
        subprocess.run(["openssl", "pkey", "-in", shim_tls.key_file, "-aes256", "-passout", "pass:pw", "-out", key],
                       check=True, capture_output=True)
        flag, words = "--key-file", "is encrypted"
    else:
        ca = str(tmp_path / "ca.crt")
        open(ca, "w").write("-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
        flag, words = "--trusted-ca-file", "is not a PEM certificate bundle"
    r = run_cli("--listen-client-urls", f"https://127.0.0.1:{free_port()}", "--metrics-addr", "",
                "--cert-file", cert, "--key-file", key, "--trusted-ca-file", ca, "--client-cert-auth",
                "--datastore-timeout", "1s",
                "--datastore", f"postgresql://nobody@127.0.0.1:{free_port()}/x?sslmode=disable&connect_timeout=1")
    assert r.returncode == 1, r.stderr
    assert f"error: {flag}:" in r.stderr and words in r.stderr
    assert "cannot reach PostgreSQL" not in r.stderr and "Traceback" not in r.stderr


# --workers auto: the rule on fake cgroup files under a temp root (k8s_sql.shim.workers reads
# <root>/proc/self/cgroup and <root>/sys/fs/cgroup/...), then a real shim started without --workers.

def _fake_root(tmp_path, cgroup: str, files: dict[str, str]):
    for rel, text in {"proc/self/cgroup": cgroup, **files}.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return str(tmp_path)


@pytest.mark.parametrize("cpu_max, cpus, want", [
    ("max 100000\n", 8, 8),          # no quota: the CPUs available
    ("200000 100000\n", 8, 2),       # a sidecar limited to 2 CPUs
    ("150000 100000\n", 8, 2),       # 1.5 CPUs: rounded up
    ("50000 100000\n", 8, 1),        # half a CPU: still one process
    ("800000 100000\n", 2, 2),       # a quota above the machine: the machine
])
def test_workers_auto_follows_cgroup_v2_cpu_max(tmp_path, cpu_max, cpus, want):
    from k8s_sql.shim.workers import auto_workers
    root = _fake_root(tmp_path, "0::/kubepods/pod1/shim\n", {"sys/fs/cgroup/kubepods/pod1/shim/cpu.max": cpu_max})
    assert auto_workers(root, cpus=cpus).workers == want


def test_workers_auto_takes_the_smallest_quota_of_the_cgroup_and_its_parents(tmp_path):
    from k8s_sql.shim.workers import auto_workers
    root = _fake_root(tmp_path, "0::/pod/shim\n", {"sys/fs/cgroup/pod/cpu.max": "300000 100000\n",
                                                    "sys/fs/cgroup/pod/shim/cpu.max": "max 100000\n"})
    count = auto_workers(root, cpus=16)
    assert count.workers == 3 and "cgroup v2 cpu.max" in count.reason


def test_workers_auto_reads_cgroup_v1_cfs_quota(tmp_path):
    from k8s_sql.shim.workers import auto_workers
    root = _fake_root(tmp_path, "4:memory:/docker/abc\n2:cpu,cpuacct:/docker/abc\n",
                      {"sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "250000\n",
                       "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n"})
    count = auto_workers(root, cpus=8)
    assert count.workers == 3 and "cgroup v1" in count.reason
    # -1 = no quota (v1's "max")
    (tmp_path / "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us").write_text("-1\n")
    assert auto_workers(root, cpus=8).workers == 8


def test_workers_auto_in_a_container_whose_cgroup_is_the_mount_root(tmp_path):
    """A container's /proc/self/cgroup names the host's path, its mount is its own cgroup."""
    from k8s_sql.shim.workers import auto_workers
    root = _fake_root(tmp_path, "0::/system.slice/containerd/xyz\n", {"sys/fs/cgroup/cpu.max": "100000 100000\n"})
    assert auto_workers(root, cpus=4).workers == 1


def test_workers_auto_without_any_cgroup_uses_the_cpus(tmp_path):
    from k8s_sql.shim.workers import auto_workers
    assert auto_workers(str(tmp_path), cpus=3).workers == 3
    assert auto_workers(_fake_root(tmp_path, "0::/\n", {"sys/fs/cgroup/cpu.max": "garbage"}), cpus=3).workers == 3


def test_invalid_workers_is_a_usage_error():
    for bad in ("0", "65", "many"):
        r = run_cli("--workers", bad, "--datastore", "host=/nonexistent")
        assert r.returncode == 2 and "--workers" in r.stderr and repr(bad) in r.stderr, r.stderr
        assert "use auto" in r.stderr and "1 to 64" in r.stderr
        assert "Traceback" not in r.stderr


def test_workers_auto_is_the_default_and_runs_one_process_per_cpu(pg):
    """No --workers: as many listening processes as this machine's rule gives (logged with why)."""
    from k8s_sql.shim.workers import auto_workers
    want = auto_workers()
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "k8s_sql", "shim", "serve", "--listen-client-urls",
                             f"http://127.0.0.1:{port}", "--metrics-addr", "",
                             "--datastore", pg.create_database("shim_workers_auto")],
                            stderr=subprocess.PIPE, text=True)
    lines = []
    try:
        while sum("k8s-sql shim ready" in x for x in lines) < want.workers:
            line = proc.stderr.readline()
            assert line, "shim exited:\n" + "".join(lines)
            lines.append(line)
        assert any(f"{want.workers} worker process(es) ({want.reason})" in x for x in lines), lines
        listeners = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True).stdout
        pids = {int(x.split("pid=")[1].split(",")[0]) for x in listeners.splitlines() if "pid=" in x}
        assert len(pids) == want.workers and proc.pid in pids
        env = dict(os.environ, ETCDCTL_API="3")
        r = subprocess.run([ETCDCTL, "--endpoints", f"http://127.0.0.1:{port}", "put", "/auto", "v"], env=env,
                           capture_output=True, text=True)
        assert r.stdout == "OK\n", r.stderr
    finally:
        proc.terminate()
        assert proc.wait(20) == 0


def test_workers_go_away_when_the_first_process_is_killed(pg):
    """SIGKILL of the process that started the workers (no chance to stop them): they exit too
    and the port is free again."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "k8s_sql", "shim", "serve", "--listen-client-urls",
                             f"http://127.0.0.1:{port}", "--metrics-addr", "", "--workers", "2",
                             "--datastore", pg.create_database("shim_workers_kill")],
                            stderr=subprocess.PIPE, text=True)
    ready = 0
    while ready < 2:
        line = proc.stderr.readline()
        assert line, "shim exited"
        ready += "k8s-sql shim ready" in line
    proc.kill()
    proc.wait(10)
    deadline = time.monotonic() + 20
    while subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True).stdout.strip():
        assert time.monotonic() < deadline, "a worker still listens after its parent was killed"
        time.sleep(0.2)
