"""postgres.ha in the configuration, the shims' multi-host URI (the sidecar's --datastore),
pg_auto_failover's state as status reads it, and postgres.mode: external with a user's
multi-host URI. Pure functions; the failover itself is tests/ha/test_failover.py."""

from __future__ import annotations

import json

import pytest
from psycopg.conninfo import conninfo_to_dict

from k8s_sql import config
from k8s_sql.errors import ConfigError, K8sSqlError
from k8s_sql.kubeadm import sidecar
from k8s_sql.pg import connect, ha

HEAD = "apiVersion: k8s-sql.io/v1alpha1\nkind: Cluster\n"


def _load(body: str) -> config.Cluster:
    return config.load(HEAD + body, "cluster.yaml")


def test_ha_off_by_default_and_uri_unchanged():
    cfg = config.load(None)
    assert cfg.postgres.ha.enabled is False
    assert sidecar.datastore_uri(cfg).startswith("postgresql://k8s_sql@127.0.0.1:5432/kubernetes?")


def test_ha_uri_lists_every_node_read_write_verify_full():
    cfg = _load("postgres:\n  ha:\n    enabled: true\n    nodes: [192.0.2.11, 192.0.2.12, 'fd00::13']\n")
    params = conninfo_to_dict(sidecar.datastore_uri(cfg))
    assert params["host"] == "192.0.2.11,192.0.2.12,fd00::13"
    assert params["port"] == "5433,5433,5433"  # postgres.ha.port: Debian's own cluster keeps 5432
    assert params["target_session_attrs"] == "read-write"
    assert params["sslmode"] == "verify-full" and params["user"] == "k8s_sql" and "password" not in params
    assert params["sslcert"].endswith("shim-postgres-client.crt")


@pytest.mark.parametrize("body, field, words", [
    ("  ha:\n    enabled: true\n    nodes: [192.0.2.11, 192.0.2.12]\n", "postgres.ha.nodes", "needs 3"),
    ("  ha:\n    enabled: true\n    nodes: [192.0.2.11, 192.0.2.11, 192.0.2.12]\n", "postgres.ha.nodes", "twice"),
    ("  ha:\n    enabled: true\n    nodes: [192.0.2.11, node-b, 192.0.2.12]\n", "postgres.ha.nodes[1]",
     "not an IP address"),
    ("  ha:\n    enabled: true\n    monitorPort: 5432\n    nodes: [192.0.2.11, 192.0.2.12, 192.0.2.13]\n",
     "postgres.ha.monitorPort", "also postgres.port"),
    ("  mode: external\n  uri: postgresql://db:5432/k\n  ha:\n    enabled: true\n"
     "    nodes: [192.0.2.11, 192.0.2.12, 192.0.2.13]\n", "postgres.ha.enabled", "multi-host"),
])
def test_ha_rejected_with_field_line_and_hint(body, field, words):
    with pytest.raises(ConfigError) as e:
        _load("postgres:\n" + body)
    assert e.value.field == field
    text = str(e.value)
    assert words in text and "cluster.yaml:" in text


def test_external_multi_host_uri_kept_with_shim_tls():
    """A user's own HA (Patroni, a cloud service) as postgres.mode: external."""
    uri = "postgresql://db1.example:5432,db2.example:6432/kube?target_session_attrs=read-write&sslmode=require"
    cfg = _load(f"postgres:\n  mode: external\n  uri: '{uri}'\n")
    params = conninfo_to_dict(sidecar.datastore_uri(cfg))
    assert params["host"] == "db1.example,db2.example" and params["port"] == "5432,6432"
    assert params["target_session_attrs"] == "read-write" and params["sslmode"] == "verify-full"
    conninfo, warning = connect.external_conninfo(uri)
    assert conninfo_to_dict(conninfo)["host"] == "db1.example,db2.example"
    assert warning  # sslmode=require does not check the host name: said, not hidden
    with pytest.raises(K8sSqlError):
        connect.external_conninfo("postgresql://db1:5432,db2:5432/k?sslmode=prefer")


def _row(name, state, assigned, lsn, health=1, port=5432):
    return {"health": health, "node_id": 1, "group_id": 0, "nodehost": "192.0.2.1", "nodename": name,
            "nodeport": port, "reported_lsn": lsn, "reported_tli": 1, "formation_kind": "pgsql",
            "candidate_priority": 50, "replication_quorum": True, "current_group_state": state,
            "assigned_group_state": assigned}


