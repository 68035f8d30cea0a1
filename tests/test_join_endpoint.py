"""``join --control-plane`` checks the cluster's controlPlaneEndpoint before it touches the
joining node: kubeadm (``checkIfReadyForAdditionalControlPlane``) refuses a further control
plane without one, but only once the node has been prepared.

There is no API server here: a stand-in ``kubectl`` (a script first on PATH) answers the
``kubeadm-config`` ConfigMap from a file, or fails like kubectl without a server. Both
nodes are this machine with files under scratch roots (``LocalHost(root=…)``)."""

from __future__ import annotations

import os
import stat

import pytest
import yaml

from k8s_sql.config import Cluster
from k8s_sql.errors import K8sSqlError
from k8s_sql.host import LocalHost
from k8s_sql.kubeadm import config as kconfig
from k8s_sql.kubeadm.cluster import control_plane_endpoint
from k8s_sql.phases.base import Context
from k8s_sql.phases.join import run_join

KUBECTL = """#!/bin/sh
if [ -f "$CONFIGMAP" ]; then cat "$CONFIGMAP"; else echo "The connection to the server was refused" >&2; exit 1; fi
"""


def tree(root):
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def nodes(tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "kubectl").write_text(KUBECTL)
    (bindir / "kubectl").chmod(0o755 | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    monkeypatch.setenv("CONFIGMAP", str(tmp_path / "configmap.yaml"))
    first, joining = tmp_path / "first", tmp_path / "joining"
    cfg = Cluster()
    cfg.node.name = "cp1"
    (first / "etc/kubernetes").mkdir(parents=True)
    (first / "etc/kubernetes/admin.conf").write_text("apiVersion: v1\nkind: Config\n")
    joining.mkdir()
    (joining / "marker").write_text("untouched\n")
    cp = Context(host=LocalHost(root=str(first)), config=cfg)
    node = Context(host=LocalHost(root=str(joining)), config=Cluster())
    init_text = kconfig.render(cfg, advertise_address="192.168.56.10", cri_socket="unix:///x.sock")
    return cp, node, tmp_path, init_text


def test_refused_without_an_endpoint_before_anything_changes(nodes):
    """A cluster made without controlPlaneEndpoint (an older k8s-sql, or kubeadm by hand):
    exit with what to do, both nodes untouched, nothing installed."""
    cp, node, tmp, init_text = nodes
    cluster = list(yaml.safe_load_all(init_text))[1]
    del cluster["controlPlaneEndpoint"]
    (tmp / "configmap.yaml").write_text(yaml.safe_dump(cluster))
    before = tree(tmp / "first"), tree(tmp / "joining")
    with pytest.raises(K8sSqlError, match="no controlPlaneEndpoint") as e:
        run_join(cp, node, control_plane=True)  # prereqs not skipped: it must not get that far
    assert "the kubeadm-config ConfigMap" in e.value.what and "worker" in e.value.hint
    assert (tree(tmp / "first"), tree(tmp / "joining")) == before


def test_endpoint_from_the_configmap_or_from_the_recorded_kubeadm_config(nodes):
    cp, node, tmp, init_text = nodes
    (tmp / "configmap.yaml").write_text("controlPlaneEndpoint: k8s.example:6443\nkind: ClusterConfiguration\n")
    assert control_plane_endpoint(cp.host, cp.config) == ("k8s.example:6443", "the kubeadm-config ConfigMap")
    (tmp / "configmap.yaml").unlink()  # no API server: the file init wrote
    path = tmp / "first" / cp.config.paths.kubeadm_config.lstrip("/")
    path.parent.mkdir(parents=True)
    path.write_text(init_text)
    assert control_plane_endpoint(cp.host, cp.config) == ("192.168.56.10:6443", cp.config.paths.kubeadm_config)
    path.unlink()
    with pytest.raises(K8sSqlError, match="cannot read the cluster's controlPlaneEndpoint .The connection"):
        control_plane_endpoint(cp.host, cp.config)
