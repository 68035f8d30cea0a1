"""The installer's HA path (``postgres.ha``, README "HA") end to end: ``init phase pki`` and
``init phase postgres`` set up a pg_auto_failover monitor and the first keeper on this
machine, ``k8s-sql join --control-plane`` (over the real sshd of tests/sshd.py, as
tests/test_join.py does) adds a second keeper that becomes a synchronous standby,
``status`` shows both with their roles, and ``reset`` of the second drops it from the
formation.

All real: pg_auto_failover 2.0 (``pg_autoctl`` from Debian), PostgreSQL, TLS with
certificate login, sshd. Stand-ins, at the edge: systemd is not PID 1 here, so the phase
starts ``pg_autoctl run`` detached with ``setsid`` (the path it takes on any node without
systemd; the systemd unit is checked in a plan on a scratch root); kubeadm cannot run, so a
stand-in ``kubeadm`` script (as in tests/test_join.py) answers the join; the prereqs
phase is skipped (pg-auto-failover-cli and postgresql-15-auto-failover are installed on
the machine, and prereqs has its own tests). The "nodes" are this machine at 127.0.0.1 and
127.0.0.2 (a third, 127.0.0.3, is listed but never joins: the formation needs three
addresses to be configured); each keeper has its own port (``address:port`` entries of
``postgres.ha.nodes``) since both share this machine's Unix socket directory.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest
from rich.console import Console

from k8s_sql.cli.common import make_context
from k8s_sql.config import load_file
from k8s_sql.host import LocalHost, ScratchHost
from k8s_sql.kubeadm import sidecar
from k8s_sql.kubeadm.yamlio import load as load_yaml
from k8s_sql.pg import ha
from k8s_sql.phases.join import run_join
from k8s_sql.phases.postgres import Postgres
from k8s_sql.phases.postgres_ha import UNITS, PostgresHa, this_node
from k8s_sql.phases.reset import Reset
from k8s_sql.phases.runner import run_phases
from k8s_sql.remote import open_host
from k8s_sql.status import postgres_ha_status
from pgcluster import free_port
from sshd import Sshd

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "ha"))
from support import pg_auto_failover_missing  # noqa: E402

pytestmark = pytest.mark.skipif(pg_auto_failover_missing() is not None, reason=pg_auto_failover_missing() or "")

KUBEADM = """#!/bin/sh
echo "$*" >>"{log}"
case "$1 $2" in
  "token create") echo "kubeadm join 192.0.2.10:6443 --token abcdef.0123456789abcdef --discovery-token-ca-cert-hash sha256:00" ;;
  "init phase") echo "[upload-certs] Using certificate key:"; echo "{key}" ;;
  "join "*) mkdir -p "$(dirname "{kubelet_conf}")"; echo "kind: Config" >"{kubelet_conf}" ;;
  "reset -f") rm -f "{kubelet_conf}" ;;
  *) echo "stand-in kubeadm: unexpected $*" >&2; exit 1 ;;
