"""The kubeadm-init phase.

kubeadm and the kubelet cannot run here, so a stand-in ``kubeadm`` executable (a small
Python script put first on PATH) takes its place: it records its arguments, reads the
kubeadm configuration k8s-sql wrote, and — like ``kubeadm init`` — writes the
kube-apiserver manifest (a kubeadm 1.34 manifest with its etcd flags set from
etcd.external, and the ``+strategic`` patch from patches.directory merged in) and
admin.conf."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest
import yaml

from k8s_sql.config import Cluster
from k8s_sql.errors import K8sSqlError
from k8s_sql.host import DryRunHost, LocalHost
from k8s_sql.phases.base import Context
from k8s_sql.phases.kubeadm_config import KubeadmConfig
from k8s_sql.phases.kubeadm_init import KubeadmInit
from k8s_sql.phases.runner import run_phases

BASE = Path(__file__).parent / "fixtures/manifests/kube-apiserver-1.34.yaml"

STAND_IN = r'''#!{python}
import json, os, sys, yaml
from k8s_sql.kubeadm import manifest, yamlio
with open(os.environ["KUBEADM_LOG"], "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\n")
print("[init] Using Kubernetes version: stand-in")
if os.environ.get("KUBEADM_EXIT"):
    print("[preflight] stand-in failure", flush=True)
    sys.exit(int(os.environ["KUBEADM_EXIT"]))
args = sys.argv[1:]
init, cluster = yaml.safe_load_all(open(args[args.index("--config") + 1]))
ext = cluster["etcd"]["external"]
text = open(os.environ["KUBEADM_BASE"]).read()
for old, new in (("--etcd-servers=https://127.0.0.1:2379", "--etcd-servers=" + ",".join(ext["endpoints"])),
                 ("/etc/kubernetes/pki/etcd/ca.crt", ext["caFile"]),
                 ("/etc/kubernetes/pki/apiserver-etcd-client.crt", ext["certFile"]),
                 ("/etc/kubernetes/pki/apiserver-etcd-client.key", ext["keyFile"])):
    text = text.replace(old, new)
patch = open(os.path.join(init["patches"]["directory"], "kube-apiserver+strategic.yaml")).read()
out = os.environ["KUBEADM_MANIFESTS"]
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, "kube-apiserver.yaml"), "w") as f:
    f.write(yamlio.dump(manifest.apply_patch_file(text, patch, "stand-in")))
with open(os.environ["KUBEADM_ADMIN_CONF"], "w") as f:
    f.write("apiVersion: v1\nkind: Config\n")
print("Your Kubernetes control-plane has initialized successfully!")
'''


@pytest.fixture
def node(tmp_path, monkeypatch):
    """A cluster config whose paths are under tmp_path, and the stand-in kubeadm on PATH."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    kubeadm = bindir / "kubeadm"
    kubeadm.write_text(STAND_IN.format(python=sys.executable))
    kubeadm.chmod(kubeadm.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    cfg = Cluster()
    cfg.node.name, cfg.node.advertise_address = "cp1", "192.168.56.10"
    cfg.node.cri_socket = "unix:///var/run/crio/crio.sock"
    p = cfg.paths
    p.kubeadm_config = str(tmp_path / "etc/k8s-sql/kubeadm.yaml")
    p.patches_dir = str(tmp_path / "etc/k8s-sql/patches")
    p.manifests_dir = str(tmp_path / "etc/kubernetes/manifests")
    p.kubeconfig = str(tmp_path / "etc/kubernetes/admin.conf")
    p.state_file = str(tmp_path / "var/lib/k8s-sql/state.json")
    for k, v in {"KUBEADM_LOG": tmp_path / "kubeadm.log", "KUBEADM_BASE": BASE,
                 "KUBEADM_MANIFESTS": p.manifests_dir, "KUBEADM_ADMIN_CONF": p.kubeconfig}.items():
        monkeypatch.setenv(k, str(v))
    return cfg, tmp_path


def calls(tmp_path) -> list[list[str]]:
    log = tmp_path / "kubeadm.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_init_runs_kubeadm_once(node, capfd):
    cfg, tmp = node
    run_phases([KubeadmConfig(), KubeadmInit()], Context(host=LocalHost(), config=cfg))
    assert calls(tmp) == [["init", "--config", cfg.paths.kubeadm_config, "--upload-certs",
                           "--ignore-preflight-errors=ExternalEtcdVersion"]]
    out = capfd.readouterr().out
    assert "[localhost] Your Kubernetes control-plane has initialized successfully!" in out  # streamed
    pod = yaml.safe_load(Path(cfg.paths.manifests_dir, "kube-apiserver.yaml").read_text())
    assert [c["name"] for c in pod["spec"]["containers"]] == ["kube-apiserver", "etcd-shim"]
    # rerun: already initialised, kubeadm not called again
    assert run_phases([KubeadmConfig(), KubeadmInit()], Context(host=LocalHost(), config=cfg)) == 0
    assert len(calls(tmp)) == 1


def test_kine_ignores_only_external_etcd_version(node):
    """The shim is not running at kubeadm's preflight (it starts with the static pod), so
    the check that GETs /version from it is skipped, for Kine as for ours, and nothing else."""
    cfg, tmp = node
    cfg.shim.kind = "kine"
    run_phases([KubeadmConfig(), KubeadmInit()], Context(host=LocalHost(), config=cfg))
    assert calls(tmp) == [["init", "--config", cfg.paths.kubeadm_config, "--upload-certs",
                           "--ignore-preflight-errors=ExternalEtcdVersion"]]


def test_dry_run_runs_nothing(node):
    cfg, tmp = node
    ctx = Context(host=DryRunHost(LocalHost()), config=cfg, dry_run=True)
    assert run_phases([KubeadmConfig(), KubeadmInit()], ctx) == 4  # 2 files, the recorded config, kubeadm init
    assert calls(tmp) == [] and not os.path.exists(cfg.paths.kubeadm_config)


def test_kubeadm_failure_is_reported(node, monkeypatch):
    cfg, tmp = node
    monkeypatch.setenv("KUBEADM_EXIT", "1")
    with pytest.raises(K8sSqlError, match=r"kubeadm init failed \(exit 1\)") as e:
        run_phases([KubeadmConfig(), KubeadmInit()], Context(host=LocalHost(), config=cfg))
    assert "`k8s-sql reset`" in e.value.hint and "`kubeadm reset`" not in e.value.hint


def test_missing_kubeadm(node, monkeypatch):
    cfg, tmp = node
    monkeypatch.setenv("PATH", "/nonexistent")
    run_phases([KubeadmConfig()], Context(host=LocalHost(), config=cfg))
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    if LocalHost().which("kubeadm"):
        pytest.skip("a real kubeadm is installed on this machine")
    # planned all the same (a dry run and a real run alike), marked pending; applying it fails
    real = KubeadmInit().plan(Context(host=LocalHost(), config=cfg))
    dry = KubeadmInit().plan(Context(host=DryRunHost(LocalHost()), config=cfg, dry_run=True))
    assert [c.describe() for c in real] == [c.describe() for c in dry]
    assert real[-1].describe().endswith("(pending: after prereqs installs kubeadm)")
    with pytest.raises(K8sSqlError, match="kubeadm is not installed") as e:
        run_phases([KubeadmInit()], Context(host=LocalHost(), config=cfg))
    assert "prereqs" in e.value.hint


def test_missing_config_and_foreign_manifest(node):
    cfg, tmp = node
    with pytest.raises(K8sSqlError, match="configuration file is missing"):
        KubeadmInit().plan(Context(host=LocalHost(), config=cfg))
    Path(cfg.paths.manifests_dir).mkdir(parents=True)
    Path(cfg.paths.manifests_dir, "kube-apiserver.yaml").write_text(BASE.read_text())
    with pytest.raises(K8sSqlError, match="does not run the configured etcd shim") as e:
        KubeadmInit().plan(Context(host=LocalHost(), config=cfg))
    assert "patch-manifest" in e.value.hint and calls(tmp) == []


def test_interrupted_init_is_reported(node):
    """A manifest with the shim but no admin.conf: kubeadm stopped half-way."""
    cfg, tmp = node
    run_phases([KubeadmConfig(), KubeadmInit()], Context(host=LocalHost(), config=cfg))
    os.remove(cfg.paths.kubeconfig)
    with pytest.raises(K8sSqlError, match="admin kubeconfig is missing") as e:
        KubeadmInit().plan(Context(host=LocalHost(), config=cfg))
    assert "`k8s-sql reset`" in e.value.hint and "`kubeadm reset`" not in e.value.hint and len(calls(tmp)) == 1


def as_kubeadm_writes_it(text: str) -> str:
    """The manifest re-serialised the way kubeadm writes a patched static pod (from its Go
    structs, not k8s-sql's text): keys sorted, ``creationTimestamp: null`` and ``status: {}``
    added, the defaults of the container fields filled in, volumes and mounts in name order."""
    pod = yaml.safe_load(text)
    pod["metadata"]["creationTimestamp"] = None
    pod["status"] = {}
    spec = pod["spec"]
    for c in spec["containers"]:
        c.setdefault("terminationMessagePath", "/dev/termination-log")
        c.setdefault("terminationMessagePolicy", "File")
        c["volumeMounts"] = sorted(c.get("volumeMounts", []), key=lambda m: m["name"])
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            if probe in c:
                c[probe].setdefault("successThreshold", 1)
    spec["volumes"] = sorted(spec["volumes"], key=lambda v: v["name"], reverse=True)
    return yaml.safe_dump(pod, sort_keys=True, default_flow_style=False)


def test_verify_compares_the_sidecar_by_meaning_not_bytes(node):
    """kubeadm writes the patched manifest itself: other key order, its defaults, its list
    order. That is still the configured shim (verify passes, a second run plans nothing);
    a sidecar with another image or without an argument is not, and the error says where."""
    cfg, tmp_path = node
    run_phases([KubeadmConfig(), KubeadmInit()], Context(host=LocalHost(), config=cfg))
    path = Path(cfg.paths.manifests_dir) / "kube-apiserver.yaml"
    rewritten = as_kubeadm_writes_it(path.read_text())
    path.write_text(rewritten)
    c = Context(host=LocalHost(), config=cfg)
    KubeadmInit().verify(c)
    assert KubeadmInit().plan(c) == []

    pod = yaml.safe_load(rewritten)
    side = next(x for x in pod["spec"]["containers"] if x["name"] == "etcd-shim")
    side["image"] = "localhost/k8s-sql-shim:0.0.1"
    path.write_text(yaml.safe_dump(pod))
    with pytest.raises(K8sSqlError, match=r"containers\[etcd-shim\]\.image differs"):
        KubeadmInit().verify(c)
    side["image"] = cfg.shim_image
    side["args"] = [a for a in side["args"] if not a.startswith("--client-cert-auth")]
    path.write_text(yaml.safe_dump(pod))
    with pytest.raises(K8sSqlError, match=r"containers\[etcd-shim\]\.args"):
        KubeadmInit().verify(c)


def test_init_records_the_configuration_for_join(node):
    """join acts on the first node with that node's configuration: init records it beside
    the state file (0600, root), re-written only when it changes."""
    from k8s_sql.config import dump, load
    from k8s_sql.phases.kubeadm_init import init_config_path

    cfg, tmp = node
    cfg.postgres.port = 5433
    run_phases([KubeadmConfig(), KubeadmInit()], Context(host=LocalHost(), config=cfg))
    path = Path(init_config_path(cfg))
    assert path == tmp / "var/lib/k8s-sql/cluster.yaml"
    assert oct(path.stat().st_mode & 0o777) == "0o600" and path.stat().st_uid == 0
    assert dump(load(path.read_text())) == dump(cfg) and load(path.read_text()).postgres.port == 5433
    assert run_phases([KubeadmConfig(), KubeadmInit()], Context(host=LocalHost(), config=cfg)) == 0
