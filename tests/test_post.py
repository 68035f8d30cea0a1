"""The post phase: admin kubeconfig for the invoking user, single-node taint, health check.

There is no API server here, so a stand-in ``kubectl`` (a small Python script first on
PATH) answers from a JSON state file: the node's taints, ``/readyz`` and the kube-system
pods; it records every call. File paths go through ``LocalHost(root=tmp)``, a scratch root."""

from __future__ import annotations

import json
import os
import pwd
import stat
import sys

import pytest

from k8s_sql.config import Cluster
from k8s_sql.errors import K8sSqlError
from k8s_sql.host import DryRunHost, LocalHost
from k8s_sql.phases.base import Context, RunOptions
from k8s_sql.phases.post import Post
from k8s_sql.phases.runner import run_phases

STAND_IN = r'''#!{python}
import json, os, sys
state_file = os.environ["KUBECTL_STATE"]
state = json.load(open(state_file))
args = sys.argv[1:]
state["calls"].append(args)
assert args[0] == "--kubeconfig", args
args = args[2:]
rc = 0
if args[:2] == ["get", "node"]:
    ready = state.get("ready", ["True", "kubelet is posting ready status"])
    print(json.dumps({{"metadata": {{"name": args[2]}}, "spec": {{"taints": state["taints"]}},
                      "status": {{"conditions": [{{"type": "Ready", "status": ready[0], "message": ready[1]}}]}}}}))
elif args[:2] == ["taint", "nodes"]:
    key, effect = args[3].rstrip("-").split(":")
    state["taints"] = [t for t in state["taints"] if (t["key"], t["effect"]) != (key, effect)]
    print(f"node/{{args[2]}} untainted")
elif args[:2] == ["get", "--raw"]:
    print(state["readyz"])
elif args[:2] == ["get", "pods"]:
    print("\n".join(state["etcd_pods"]))
else:
    print("unexpected", args, file=sys.stderr); rc = 1
json.dump(state, open(state_file, "w"))
sys.exit(rc)
'''

TAINT = {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}


@pytest.fixture
def node(tmp_path, monkeypatch):
    root = tmp_path / "root"
    (root / "etc/kubernetes").mkdir(parents=True)
    (root / "etc/kubernetes/admin.conf").write_text("apiVersion: v1\nkind: Config\nclusters: []\n")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    kubectl = bindir / "kubectl"
    kubectl.write_text(STAND_IN.format(python=sys.executable))
    kubectl.chmod(kubectl.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"taints": [TAINT], "readyz": "ok", "etcd_pods": [], "calls": []}))
    monkeypatch.setenv("KUBECTL_STATE", str(state))
    monkeypatch.delenv("SUDO_USER", raising=False)
    cfg = Cluster()
    cfg.node.name = "cp1"
    return cfg, root, state


def ctx(cfg, root, dry_run=False, user="root"):
    host = LocalHost(root=str(root))
    return Context(host=DryRunHost(host) if dry_run else host, config=cfg, dry_run=dry_run,
                   options=RunOptions(invoking_user=user))


def test_root_kubeconfig_taint_and_rerun(node):
    cfg, root, state = node
    assert run_phases([Post()], ctx(cfg, root)) == 3  # ~/.kube, its config, the taint
    kc = root / "root/.kube/config"
    assert kc.read_bytes() == (root / "etc/kubernetes/admin.conf").read_bytes()
    assert oct(kc.stat().st_mode & 0o777) == "0o600" and kc.stat().st_uid == 0
    s = json.loads(state.read_text())
    assert s["taints"] == []
    assert ["--kubeconfig", "/etc/kubernetes/admin.conf", "taint", "nodes", "cp1",
            "node-role.kubernetes.io/control-plane:NoSchedule-"] in s["calls"]
    # rerun: nothing to change, no second taint call
    assert run_phases([Post()], ctx(cfg, root)) == 0
    assert sum(c[2] == "taint" for c in json.loads(state.read_text())["calls"]) == 1


def test_sudo_user_gets_own_kubeconfig(node, monkeypatch):
    """The invoking user comes from the run's options (the CLI takes it from SUDO_USER)."""
    cfg, root, state = node
    user = pwd.getpwnam("nobody")
    run_phases([Post()], ctx(cfg, root, user="nobody"))
    kc = root / user.pw_dir.lstrip("/") / ".kube/config"
    assert kc.stat().st_uid == user.pw_uid and oct(kc.stat().st_mode & 0o777) == "0o600"


def test_multi_node_keeps_taint(node):
    cfg, root, state = node
    cfg.kubernetes.single_node = False
    assert run_phases([Post()], ctx(cfg, root)) == 2
    assert json.loads(state.read_text())["taints"] == [TAINT]


def test_dry_run_changes_nothing(node):
    cfg, root, state = node
    assert run_phases([Post()], ctx(cfg, root, dry_run=True)) == 3
    assert not (root / "root/.kube/config").exists()
    assert json.loads(state.read_text())["taints"] == [TAINT]