esac
"""


def write_config(path: str, base: str, name: str, address: str, nodes: list[str], monitor_port: int,
                 kubeconfig: str) -> str:
    with open(path, "w") as f:
        f.write(f"apiVersion: k8s-sql.io/v1alpha1\nkind: Cluster\nnode: {{name: {name}, advertiseAddress: '{address}'}}\n"
                f"kubernetes: {{controlPlaneEndpoint: '127.0.0.1:6443'}}\n"
                f"paths: {{pkiDir: {base}/pki, backupDir: {base}/backup, patchesDir: {base}/patches, "
                f"kubeadmConfig: {base}/kubeadm.yaml, postgresClients: {base}/postgres-clients, "
                f"kubeconfig: {kubeconfig}, stateFile: {base}/state.json}}\n"
                f"postgres: {{ha: {{enabled: true, nodes: {json.dumps(nodes)}, monitorPort: {monitor_port}, "
                f"dataDir: {base}/ha}}}}\n"
                f"shim: {{port: {free_port()}, metricsPort: {free_port()}}}\n")
    return path


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "k8s_sql", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "300"})


def autoctl_pids(pgdata: str) -> list[int]:
    """Pids of the ``pg_autoctl`` processes serving ``pgdata`` (from /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(b"pg_autoctl") and pgdata.encode() in argv:
                out.append(int(entry))
    return out


def stop_all(*pgdatas: str) -> None:
    for pgdata in pgdatas:
        subprocess.run(["runuser", "-u", "postgres", "--", "pg_autoctl", "stop", "--pgdata", pgdata, "--immediate"],
                       capture_output=True, timeout=60,
                       env={**os.environ, "XDG_CONFIG_HOME": os.path.join(os.path.dirname(pgdata), "config"),
                            "XDG_DATA_HOME": os.path.join(os.path.dirname(pgdata), "share"),
                            "XDG_RUNTIME_DIR": os.path.join(os.path.dirname(pgdata), "run")})
        for pid in autoctl_pids(pgdata):  # the processes this test started, by pid
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Two nodes' configurations under a 0755 temp dir (postgres must reach the keys), the
    stand-in kubeadm on PATH locally and in the sshd's sessions."""
    base = tempfile.mkdtemp(prefix="k8s-sql-ha-install-")
    os.chmod(base, 0o755)
    bindir = os.path.join(base, "bin")
    os.makedirs(bindir)
    n1, n2 = os.path.join(base, "n1"), os.path.join(base, "n2")
    for d in (n1, n2):
        os.makedirs(d)
        os.chmod(d, 0o755)
    admin = os.path.join(n1, "admin.conf")
    with open(admin, "w") as f:
        f.write("kind: Config\n")
    log = os.path.join(base, "kubeadm.log")
    with open(os.path.join(bindir, "kubeadm"), "w") as f:
        f.write(KUBEADM.format(log=log, key="c0" * 32, kubelet_conf=os.path.join(n2, "kubelet.conf")))
    os.chmod(os.path.join(bindir, "kubeadm"), 0o755)
    nodes = [f"127.0.0.1:{free_port()}", f"127.0.0.2:{free_port()}", f"127.0.0.3:{free_port()}"]
    monitor_port = free_port()
    first = write_config(os.path.join(base, "first.yaml"), n1, "cp1", "127.0.0.1", nodes, monitor_port, admin)
    second = write_config(os.path.join(base, "second.yaml"), n2, "cp2", "127.0.0.2", nodes, monitor_port,
                          os.path.join(n2, "admin.conf"))
    path = f"{bindir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    server = Sshd(path=path).start()
    old_path = os.environ["PATH"]
    os.environ["PATH"] = f"{bindir}:{old_path}"
    yield {"base": base, "n1": n1, "n2": n2, "first": first, "second": second, "nodes": nodes, "sshd": server,
           "log": log, "monitor_port": monitor_port}
    os.environ["PATH"] = old_path
    server.stop()
    stop_all(f"{n2}/ha/node", f"{n1}/ha/node", f"{n1}/ha/monitor")
    shutil.rmtree(base, ignore_errors=True)


def quiet(ctx, sink):
    ctx.console = Console(file=sink, width=300)
    return ctx


def test_dry_run_plans_the_formation_and_changes_nothing(cluster):
    """``init phase pki`` and ``postgres`` in a dry run (pki's files replayed in memory):
    the monitor, then the keeper, each created, configured and started, the rest pending."""
    sink = io.StringIO()
    ctx = quiet(make_context(load_file(cluster["first"]), dry_run=True, host=LocalHost()), sink)
    from k8s_sql.phases.pki import Pki

    run_phases([Pki(), Postgres()], ctx, summary=False)
    out = sink.getvalue()
    assert "would pg_autoctl create monitor: the pg_auto_failover monitor" in out, out
    port1 = cluster["nodes"][0].split(":")[1]
    assert f"would pg_autoctl create postgres: the pg_auto_failover keeper 127.0.0.1:{port1}" in out, out
    assert "configure and start the monitor (pending: after pg_autoctl create monitor)" in out
    assert "--ssl-mode verify-full" in out and "--skip-pg-hba" in out
    assert not os.path.exists(os.path.join(cluster["n1"], "ha")) and not os.path.exists(
        os.path.join(cluster["n1"], "pki"))


def test_systemd_units_in_a_plan_on_a_scratch_root(tmp_path, cluster):
    """Where systemd runs (``/run/systemd/system`` on the scratch root), the services are
    units run as postgres with the TLS environment, enabled and started with systemctl."""
    root = tmp_path / "root"
    (root / "run/systemd/system").mkdir(parents=True)
    cfg = load_file(cluster["first"])
    cfg.postgres.ha.data_dir = "/var/lib/postgresql/k8s-sql-ha"
    host = ScratchHost(str(root))
    node = this_node(host, cfg)
    changes = PostgresHa()._configure(make_context(cfg, host=host), node, "monitor")
    unit = next(c for c in changes if getattr(c, "path", "").endswith(UNITS["monitor"]))
    text = unit.content.decode()
    assert "User=postgres" in text and "ExecStart=" in text and "run --pgdata /var/lib/postgresql/k8s-sql-ha/monitor" \
        in text and f"Environment=PGSSLCERT={cfg.paths.pki_dir}/{ha.NODE_CLIENT_CERT}" in text
    assert any(c.describe() == f"start the pg_auto_failover monitor ({UNITS['monitor']})" for c in changes)


def test_init_join_status_reset(cluster):
    """The whole HA path on two nodes (see the module doc)."""
    first, n1, n2 = cluster["first"], cluster["n1"], cluster["n2"]
    for phase in ("pki", "postgres"):
        r = cli("init", "phase", phase, "-c", first)
        assert r.returncode == 0, r.stdout + r.stderr
    assert "verified: PostgreSQL" not in r.stdout  # the HA verify speaks of the formation
    assert "on the formation's primary, sslmode=verify-full, target_session_attrs=read-write" in r.stdout, r.stdout
    assert autoctl_pids(f"{n1}/ha/monitor") and autoctl_pids(f"{n1}/ha/node")
    cfg1 = load_file(first)
    st = postgres_ha_status(LocalHost(), cfg1)
    assert st["up"] and [n["role"] for n in st["nodes"]] == ["primary"], st

    # a second init plans nothing
    again = cli("init", "phase", "postgres", "-c", first)
    assert again.returncode == 0 and "up to date" in again.stdout, again.stdout + again.stderr

    # the kubeadm.yaml join reads (controlPlaneEndpoint)
    from k8s_sql.kubeadm import config as kconfig

    with open(os.path.join(n1, "kubeadm.yaml"), "w") as f:
        f.write(kconfig.render(cfg1, advertise_address="127.0.0.1", cri_socket="unix:///x.sock"))

    sink = io.StringIO()
    sshd = cluster["sshd"]
    target = open_host("root@127.0.0.1", port=sshd.port, key_file=sshd.client_key, known_hosts=sshd.known_hosts)
    try:
        cp = quiet(make_context(cfg1, host=LocalHost()), sink)
        node = quiet(make_context(load_file(cluster["second"]), host=target), sink)
        run_join(cp, node, control_plane=True, skip=frozenset({"prereqs", "shim"}))
    finally:
        target.close()
    out = sink.getvalue()
    assert "pg_autoctl create postgres: the pg_auto_failover keeper 127.0.0.2" in out, out
    assert autoctl_pids(f"{n2}/ha/node"), out
    st = postgres_ha_status(LocalHost(), cfg1)
    roles = {n["host"]: n["role"] for n in st["nodes"]}
    assert roles == {"127.0.0.1": "primary", "127.0.0.2": "standby"}, st
    assert "reached: " in out and "as role k8s_sql" in out
    # the joining node's sidecar has every node, libpq picks the primary
    patch = load_yaml(open(os.path.join(n2, "patches", sidecar.PATCH_FILE)).read(), "patch")
    shim = next(c for c in patch["spec"]["containers"] if c["name"] == sidecar.CONTAINER_NAME)
    args = " ".join(shim["args"])
    assert "--datastore=postgresql://k8s_sql@" + ",".join(cluster["nodes"]) + "/kubernetes?" in args, args
    assert "target_session_attrs=read-write" in args
    # replication is synchronous between the two keepers
    sync = subprocess.run(["runuser", "-u", "postgres", "--", "psql", "-X", "-A", "-t", "-h", "/var/run/postgresql",
                           "-p", cluster["nodes"][0].split(":")[1], "-d", "postgres", "-c",
                           "SELECT application_name, sync_state FROM pg_stat_replication"], capture_output=True,
                          text=True)
    rows = [r.split("|") for r in sync.stdout.split()]
    assert len(rows) == 1 and rows[0][0].startswith("pgautofailover_standby_") and rows[0][1] in ("sync", "quorum"), \
        sync.stdout + sync.stderr

    # status from the command line shows both, with roles
    r = cli("status", "-c", first, "-o", "json", timeout=120)
    data = json.loads(r.stdout)
    assert {(n["host"], n["role"]) for n in data["postgres_ha"]["nodes"]} == {("127.0.0.1", "primary"),
                                                                             ("127.0.0.2", "standby")}, r.stdout

    # reset of the second node drops it from the formation, keeps its data
    sink = io.StringIO()
    target = open_host("root@127.0.0.1", port=sshd.port, key_file=sshd.client_key, known_hosts=sshd.known_hosts)
    try:
        node = quiet(make_context(load_file(cluster["second"]), host=target), sink)
        run_phases([Reset()], node, summary=False)
    finally:
        target.close()
    out = sink.getvalue()
    assert "pg_autoctl drop node: remove this keeper (127.0.0.2:" in out and "its data stays" in out, out
    st = postgres_ha_status(LocalHost(), cfg1)
    assert len(st["nodes"]) == 1, out
    assert [(n["host"], n["role"]) for n in st["nodes"]] == [("127.0.0.1", "primary")], st
    assert "pg_autoctl drop node keeps your data" in out, out
    assert not autoctl_pids(f"{n2}/ha/node")
    assert os.path.exists(f"{n2}/ha/node/PG_VERSION")  # no --delete-data: the data stays
    # the first node's keeper still serves writes alone
    assert autoctl_pids(f"{n1}/ha/node") and st["up"]

    # reset --delete-data of the first node: its keeper dropped and destroyed, the monitor
    # stopped and destroyed — no pg_autoctl left, no data directory of the formation
    sink = io.StringIO()
    run_phases([Reset(delete_data=True)], quiet(make_context(cfg1), sink), summary=False)
    out = sink.getvalue()
    assert "pg_autoctl drop monitor --destroy" in out, out
    assert not autoctl_pids(f"{n1}/ha/node") and not autoctl_pids(f"{n1}/ha/monitor"), out
    assert not os.path.exists(f"{n1}/ha/node/PG_VERSION") and not os.path.exists(f"{n1}/ha/monitor/PG_VERSION"), out
