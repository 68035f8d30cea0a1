"""The kubeadm-config phase: the kubeadm configuration for 1.30 (v1beta3) and 1.34
(v1beta4), checked field by field against the kubeadm configuration API reference
(kubeadm.k8s.io/v1beta3 and v1beta4: InitConfiguration.localAPIEndpoint, nodeRegistration,
patches; ClusterConfiguration.kubernetesVersion, networking, controlPlaneEndpoint,
etcd.external), the node facts (CRI socket, advertise address) and idempotence."""

from __future__ import annotations

import os
import subprocess

import pytest
import yaml

from k8s_sql.config import Cluster
from k8s_sql.errors import K8sSqlError
from k8s_sql.host import DryRunHost, LocalHost
from k8s_sql.kubeadm import config as kconfig
from k8s_sql.kubeadm import node
from k8s_sql.phases.base import Context
from k8s_sql.phases.kubeadm_config import KubeadmConfig
from k8s_sql.phases.runner import run_phases

PKI = "/etc/kubernetes/pki/k8s-sql"


def cluster(version: str, **node_kw) -> Cluster:
    cfg = Cluster()
    cfg.kubernetes.version = version
    cfg.node.name = "cp1"
    for k, v in node_kw.items():
        setattr(cfg.node, k, v)
    return cfg


@pytest.mark.parametrize("version, api", [("v1.30.14", "kubeadm.k8s.io/v1beta3"),
                                          ("v1.34.2", "kubeadm.k8s.io/v1beta4")])
def test_config_fields(version, api):
    cfg = cluster(version)
    init, clus = yaml.safe_load_all(kconfig.render(cfg, advertise_address="192.168.56.10",
                                                   cri_socket="unix:///var/run/crio/crio.sock"))
    assert init == {
        "apiVersion": api,
        "kind": "InitConfiguration",
        "localAPIEndpoint": {"advertiseAddress": "192.168.56.10", "bindPort": 6443},
        "nodeRegistration": {"name": "cp1", "criSocket": "unix:///var/run/crio/crio.sock"},
        "patches": {"directory": "/etc/k8s-sql/patches"},
    }
    assert clus == {
        "apiVersion": api,
        "kind": "ClusterConfiguration",
        "kubernetesVersion": version,
        "controlPlaneEndpoint": "192.168.56.10:6443",  # default: the first node's advertise address
        "networking": {"podSubnet": "10.244.0.0/16", "serviceSubnet": "10.96.0.0/12"},
        "etcd": {"external": {
            "endpoints": ["https://127.0.0.1:2379"],
            "caFile": f"{PKI}/ca.crt",
            "certFile": f"{PKI}/apiserver-shim-client.crt",
            "keyFile": f"{PKI}/apiserver-shim-client.key",
        }},
    }


def test_control_plane_endpoint_and_bare_version():
    cfg = cluster("1.31")
    cfg.kubernetes.control_plane_endpoint = "k8s.example:6443"
    _, clus = yaml.safe_load_all(kconfig.render(cfg, advertise_address="10.0.0.5", cri_socket="unix:///x.sock"))
    assert clus["apiVersion"] == "kubeadm.k8s.io/v1beta4"
    assert clus["controlPlaneEndpoint"] == "k8s.example:6443"
    assert clus["kubernetesVersion"] == "v1.31"


def test_default_control_plane_endpoint_is_the_advertise_address_with_a_note():
    """kubeadm refuses `join --control-plane` without a controlPlaneEndpoint, and one cannot
    be added after init: the default is the first node's address, and the phase says that a
    load balancer or DNS name is better."""
    cfg = cluster("v1.34.2")
    _, clus = yaml.safe_load_all(kconfig.render(cfg, advertise_address="2001:db8::10", cri_socket="unix:///x.sock"))
    assert clus["controlPlaneEndpoint"] == "[2001:db8::10]:6443"
    endpoint, note = kconfig.control_plane_endpoint(cfg, "192.168.56.10")
    assert endpoint == "192.168.56.10:6443" and "load balancer or DNS name" in note


def test_too_old_version_is_an_error():
    with pytest.raises(K8sSqlError, match="1.22"):
        kconfig.api_version("v1.21.14")
    assert kconfig.api_version("v1.22.0") == "kubeadm.k8s.io/v1beta3"
    assert kconfig.api_version("v1.30.99") == "kubeadm.k8s.io/v1beta3"


def test_cri_socket_detection(tmp_path):
    host = LocalHost(root=str(tmp_path))
    cfg = cluster("v1.34.2")
    # none on the node yet: the configured runtime's default, which prereqs installs
    sock, note = node.cri_socket(host, cfg)
    assert sock == "unix:///var/run/crio/crio.sock" and "prereqs installs" in note
    with pytest.raises(K8sSqlError, match="no container runtime socket") as e:
        node.require_cri_socket(host, sock)
    assert "--cri-socket" in e.value.hint
    (tmp_path / "run/containerd").mkdir(parents=True)
    (tmp_path / "run/containerd/containerd.sock").touch()
    assert node.cri_socket(host, cfg)[0] == "unix:///run/containerd/containerd.sock"
    (tmp_path / "var/run/crio").mkdir(parents=True)
    (tmp_path / "var/run/crio/crio.sock").touch()
    assert node.cri_socket(host, cfg)[0] == "unix:///var/run/crio/crio.sock"
    cfg.kubernetes.container_runtime = "containerd"
    assert node.cri_socket(host, cfg)[0] == "unix:///run/containerd/containerd.sock"
    cfg.node.cri_socket = "/run/other.sock"
    assert node.cri_socket(host, cfg) == ("unix:///run/other.sock", "from node.criSocket")


