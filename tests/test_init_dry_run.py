"""``k8s-sql init --dry-run`` shows the whole plan on a node where nothing is set up yet.

Every path of the configuration is in a scratch directory, and the node's PostgreSQL is a
throwaway cluster of this test (pgcluster.py) that is initialised but stopped, as on a
machine where the postgresql package is installed and its cluster is not running. The
phases read this machine for the rest (os-release, dpkg, /proc): a dry run only reads.
What depends on an earlier step (the cluster being started, kubeadm being installed,
admin.conf being written) is marked pending instead of stopping the plan.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

from pgcluster import TempPostgres, free_port

PHASES = ("preflight", "prereqs", "pki", "postgres", "shim", "kubeadm-config", "kubeadm-init", "post")


def test_whole_plan_with_a_stopped_postgres():
    down = TempPostgres().init()
    base = tempfile.mkdtemp(prefix="k8s-sql-dryrun-")
    os.chmod(base, 0o755)  # the postgres OS user must be able to reach the planned key
    try:
        cfg = os.path.join(base, "cluster.yaml")
        with open(cfg, "w") as f:
            f.write("apiVersion: k8s-sql.io/v1alpha1\nkind: Cluster\n"
                    "node: {name: cp1, advertiseAddress: 192.0.2.10}\n"
                    f"paths: {{pkiDir: {base}/pki, kubeadmConfig: {base}/etc/kubeadm.yaml, patchesDir: {base}/patches, "
                    f"manifestsDir: {base}/manifests, backupDir: {base}/backup, kubeconfig: {base}/admin.conf, "
                    f"postgresClients: {base}/postgres-clients, stateFile: {base}/state.json}}\n"
                    f"shim: {{port: {free_port()}, metricsPort: {free_port()}}}\n"
                    f"postgres: {{configDir: {down.config_dir}, dataDir: {down.data_dir}, "
                    f"socketDir: {down.socket_dir}, port: {down.port}, version: '{down.major}'}}\n")
        r = subprocess.run([sys.executable, "-m", "k8s_sql", "init", "--dry-run", "-c", cfg], capture_output=True,
                           text=True, timeout=300, env={**os.environ, "COLUMNS": "400"})
        assert r.returncode == 0, r.stdout + r.stderr
        out = r.stdout
        headers = [line.split("]")[0].lstrip("[") for line in out.splitlines() if line.startswith("[")]
        assert headers == list(PHASES), out
        label = f"PostgreSQL in {down.config_dir}"
        for step in (f"would start {label} (installed, not running)",
                     f"(pending: after {label} is started)",
                     f"would write {base}/pki/postgres-server.key",
                     f"would write {base}/etc/kubeadm.yaml",
                     f"would copy {base}/admin.conf to ~root/.kube/config"):
            assert step in out, out
        if shutil.which("kubeadm", path=os.environ["PATH"] + ":/usr/sbin:/sbin") is None:
            assert "(pending: after prereqs installs kubeadm)" in out
        assert out.rstrip().endswith("nothing was changed")
        # nothing happened: the cluster is still down, nothing was written
        assert not down.is_running()
        assert os.listdir(base) == ["cluster.yaml"]
        assert os.listdir(os.path.join(down.config_dir, "conf.d")) == []
    finally:
        down.destroy()
        shutil.rmtree(base, ignore_errors=True)
