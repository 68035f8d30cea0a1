"""The postgres phase against a throwaway PostgreSQL of this module (Debian-like layout,
see pgcluster.py): TLS through conf.d, the marked pg_hba.conf block, the password-less
role and its database; then, as a client would see it: verify-full with the shim's client
certificate works, and no TLS, no client certificate, another CA's certificate and a
certificate for another role are all refused. Also: a second run changes nothing, a
stopped server and external mode."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

import psycopg
import pytest

from k8s_sql.config import load
from k8s_sql.errors import ConfigError
from k8s_sql.host import LocalHost
from k8s_sql.pg import clients, hba
from k8s_sql.pg.conf import has_include_dir, listen_addresses_for
from pgcluster import TempPostgres


def cli(*args, rc=0):
    r = subprocess.run([sys.executable, "-m", "k8s_sql", *args], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "COLUMNS": "250"})
    assert r.returncode == rc, r.stdout + r.stderr
    return r


def config_text(base, pgc, extra=""):
    return ("apiVersion: k8s-sql.io/v1alpha1\nkind: Cluster\nnode: {name: cp1, advertiseAddress: 192.0.2.10}\n"
            f"paths: {{pkiDir: {base}/pki, backupDir: {base}/backup, stateFile: {base}/state.json}}\n"
            f"postgres: {{configDir: {pgc.config_dir}, dataDir: {pgc.data_dir}, socketDir: {pgc.socket_dir}, "
            f"port: {pgc.port}, version: '{pgc.major}'{extra}}}\n")


@pytest.fixture(scope="module")
def node():
    """A cluster configured by ``init phase pki`` + ``init phase postgres``. The pki dir
    is in a 0755 temp dir: the postgres OS user must reach its key."""
    pgc = TempPostgres().init().start()
    base = tempfile.mkdtemp(prefix="k8s-sql-pgphase-")
    os.chmod(base, 0o755)
    cfg = os.path.join(base, "cluster.yaml")
    with open(cfg, "w") as f:
        f.write(config_text(base, pgc))
    hba_file = os.path.join(pgc.config_dir, "pg_hba.conf")
    original_hba = open(hba_file).read()
    cli("init", "phase", "pki", "-c", cfg)
    first = cli("init", "phase", "postgres", "-c", cfg)
    yield {"pgc": pgc, "base": base, "cfg": cfg, "hba": hba_file, "original_hba": original_hba, "first": first}
    pgc.destroy()
    shutil.rmtree(base, ignore_errors=True)


def conninfo(node, **over):
    pki = os.path.join(node["base"], "pki")
    params = dict(host="127.0.0.1", port=node["pgc"].port, dbname="kubernetes", user="k8s_sql",
                  sslmode="verify-full", sslrootcert=f"{pki}/ca.crt", sslcert=f"{pki}/shim-postgres-client.crt",
                  sslkey=f"{pki}/shim-postgres-client.key", connect_timeout=10)
    params.update(over)
    return " ".join(f"{k}={v}" for k, v in params.items() if v is not None)


def test_first_run_plans_and_verifies(node):
    out = node["first"].stdout
    for step in ("conf.d/k8s-sql.conf", "pg_hba.conf", "create role k8s_sql", "create database kubernetes owned by "
                 "k8s_sql", "revoke CONNECT, TEMPORARY on database kubernetes from PUBLIC",
                 "reload the PostgreSQL configuration", "verified: TLSv1."):
        assert step in out, out
    assert node["pgc"].psql("SHOW ssl") == "on"
    assert node["pgc"].psql("SHOW ssl_min_protocol_version") == "TLSv1.2"


def test_verify_full_with_client_certificate(node):
    for host in ("127.0.0.1", "::1"):
        with psycopg.connect(conninfo(node, host=host)) as conn:
            row = conn.execute("SELECT ssl, version, current_user FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
                               ).fetchone()
            assert row[0] is True and row[1].startswith("TLSv1.") and row[2] == "k8s_sql"
            conn.execute("CREATE TABLE IF NOT EXISTS t (k bytea)")  # owns its database's public schema


def test_everything_else_is_refused(node, tmp_path):
    with pytest.raises(psycopg.OperationalError, match="no encryption|reject"):
        psycopg.connect(conninfo(node, sslmode="disable", sslrootcert=None, sslcert=None, sslkey=None))
    # TLS without a client certificate: cert authentication fails; and the role has no password at all
    with pytest.raises(psycopg.OperationalError, match="certificate"):
        psycopg.connect(conninfo(node, sslcert="/nonexistent", sslkey="/nonexistent", password="guess"))
    assert node["pgc"].psql("SELECT rolpassword IS NULL, rolsuper, rolcreatedb, rolcreaterole, rolreplication "
                            "FROM pg_authid WHERE rolname = 'k8s_sql'") == "t|f|f|f|f"
    assert node["pgc"].psql("SELECT has_database_privilege('public', 'kubernetes', 'CONNECT')") == "f"
    # another database for the same role: rejected even with the right certificate
    with pytest.raises(psycopg.OperationalError, match="reject"):
        psycopg.connect(conninfo(node, dbname="postgres"))
    # a client certificate from another CA
    other = tmp_path / "other"
    other.mkdir()
    (other / "c.yaml").write_text(f"apiVersion: k8s-sql.io/v1alpha1\nkind: Cluster\npaths: {{pkiDir: {other}/pki, stateFile: {other}/state.json}}\n"
                                  "node: {advertiseAddress: 192.0.2.10}\n")
    cli("init", "phase", "pki", "-c", str(other / "c.yaml"))
    with pytest.raises(psycopg.OperationalError, match="certificate|unknown ca"):
        psycopg.connect(conninfo(node, sslcert=f"{other}/pki/shim-postgres-client.crt",
                                 sslkey=f"{other}/pki/shim-postgres-client.key"))
    # our CA, but the certificate names another role (CN=other)
    (other / "o.yaml").write_text(f"apiVersion: k8s-sql.io/v1alpha1\nkind: Cluster\npaths: {{pkiDir: {other}/o, stateFile: {other}/o-state.json}}\n"
                                  "node: {advertiseAddress: 192.0.2.10}\npostgres: {role: other}\n")
    os.makedirs(other / "o")
    for n in ("ca.crt", "ca.key"):
        shutil.copy(os.path.join(node["base"], "pki", n), other / "o" / n)
    cli("init", "phase", "pki", "-c", str(other / "o.yaml"))
    with pytest.raises(psycopg.OperationalError, match='certificate authentication failed for user "k8s_sql"'):
        psycopg.connect(conninfo(node, sslcert=f"{other}/o/shim-postgres-client.crt",
                                 sslkey=f"{other}/o/shim-postgres-client.key"))


def test_pg_hba_only_the_block_changed_and_backed_up(node):
    text = open(node["hba"]).read()
    assert hba.remove_block(text) == node["original_hba"]
    rules = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    assert rules[0].split()[:3] == ["hostssl", "kubernetes", "k8s_sql"]  # before every other rule
    backups = os.listdir(os.path.join(node["base"], "backup"))
    assert len(backups) == 1 and backups[0].startswith("pg_hba.conf.")
    assert open(os.path.join(node["base"], "backup", backups[0])).read() == node["original_hba"]


def test_second_run_changes_nothing(node):
    watched = [node["hba"], os.path.join(node["pgc"].config_dir, "conf.d", "k8s-sql.conf")]
    before = [os.stat(p).st_mtime_ns for p in watched]
    assert "up to date" in cli("init", "phase", "postgres", "-c", node["cfg"]).stdout
    assert "0 change(s) planned" in cli("init", "phase", "postgres", "-c", node["cfg"], "--dry-run").stdout
    assert [os.stat(p).st_mtime_ns for p in watched] == before


def test_dry_run_executes_nothing(node):
    """A dry run after the role was dropped plans CREATE ROLE but does not run it."""
    pgc = node["pgc"]
    pgc.psql("ALTER ROLE k8s_sql CREATEDB")
    try:
        r = cli("init", "phase", "postgres", "-c", node["cfg"], "--dry-run")
        assert "would alter role k8s_sql to LOGIN NOSUPERUSER NOCREATEDB" in r.stdout
        assert pgc.psql("SELECT rolcreatedb FROM pg_roles WHERE rolname = 'k8s_sql'") == "t"
        cli("init", "phase", "postgres", "-c", node["cfg"])
        assert pgc.psql("SELECT rolcreatedb FROM pg_roles WHERE rolname = 'k8s_sql'") == "f"
    finally:
        pgc.psql("ALTER ROLE k8s_sql NOCREATEDB")


def test_stopped_postgres_is_started_then_configured(node):
    """The node's own cluster, installed but stopped (here outside the Debian layout, so
    pg_ctl starts it): a dry run plans the start and marks the rest pending on it, and
    changes nothing; the real run starts it, configures it and verifies the login."""
    down = TempPostgres().init()  # initialised, never started
    base = tempfile.mkdtemp(prefix="k8s-sql-pgdown-")
    try:
        cfg = os.path.join(base, "c.yaml")
        with open(cfg, "w") as f:  # the module's certificates, a backup dir of its own
            f.write(config_text(node["base"], down).replace(f"backupDir: {node['base']}/backup",
                                                             f"backupDir: {base}/backup"))
        hba_before = open(os.path.join(down.config_dir, "pg_hba.conf")).read()
        r = cli("init", "phase", "postgres", "-c", cfg, "--dry-run")
        label = f"PostgreSQL in {down.config_dir}"
        assert f"would start {label} (installed, not running)" in r.stdout, r.stdout
        assert f"pg_ctl -D {down.data_dir}" in r.stdout and r.stdout.rstrip().endswith("nothing was changed")
        assert (f"would configure {label}: ssl in conf.d, the pg_hba.conf block, the shim's role and database "
                f"(pending: after {label} is started)") in " ".join(r.stdout.split())
        assert not down.is_running()
        assert os.listdir(os.path.join(down.config_dir, "conf.d")) == []
        assert open(os.path.join(down.config_dir, "pg_hba.conf")).read() == hba_before
        r = cli("init", "phase", "postgres", "-c", cfg)
        assert down.is_running() and down.psql("SHOW ssl") == "on"
        assert "create role k8s_sql" in r.stdout and "verified: TLSv1." in r.stdout, r.stdout
        assert "up to date" in cli("init", "phase", "postgres", "-c", cfg).stdout
    finally:
        down.destroy()
        shutil.rmtree(base, ignore_errors=True)


def test_unreachable_postgres_is_an_actionable_error(node, tmp_path):
    """A running server looked for on the wrong socket directory is not "stopped": the
    phase says it is down or unreachable and how to fix it, and changes nothing."""
    pgc = node["pgc"]
    cfg = tmp_path / "c.yaml"
    cfg.write_text(config_text(node["base"], pgc).replace(f"socketDir: {pgc.socket_dir}", f"socketDir: {tmp_path}"))
    before = os.stat(node["hba"]).st_mtime_ns
    r = cli("init", "phase", "postgres", "-c", str(cfg), rc=1)
    assert "is down or unreachable" in r.stderr and "or fix postgres.socketDir/port" in r.stderr
    assert "Traceback" not in r.stderr and os.stat(node["hba"]).st_mtime_ns == before


def test_external_mode_only_verifies(node, tmp_path):
    pki = os.path.join(node["base"], "pki")
    uri = (f"postgresql://k8s_sql@127.0.0.1:{node['pgc'].port}/kubernetes?sslrootcert={pki}/ca.crt"
           f"&sslcert={pki}/shim-postgres-client.crt&sslkey={pki}/shim-postgres-client.key")
    hba_before = os.stat(node["hba"]).st_mtime_ns
    cfg = tmp_path / "ext.yaml"
    cfg.write_text(f"apiVersion: k8s-sql.io/v1alpha1\nkind: Cluster\npostgres: {{mode: external, uri: '{uri}'}}\n")
    r = cli("init", "phase", "postgres", "-c", str(cfg))
    assert "nothing to configure" in r.stdout and "sslmode=verify-full" in r.stdout
    assert os.stat(node["hba"]).st_mtime_ns == hba_before
    cfg.write_text("apiVersion: k8s-sql.io/v1alpha1\nkind: Cluster\n"
                   f"postgres: {{mode: external, uri: '{uri}&sslmode=disable'}}\n")
    r = cli("init", "phase", "postgres", "-c", str(cfg), rc=1)
    assert "sslmode=disable" in r.stderr and "use sslmode=verify-full" in r.stderr


def test_snippet_helpers():
    """The pure functions the render and reset commands reuse."""
    cfg = load(None)
    block = hba.render_block(cfg)
    original = "# comment\n\nlocal all postgres peer\nhost all all 0.0.0.0/0 scram-sha-256"
    merged = hba.merge_block(original, block)
    assert merged.index(hba.BEGIN) < merged.index("local all postgres peer")
    assert hba.merge_block(merged, block) == merged
    assert hba.remove_block(merged) == original + "\n"
    assert hba.remove_block("x\n" + hba.BEGIN + "\nno end\n") == "x\n" + hba.BEGIN + "\nno end\n"
    assert has_include_dir("include_dir = 'conf.d'\n") and not has_include_dir("#include_dir = 'conf.d'\n")
    assert listen_addresses_for("localhost") is None and listen_addresses_for("*") is None
    assert listen_addresses_for("10.0.0.5") == "10.0.0.5,127.0.0.1,::1"
    # a further control-plane node connects to the advertise address
    assert listen_addresses_for("localhost", ["192.0.2.10"]) == "localhost,192.0.2.10"
    assert listen_addresses_for("0.0.0.0", ["192.0.2.10"]) == "0.0.0.0,::1"  # 0.0.0.0 covers IPv4
    assert listen_addresses_for("localhost,192.0.2.10", ["192.0.2.10"]) is None
    assert "hostssl   kubernetes k8s_sql 192.0.2.11/32 cert\nhostnossl" in hba.render_block(cfg, ["192.0.2.11/32"])


def test_client_list_file(tmp_path):
    """``paths.postgresClients``: join appends to it; a bad line is an error with file:line."""
    assert clients.add(None, "192.0.2.11", "control-plane node cp2").endswith("192.0.2.11  # control-plane node cp2\n")
    text = clients.add(None, "192.0.2.11", "cp2")
    assert clients.add(text, "192.0.2.11", "again") is None
    assert clients.parse(clients.add(text, "2001:db8::5", "cp3"), "f") == ["192.0.2.11/32", "2001:db8::5/128"]
    with pytest.raises(ConfigError) as e:
        clients.parse("# ok\n192.0.2.11\ncp3.example\n", "node:/etc/k8s-sql/postgres-clients")
    assert e.value.where == "node:/etc/k8s-sql/postgres-clients:3" and "'cp3.example'" in str(e.value)
    f = tmp_path / "clients"
    f.write_text(text)
    cfg = load(f"apiVersion: k8s-sql.io/v1alpha1\nkind: Cluster\npaths: {{postgresClients: {f}}}\n"
               "postgres: {clientAddresses: [10.0.0.0/24, 192.0.2.11]}\n")
    assert clients.networks(LocalHost(), cfg) == ["10.0.0.0/24", "192.0.2.11/32"]


def test_debian_cluster_found_with_pg_lsclusters_and_down():
    """With no configDir the cluster comes from ``pg_lsclusters``: here the system cluster,
    installed but not running on this machine, as after apt-get install in a container.
    A dry run plans to start it (systemctl when systemd runs, else pg_ctlcluster) and
    marks the rest pending; only a dry run, so the system cluster stays as it is. Skipped
    where there is no such stopped cluster."""
    rows = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True).stdout.split("\n")
    row = next((r.split() for r in rows if len(r.split()) > 3 and r.split()[1] == "main"), None)
    if row is None or row[3] != "down":
        pytest.skip("needs an installed, stopped Debian cluster 'main'")
    base = tempfile.mkdtemp(prefix="k8s-sql-pgmain-")
    os.chmod(base, 0o755)
    try:
        cfg = os.path.join(base, "c.yaml")
        with open(cfg, "w") as f:
            f.write(f"apiVersion: k8s-sql.io/v1alpha1\nkind: Cluster\nnode: {{advertiseAddress: 192.0.2.10}}\n"
                    f"paths: {{pkiDir: {base}/pki, backupDir: {base}/backup, stateFile: {base}/state.json}}\n")
        cli("init", "phase", "pki", "-c", cfg)
        r = cli("init", "phase", "postgres", "-c", cfg, "--dry-run")
        start = (f"systemctl start postgresql@{row[0]}-main" if os.path.isdir("/run/systemd/system")
                 else f"pg_ctlcluster {row[0]} main start")
        out = " ".join(r.stdout.split())
        assert f"would start PostgreSQL {row[0]}/main (installed, not running) {start}" in out, r.stdout
        assert f"(pending: after PostgreSQL {row[0]}/main is started)" in out
        rows = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True).stdout
        assert any(r.split()[1:2] == ["main"] and r.split()[3] == "down" for r in rows.splitlines())
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_listen_addresses_added_with_a_restart(tmp_path):
    """A server that listens on 127.0.0.1 only (set in another conf.d file) gets ::1 added
    by k8s-sql.conf and is restarted (pg_ctl, outside the Debian layout); then the phase
    is up to date."""
    pgc = TempPostgres().init()
    try:
        with open(os.path.join(pgc.config_dir, "conf.d", "00-site.conf"), "w") as f:
            f.write("listen_addresses = '127.0.0.1'\n")
        pgc.start()
        base = tempfile.mkdtemp(prefix="k8s-sql-pglisten-")
        os.chmod(base, 0o755)
        cfg = os.path.join(base, "c.yaml")
        with open(cfg, "w") as f:
            f.write(config_text(base, pgc))
        cli("init", "phase", "pki", "-c", cfg)
        r = cli("init", "phase", "postgres", "-c", cfg)
        assert "restart PostgreSQL in" in r.stdout and "listen_addresses = '127.0.0.1,::1'" in r.stdout
        assert "reload" not in r.stdout  # the restart reads everything
        assert pgc.psql("SHOW listen_addresses") == "127.0.0.1,::1"
        assert "up to date" in cli("init", "phase", "postgres", "-c", cfg).stdout
        with psycopg.connect(conninfo({"base": base, "pgc": pgc}, host="::1")) as conn:
            assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()[0] is True
        shutil.rmtree(base, ignore_errors=True)
    finally:
        pgc.destroy()


@pytest.mark.parametrize("action", ["start", "restart"])
def test_debian_cluster_is_started_and_restarted_through_systemd_when_it_runs(tmp_path, action):
    """On a systemd host the Debian cluster is controlled as its unit postgresql@V-NAME, so
    that it stays under systemd (pg_ctlcluster run as postgres would start a server outside
    it); without systemd pg_ctlcluster as postgres; outside the Debian layout pg_ctl. The
    host is a node tree (LocalHost(root=…)): this test machine runs no systemd."""
    from k8s_sql.pg.cluster import PgCluster
    from k8s_sql.phases.postgres import ctl_action, ctl_command

    debian = PgCluster("16", "main", "/etc/postgresql/16/main", "/var/lib/postgresql/16/main")
    host = LocalHost(root=str(tmp_path))
    assert ctl_command(host, debian, action) == (["pg_ctlcluster", "16", "main", action], "postgres")
    (tmp_path / "run/systemd/system").mkdir(parents=True)
    assert ctl_command(host, debian, action) == (["systemctl", action, "postgresql@16-main"], None)
    assert ctl_action(host, debian, action, "why").preview(None) == f"systemctl {action} postgresql@16-main"
    own = PgCluster("16", "", "/srv/pg/conf", "/srv/pg/data")
    argv, user = ctl_command(host, own, action)
    assert argv[0] == "/usr/lib/postgresql/16/bin/pg_ctl" and argv[-1] == action and user == "postgres"