def test_advertise_address():
    host = LocalHost()
    assert node.advertise_address(host, cluster("v1.34.2", advertise_address="10.1.2.3"))[0] == "10.1.2.3"
    with pytest.raises(K8sSqlError, match="not an IP address"):
        node.advertise_address(host, cluster("v1.34.2", advertise_address="cp1.example"))
    route = subprocess.run(["ip", "-j", "route", "get", "1.1.1.1"], capture_output=True, text=True)
    if route.returncode != 0:
        pytest.skip("this machine has no default route")
    import json
    assert node.advertise_address(host, cluster("v1.34.2"))[0] == json.loads(route.stdout)[0]["prefsrc"]


def _cfg_in(tmp_path, version="v1.34.2") -> Cluster:
    cfg = cluster(version, advertise_address="192.168.56.10", cri_socket="unix:///var/run/crio/crio.sock")
    cfg.paths.kubeadm_config = str(tmp_path / "etc/k8s-sql/kubeadm.yaml")
    cfg.paths.patches_dir = str(tmp_path / "etc/k8s-sql/patches")
    return cfg


def test_phase_writes_files_and_is_idempotent(tmp_path, capsys):
    cfg = _cfg_in(tmp_path)
    ctx = Context(host=LocalHost(), config=cfg)
    assert run_phases([KubeadmConfig()], ctx) == 2
    conf = tmp_path / "etc/k8s-sql/kubeadm.yaml"
    patch = tmp_path / "etc/k8s-sql/patches/kube-apiserver+strategic.yaml"
    for f in (conf, patch):
        st = f.stat()
        assert oct(st.st_mode & 0o777) == "0o600" and st.st_uid == 0
    docs = list(yaml.safe_load_all(conf.read_text()))
    assert docs[0]["patches"]["directory"] == cfg.paths.patches_dir
    assert yaml.safe_load(patch.read_text())["spec"]["containers"][0]["name"] == "etcd-shim"
    assert docs[0]["nodeRegistration"]["criSocket"] == "unix:///var/run/crio/crio.sock"
    before = {f: (f.read_bytes(), f.stat().st_mtime_ns) for f in (conf, patch)}
    assert run_phases([KubeadmConfig()], Context(host=LocalHost(), config=cfg)) == 0
    assert {f: (f.read_bytes(), f.stat().st_mtime_ns) for f in (conf, patch)} == before
    # a changed version rewrites only the kubeadm configuration
    cfg.kubernetes.version = "v1.30.2"
    assert run_phases([KubeadmConfig()], Context(host=LocalHost(), config=cfg)) == 1
    assert "kubeadm.k8s.io/v1beta3" in conf.read_text()


def test_dry_run_writes_nothing(tmp_path):
    cfg = _cfg_in(tmp_path)
    ctx = Context(host=DryRunHost(LocalHost()), config=cfg, dry_run=True)
    assert run_phases([KubeadmConfig()], ctx) == 2
    assert not os.path.exists(cfg.paths.kubeadm_config)
    assert b"kind: ClusterConfiguration" in ctx.host.read_bytes(cfg.paths.kubeadm_config)


def test_cli_phase(tmp_path):
    """`k8s-sql init phase kubeadm-config` end to end, then a rerun that changes nothing."""
    conf = tmp_path / "k8s-sql.yaml"
    conf.write_text(f"""apiVersion: k8s-sql.io/v1alpha1
kind: Cluster
node: {{name: cp1, advertiseAddress: 192.168.56.10}}
kubernetes: {{version: v1.30.3}}
paths: {{kubeadmConfig: {tmp_path}/kubeadm.yaml, patchesDir: {tmp_path}/patches, stateFile: {tmp_path}/state.json}}
""")
    argv = ["k8s-sql", "init", "phase", "kubeadm-config", "-c", str(conf),
            "--cri-socket", "unix:///run/containerd/containerd.sock"]
    first = subprocess.run(argv, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    init = next(yaml.safe_load_all((tmp_path / "kubeadm.yaml").read_text()))
    assert init["nodeRegistration"]["criSocket"] == "unix:///run/containerd/containerd.sock"
    again = subprocess.run(argv, capture_output=True, text=True)
    assert again.returncode == 0 and "nothing to do" in again.stdout
    bad = subprocess.run([*argv, "--kubernetes-version", "v1.20.2"], capture_output=True, text=True)
    # a bad flag value is a usage error (exit 2), refused by validation before any phase runs
    assert bad.returncode == 2 and "1.22" in bad.stderr and "Traceback" not in bad.stderr
