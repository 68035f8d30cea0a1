"""``k8s-sql migrate`` through kube-apiserver v1.20.2 (the cached build, kubeadm's flags): objects
written on etcd 3.4; kube-apiserver stopped; ``k8s-sql migrate --data-only --from-etcd`` into the
datastore ``k8s-sql init phase pki`` and ``postgres`` prepared (the shim's own role and
certificates, verify-full); kube-apiserver started on the shim lists the same objects with the same
resourceVersions, serves a read at an old resourceVersion, and an update carrying a resourceVersion
read before the migration succeeds (a stale one still conflicts)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from kube import (ADVERTISE_ADDRESS, EtcdDatastore, KubeApiserver, Kubectl, ShimDatastore, _get,  # noqa: F401
                  ensure_binaries, free_port)
from kubepki import make_kube_pki

#: Where build-kubernetes.sh caches the binaries (its default cache root).
CACHED_BIN = Path("/var/cache/k8s-sql-tests/kubernetes-1.20.5+really1.20.2-1.1+deb12u1/bin")


@pytest.fixture(scope="module")
def kube_bin(tmp_path_factory) -> Path:
    """The cached kube-apiserver and kubectl when they are there (a build of further commands
    by another run holds the build lock meanwhile), else built by build-kubernetes.sh."""
    import os

    if all(os.access(CACHED_BIN / n, os.X_OK) for n in ("kube-apiserver", "kubectl")):
        return CACHED_BIN
    return ensure_binaries(tmp_path_factory.getbasetemp() / "build-kubernetes.log")

KINDS = "configmaps,secrets,services,serviceaccounts,namespaces"


def _rvs(kubectl) -> dict[str, str]:
    items = kubectl.json("get", KINDS, "--all-namespaces")["items"]
    return {f"{i['kind']}/{i['metadata'].get('namespace', '')}/{i['metadata']['name']}":
            i["metadata"]["resourceVersion"] for i in items}


def test_objects_keep_their_resource_versions_after_migrate(kube_bin):
    base = Path(tempfile.mkdtemp(prefix="k8s-sql-kube-migrate-"))
    etcd, shim, apiserver = EtcdDatastore(base / "etcd"), ShimDatastore(), None
    port = free_port()
    try:
        etcd.start()
        pki = make_kube_pki(base / "pki", f"https://127.0.0.1:{port}", advertise_address=ADVERTISE_ADDRESS)
        kubectl = Kubectl(kube_bin / "kubectl", pki.admin_conf, base / "kubectl-cache")
        apiserver = KubeApiserver(kube_bin / "kube-apiserver", pki, etcd, port, base / "apiserver-etcd.log").start()
        kubectl("create", "namespace", "moved")
        for i in range(15):
            kubectl("-n", "moved", "create", "configmap", f"cm{i}", f"--from-literal=k=v{i}")
        for i in range(0, 15, 4):
            kubectl("-n", "moved", "label", "configmap", f"cm{i}", "round=2")
        kubectl("-n", "moved", "delete", "configmap", "cm1")
        kubectl("-n", "moved", "create", "secret", "generic", "s1", "--from-literal=password=hunter2")
        old = kubectl.json("-n", "moved", "get", "configmap", "cm2")
        kubectl("-n", "moved", "label", "configmap", "cm3", "round=3")
        stale = kubectl.json("-n", "moved", "get", "configmap", "cm3")
        kubectl("-n", "moved", "label", "configmap", "cm3", "round=4", "--overwrite")
        before = _rvs(kubectl)
        apiserver.stop()

        shim.start()
        shim.daemon.stop()  # the datastore prepared as on a node, the shim not serving yet
        r = subprocess.run([sys.executable, "-m", "k8s_sql", "migrate", "--data-only", "--from-etcd", etcd.endpoint,
                            "--cacert", etcd.ca_file, "--cert", etcd.cert_file, "--key", etcd.key_file,
                            "--datastore", shim.datastore_uri], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "verified:" in r.stdout and "on both sides" in r.stdout
        etcd.stop()
        shim.daemon.start()
        shim.daemon.wait_until(lambda: _get(shim.metrics_url + "/health")[0] == 200, "200 from /health", 60)

        apiserver = KubeApiserver(kube_bin / "kube-apiserver", pki, shim, port, base / "apiserver-shim.log").start()
        after = _rvs(kubectl)
        assert after == {k: v for k, v in after.items() if k in before}
        missing = {k: v for k, v in before.items() if after.get(k) != v}
        # kube-apiserver may rewrite its own objects on start (the kubernetes Service/Endpoints)
        assert all(k.startswith(("Service/default/kubernetes",)) for k in missing), missing
        assert before["ConfigMap/moved/cm0"] == after["ConfigMap/moved/cm0"]
        assert "ConfigMap/moved/cm1" not in after
        secret = kubectl.json("-n", "moved", "get", "secret", "s1")
        assert secret["data"]["password"] == "aHVudGVyMg=="
        # an update carrying the resourceVersion read on etcd succeeds ...
        old["data"]["k"] = "changed"
        r = kubectl("replace", "-f", "-", input=json.dumps(old))
        assert "replaced" in r.stdout
        # ... and one carrying a superseded resourceVersion conflicts, as it would have on etcd
        stale["data"]["k"] = "stale"
        r = kubectl("replace", "-f", "-", input=json.dumps(stale), check=False)
        assert r.returncode != 0 and "the object has been modified" in r.stderr
        # a list at a resourceVersion from before the move is served from history
        listed = kubectl("get", "--raw", f"/api/v1/namespaces/moved/configmaps?resourceVersion="
                         f"{before['ConfigMap/moved/cm5']}&resourceVersionMatch=Exact")
        assert json.loads(listed.stdout)["metadata"]["resourceVersion"] == before["ConfigMap/moved/cm5"]
    finally:
        if apiserver:
            apiserver.stop()
        shim.stop()
        etcd.stop()
        shutil.rmtree(base, ignore_errors=True)