def test_parse_state_roles_and_lag():
    text = json.dumps([_row("n1", "primary", "primary", "0/5000100"), _row("n2", "secondary", "secondary", "0/5000000"),
                       _row("n3", "catchingup", "secondary", "0/4FFFF00", health=0)])
    nodes = {n.name: n for n in ha.parse_state(text)}
    assert nodes["n1"].role == "primary" and nodes["n1"].lag_bytes == 0
    assert nodes["n2"].role == "standby" and nodes["n2"].lag_bytes == 0x100
    assert nodes["n3"].role == "catchingup -> secondary" and not nodes["n3"].healthy
    assert nodes["n3"].lag_bytes == 0x5000100 - 0x4FFFF00


def test_parse_state_without_primary_has_no_lag():
    nodes = ha.parse_state(json.dumps([_row("n2", "report_lsn", "report_lsn", "0/5000000")]))
    assert nodes[0].lag_bytes is None and nodes[0].role == "report_lsn"
    with pytest.raises(ValueError):
        ha.parse_state('[{"nodename": "x"}]')


def test_hba_lines_cert_only_per_node():
    lines = ha.hba_lines(["192.0.2.11", "192.0.2.12"], "kubernetes")
    assert all(line.startswith("local ") and "peer" in line or (line.startswith("hostssl ") and line.endswith(
        f"cert map={ha.IDENT_MAP}")) for line in lines)
    assert any("replication pgautofailover_replicator 192.0.2.12/32" in line for line in lines)
    assert not any("trust" in line or "md5" in line or "scram" in line for line in lines)
    assert ha.ident_lines()[0] == f"{ha.IDENT_MAP} {ha.NODE_CLIENT_CN} autoctl_node"


def test_ha_node_port_entries():
    """An entry of postgres.ha.nodes may give its own port (address:port, [v6]:port)."""
    cfg = _load("postgres:\n  ha:\n    enabled: true\n    nodes: ['192.0.2.11:6001', 192.0.2.12, '[fd00::13]:6003']\n")
    params = conninfo_to_dict(sidecar.datastore_uri(cfg))
    assert params["host"] == "192.0.2.11,192.0.2.12,fd00::13" and params["port"] == "6001,5433,6003"
    with pytest.raises(ConfigError) as e:
        _load("postgres:\n  ha:\n    enabled: true\n    nodes: ['192.0.2.11:x', 192.0.2.12, 192.0.2.13]\n")
    assert e.value.field == "postgres.ha.nodes[0]" and "address:port" in str(e.value)


def test_init_phase_postgres_refuses_a_node_not_in_the_formation(tmp_path):
    """`k8s-sql init phase postgres` with postgres.ha.enabled on a node whose advertise
    address is not in postgres.ha.nodes says so and what to do (exit 1, no traceback,
    nothing changed)."""
    import os
    import subprocess
    import sys

    cfg = tmp_path / "cluster.yaml"
    cfg.write_text(HEAD + f"paths: {{pkiDir: {tmp_path}/pki, stateFile: {tmp_path}/state.json, "
                   f"backupDir: {tmp_path}/backup}}\n"
                   "postgres:\n  ha:\n    enabled: true\n    nodes: [192.0.2.11, 192.0.2.12, 192.0.2.13]\n")
    r = subprocess.run([sys.executable, "-m", "k8s_sql", "init", "phase", "postgres", "--dry-run", "-c", str(cfg)],
                       capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "is not in postgres.ha.nodes" in out and "node.advertiseAddress" in " ".join(out.split()) \
        and "Traceback" not in out
    assert sorted(os.listdir(tmp_path)) == ["cluster.yaml"]


def test_reads_wait_for_a_confirmed_synchronous_commit():
    """The shim's read lease (storage/readlease.py): with synchronous standbys configured, a
    read is refused (UNAVAILABLE) once no confirmation that started within the lease has been
    acknowledged; without standbys reads are never held back. The partition test in
    test_failover.py shows it end to end (no stale read from a cut-off primary)."""
    import time

    from k8s_sql.shim.storage.base import UnavailableError
    from k8s_sql.shim.storage.readlease import ReadLease

    lease = ReadLease(pool=None, lease=5.0)
    lease.required, lease.confirmed = True, time.monotonic() - 1
    lease.check()  # confirmed 1 s ago: reads go on
    lease.confirmed = time.monotonic() - 6
    with pytest.raises(UnavailableError, match="has not confirmed a synchronous commit"):
        lease.check()
    lease.required = False  # a single PostgreSQL: nothing to be stale against
    lease.check()