def test_verify_failures(node):
    cfg, root, state = node
    s = json.loads(state.read_text())
    s.update(readyz="[-]etcd failed: reason withheld", calls=[])
    state.write_text(json.dumps(s))
    with pytest.raises(K8sSqlError, match="not ready: .*etcd failed"):
        run_phases([Post()], ctx(cfg, root))
    s = json.loads(state.read_text())
    s.update(readyz="ok", etcd_pods=["pod/etcd-cp1"])
    state.write_text(json.dumps(s))
    with pytest.raises(K8sSqlError, match="etcd pod"):
        run_phases([Post()], ctx(cfg, root))


def test_missing_admin_conf_is_pending_in_both_modes(node):
    """Before kubeadm-init has written admin.conf a dry run and a real run plan the same
    step, marked pending; applying it while admin.conf is still missing is the clear
    error, and once kubeadm-init has written it the same step copies it and untaints."""
    cfg, root, state = node
    admin = root / "etc/kubernetes/admin.conf"
    text = admin.read_text()
    admin.unlink()
    real, dry = Post().plan(ctx(cfg, root)), Post().plan(ctx(cfg, root, dry_run=True))
    assert [c.describe() for c in real] == [c.describe() for c in dry]
    [step] = real
    assert step.describe() == ("copy /etc/kubernetes/admin.conf to ~root/.kube/config, remove the "
                               "control-plane NoSchedule taint from node cp1 (single node) "
                               "(pending: after kubeadm-init writes it)")
    with pytest.raises(K8sSqlError, match="admin kubeconfig is missing") as e:
        run_phases([Post()], ctx(cfg, root))
    assert "kubeadm-init" in e.value.hint
    assert json.loads(state.read_text())["calls"] == []  # nothing was asked of the API server
    admin.write_text(text)
    step.apply(ctx(cfg, root))
    assert (root / "root/.kube/config").read_text() == text
    assert json.loads(state.read_text())["taints"] == []


def test_kube_dir_belongs_to_the_sudo_user(node):
    """~/.kube is made for the user (0700, the user's own), not by root for them: kubectl
    run by the user writes its cache there."""
    cfg, root, state = node
    user = pwd.getpwnam("nobody")
    run_phases([Post()], ctx(cfg, root, user="nobody"))
    kube = root / user.pw_dir.lstrip("/") / ".kube"
    st = kube.stat()
    assert (st.st_uid, st.st_gid, oct(st.st_mode & 0o777)) == (user.pw_uid, user.pw_gid, "0o700")
    # one made by root earlier (an older k8s-sql) is given to the user
    os.chown(kube, 0, 0)
    out = run_phases([Post()], ctx(cfg, root, user="nobody"))
    assert out == 1 and kube.stat().st_uid == user.pw_uid


def test_a_node_that_stays_not_ready_is_a_warning_with_the_reason(node, capsys):
    """/readyz answers ok while the node is NotReady without a pod network: post waits
    (here not at all), then warns with the kubelet's reason and what to do."""
    cfg, root, state = node
    s = json.loads(state.read_text())
    s["ready"] = ["False", "container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady "
                  "message:Network plugin returns error: cni plugin not initialized"]
    state.write_text(json.dumps(s))
    post = Post()
    post.ready_timeout, post.ready_interval = 0.0, 0.0
    c = ctx(cfg, root)
    from rich.console import Console
    import io
    out = io.StringIO()
    c.console = Console(file=out, width=400)
    run_phases([post], c)
    text = out.getvalue()
    assert "warning: node cp1 is not Ready (container runtime network not ready" in text
    assert "cni plugin not initialized" in text and "/etc/cni/net.d" in text
    cfg.kubernetes.single_node = False
    out.truncate(0)
    run_phases([post], c)
    assert "install a pod network add-on for podSubnet 10.244.0.0/16" in out.getvalue()
    s["ready"] = ["True", "kubelet is posting ready status"]
    state.write_text(json.dumps(s))
    out.truncate(0)
    run_phases([post], c)
    assert "node cp1 is Ready" in out.getvalue() and "warning" not in out.getvalue()


@pytest.mark.parametrize("version, taints", [
    ("v1.22.17", [{"key": "node-role.kubernetes.io/master", "effect": "NoSchedule"}]),  # kubeadm <= 1.23
    ("v1.23.17", [{"key": "node-role.kubernetes.io/master", "effect": "NoSchedule"}]),
    ("v1.24.17", [{"key": "node-role.kubernetes.io/master", "effect": "NoSchedule"}, TAINT]),  # 1.24 sets both
    ("v1.34.2", [TAINT]),
])
def test_removes_the_taint_kubeadm_set_for_its_version(node, version, taints):
    """The stand-in kubectl's node carries the taints kubeadm of ``version`` sets; after post
    the node has none of them, and nothing was asked to remove a taint that is not there."""
    cfg, root, state = node
    cfg.kubernetes.version = version
    data = json.loads(state.read_text())
    data["taints"] = taints + [{"key": "example.com/keep", "effect": "NoSchedule"}]
    state.write_text(json.dumps(data))
    run_phases([Post()], ctx(cfg, root))
    data = json.loads(state.read_text())
    assert data["taints"] == [{"key": "example.com/keep", "effect": "NoSchedule"}]
    removed = [c[5] for c in data["calls"] if c[2:4] == ["taint", "nodes"]]
    assert removed == [f"{t['key']}:NoSchedule-" for t in sorted(taints, key=lambda t: t["key"] != TAINT["key"])]
