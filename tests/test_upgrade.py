"""``k8s-sql upgrade``: kubeadm's upgrade procedure with the etcd shim kept.

kubeadm, the kubelet, apt and an API server cannot run here, so stand-ins take their place
at the edge (small Python scripts first on PATH, one program dispatching on its name), each
recording its arguments:

* ``kubeadm upgrade apply|node`` writes kube-apiserver.yaml the way kubeadm does: the
  manifest kubeadm generates for the target version (real kubeadm 1.20 output from
  shared/fixtures for old versions, the 1.30/1.34 manifests of tests/fixtures otherwise,
  image tag set to the target) with the etcd flags of ClusterConfiguration.etcd.external,
  and the ``+strategic`` patch of the patches directory merged in — taken from
  ``--patches`` or from the UpgradeConfiguration (``apply``/``node.patches.directory``)
  of ``--config``, and from nowhere else, as kubeadm (cmd/kubeadm/app/cmd/upgrade). The
  merge is :func:`k8s_sql.kubeadm.manifest.strategic_merge` (tested against real kubeadm
  manifests in tests/test_sidecar_patch.py). ``KUBEADM_PLAIN=1`` makes it a plain upgrade
  that ignores patches (what a user running kubeadm by hand gets);
* ``dpkg-query``/``apt-get``/``apt-mark`` answer from and update a JSON package state;
* ``kubectl`` answers ``/readyz`` and records drain/uncordon; ``systemctl`` records.

Files go through ``LocalHost(root=tmp)``, a scratch root.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from k8s_sql.cli import app
from k8s_sql.config import Cluster
from k8s_sql.errors import K8sSqlError
from k8s_sql.host import DryRunHost, LocalHost
from k8s_sql.kubeadm import config as kconfig
from k8s_sql.kubeadm import manifest, sidecar, yamlio
from k8s_sql.phases import upgrade as up
from k8s_sql.phases.base import Context
from k8s_sql.phases.kubeadm_init import shim_problem
from k8s_sql.phases.runner import run_phases

HERE = Path(__file__).parent
SHARED = HERE.parents[1] / "shared/fixtures/kubeadm-1.20"

STAND_IN = r'''#!{python}
import json, os, re, sys
prog = os.path.basename(sys.argv[0])
args = sys.argv[1:]
root = os.environ["UPGRADE_ROOT"]
def at(path):
    return os.path.join(root, path.lstrip("/"))
state_file = os.environ["UPGRADE_STATE"]
state = json.load(open(state_file))
state["calls"].append([prog, *args])
rc = 0
def pkg_version(spec):
    name, _, pattern = spec.partition("=")
    return name, pattern.replace("-*", "-1.1")
if prog == "dpkg-query":
    for name in args[2:]:
        if name in state["packages"]:
            held = "h" if name in state["held"] else "i"
            print(f"{{name}}\t{{held}}i \t{{state['packages'][name]}}")
elif prog == "apt-get":
    if "install" in args:
        for spec in args[args.index("-y") + 1:]:
            if "=" in spec:
                name, version = pkg_version(spec)
                if name in state["held"]:
                    print(f"E: held package {{name}} changed", file=sys.stderr); rc = 100
                state["packages"][name] = version
elif prog == "apt-mark":
    names = args[1:]
    if args[0] == "hold":
        state["held"] = sorted(set(state["held"]) | set(names))
    else:
        state["held"] = sorted(set(state["held"]) - set(names))
elif prog == "kubelet":
    print("Kubernetes v" + state["packages"]["kubelet"].split("-")[0])
elif prog == "kubectl":
    if args[2:4] == ["get", "--raw"]:
        print(state.get("readyz", "ok"))
elif prog == "kubeadm" and args[:2] == ["upgrade", "plan"]:
    print("Upgrade to the latest stable version:\nkube-apiserver   v-old   " + args[2])
elif prog == "kubeadm" and args[:1] == ["upgrade"]:
    import yaml
    from k8s_sql.kubeadm import manifest, yamlio
    mode = args[1]
    target = args[2] if mode == "apply" else state["cluster_version"]
    patches = None
    if "--patches" in args:
        patches = args[args.index("--patches") + 1]
    if "--config" in args:
        # kubeadm: "can not mix '--config' with arguments [yes]"; it asks on stdin instead
        if "--yes" in args or "-y" in args:
            print("can not mix '--config' with arguments [yes]", file=sys.stderr)
            sys.exit(1)
        if mode == "apply" and sys.stdin.readline().strip().lower() != "y":
            print("won't proceed; the user didn't answer (Y|n) in order to continue", file=sys.stderr)
            sys.exit(1)
        doc = yaml.safe_load(open(at(args[args.index("--config") + 1])))
        assert doc["kind"] == "UpgradeConfiguration", doc
        patches = ((doc.get(mode) or {{}}).get("patches") or {{}}).get("directory")
        if mode == "apply":
            assert doc["apply"]["kubernetesVersion"] == target
    if os.environ.get("KUBEADM_PLAIN"):
        patches = None
    minor = int(target.split(".")[1])
    base = os.environ["BASE_NEW"] if minor >= 31 else os.environ["BASE_MID"] if minor >= 25 else os.environ["BASE_OLD"]
    text = re.sub(r"(image: \S*kube-apiserver:)\S+", r"\g<1>" + target, open(base).read())
    cluster = list(yaml.safe_load_all(open(os.environ["CLUSTER_CONFIG"])))[1]
    ext = cluster["etcd"]["external"]
    for old, new in (("--etcd-servers=https://127.0.0.1:2379", "--etcd-servers=" + ",".join(ext["endpoints"])),
                     ("/etc/kubernetes/pki/etcd/ca.crt", ext["caFile"]),
                     ("/etc/kubernetes/pki/apiserver-etcd-client.crt", ext["certFile"]),
                     ("/etc/kubernetes/pki/apiserver-etcd-client.key", ext["keyFile"])):
        text = text.replace(old, new)
    patch = os.path.join(at(patches), "kube-apiserver+strategic.yaml") if patches else None
    if patch and os.path.exists(patch):
        text = yamlio.dump(manifest.apply_patch_file(text, open(patch).read(), "stand-in"))
    with open(at(os.environ["APISERVER_MANIFEST"]), "w") as f:
        f.write(text)
    if mode == "apply":
        state["cluster_version"] = target
    print(f"[upgrade/successful] SUCCESS! stand-in kubeadm upgrade {{mode}}")
json.dump(state, open(state_file, "w"))
sys.exit(rc)
'''
PROGRAMS = ("kubeadm", "kubectl", "kubelet", "dpkg-query", "apt-get", "apt-mark", "systemctl")


def base_manifest(version: str) -> Path:
    minor = int(version.split(".")[1])
    if minor >= 31:
        return HERE / "fixtures/manifests/kube-apiserver-1.34.yaml"
    if minor >= 25:
        return HERE / "fixtures/manifests/kube-apiserver-1.30.yaml"
    return SHARED / "kube-apiserver.stacked.yaml"


class Node:
    """A control-plane node under ``root``: initialised at ``start`` with the shim (as init
    left it), packages at that version and held, the stand-ins on PATH."""

    def __init__(self, tmp: Path, monkeypatch, start: str):
        self.root = tmp / "root"
        self.state = tmp / "state.json"
        cfg = Cluster()
        cfg.node.name, cfg.node.advertise_address = "cp1", "192.168.56.10"
        cfg.node.cri_socket = "unix:///var/run/crio/crio.sock"
        cfg.kubernetes.version = start
        cfg.shim.image = "localhost/k8s-sql-shim:new"
        self.cfg = cfg
        bindir = tmp / "bin"
        bindir.mkdir()
        script = bindir / "stand-in"
        script.write_text(STAND_IN.format(python=sys.executable))
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
        for name in PROGRAMS:
            (bindir / name).symlink_to(script)
        monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
        self.manifest = "/etc/kubernetes/manifests/kube-apiserver.yaml"
        clus = self.root / "etc/k8s-sql/kubeadm.yaml"
        clus.parent.mkdir(parents=True)
        clus.write_text(kconfig.render(cfg, advertise_address="192.168.56.10", cri_socket="unix:///x.sock"))
        for k, v in {"UPGRADE_ROOT": self.root, "UPGRADE_STATE": self.state, "CLUSTER_CONFIG": clus,
                     "APISERVER_MANIFEST": self.manifest, "BASE_NEW": base_manifest("v1.34.0"),
                     "BASE_MID": base_manifest("v1.30.0"), "BASE_OLD": base_manifest("v1.20.0")}.items():
            monkeypatch.setenv(k, str(v))
        monkeypatch.delenv("KUBEADM_PLAIN", raising=False)
        pkg = start.lstrip("v") + "-1.1"
        self.state.write_text(json.dumps({"calls": [], "cluster_version": start, "held": ["kubeadm", "kubectl", "kubelet"],
                                          "packages": {"kubeadm": pkg, "kubelet": pkg, "kubectl": pkg}}))
        # the manifest as `k8s-sql init` left it: kubeadm's, with the shim patch merged in
        old = cfg.shim.image
        cfg.shim.image = "localhost/k8s-sql-shim:old"
        text = base_manifest(start).read_text().replace("kube-apiserver:v1.34.2", f"kube-apiserver:{start}") \
            .replace("kube-apiserver:v1.30.14", f"kube-apiserver:{start}") \
            .replace("kube-apiserver:v1.20.2", f"kube-apiserver:{start}")
        new, _ = manifest.patch_text(text, cfg, "init")
        path = self.root / self.manifest.lstrip("/")
        path.parent.mkdir(parents=True)
        path.write_text(new)
        (self.root / "etc/kubernetes/admin.conf").write_text("apiVersion: v1\nkind: Config\n")
        pki = self.root / cfg.paths.pki_dir.lstrip("/")  # made by the pki phase (tests/test_pki.py)
        pki.mkdir(parents=True)
        for name in manifest.REQUIRED_PKI:
            (pki / name).write_text(f"stand-in {name}\n")
        patches = self.root / cfg.paths.patches_dir.lstrip("/")
        patches.mkdir(parents=True)
        (patches / sidecar.PATCH_FILE).write_text(sidecar.patch_text(cfg))
        cfg.shim.image = old

    def host(self, dry_run=False):
        h = LocalHost(root=str(self.root))
        return DryRunHost(h) if dry_run else h

    def ctx(self, dry_run=False):
        return Context(host=self.host(dry_run), config=self.cfg, dry_run=dry_run)

    def calls(self, prog=None):
        calls = json.loads(self.state.read_text())["calls"]
        return [c[1:] for c in calls if prog is None or c[0] == prog] if prog else calls

    def pod(self):
        return yamlio.plain(yamlio.load((self.root / self.manifest.lstrip("/")).read_text(), "manifest"))

    def packages(self):
        return json.loads(self.state.read_text())["packages"]


def upgrade(node: Node, mode: str, target: str, dry_run=False, **kw) -> int:
    node.cfg.kubernetes.version = target
    opts = up.UpgradeOptions(mode, target, **kw)
    ctx = node.ctx(dry_run)
    # the shim phase builds the image with podman, which cannot run here (tests/test_shim_phase.py)
    return run_phases(up.phases(ctx, opts, frozenset({"shim"})), ctx)


#: (from, to, kubeadm config API of the target): every API version k8s-sql writes.
UPGRADES = [("v1.22.17", "v1.23.17", "v1beta3"), ("v1.29.15", "v1.30.14", "v1beta3"),
            ("v1.30.14", "v1.31.14", "v1beta4"), ("v1.33.7", "v1.34.2", "v1beta4")]


@pytest.mark.parametrize("start, target, api", UPGRADES, ids=lambda v: str(v))
def test_apply_passes_the_patches_and_keeps_the_sidecar(tmp_path, monkeypatch, start, target, api):
    node = Node(tmp_path, monkeypatch, start)
    cfg = node.cfg
    upgrade(node, "apply", target)
    [call] = node.calls("kubeadm")
    if api == "v1beta4":
        path = kconfig.upgrade_config_path(cfg)
        assert call == ["upgrade", "apply", target, "--config", path]  # confirmed on stdin: --yes is refused
        doc = yaml.safe_load((node.root / path.lstrip("/")).read_text())
        assert doc["apiVersion"] == "kubeadm.k8s.io/v1beta4" and doc["kind"] == "UpgradeConfiguration"
        assert doc["apply"]["patches"]["directory"] == doc["node"]["patches"]["directory"] == cfg.paths.patches_dir
    else:
        assert call == ["upgrade", "apply", target, "--patches", cfg.paths.patches_dir, "--yes"]
    pod = node.pod()
    by_name = {c["name"]: c for c in pod["spec"]["containers"]}
    assert by_name["kube-apiserver"]["image"].endswith(f":{target}")
    assert by_name["etcd-shim"]["image"] == "localhost/k8s-sql-shim:new"  # the new shim rolls with the manifest
    assert shim_problem(yamlio.dump(pod), cfg) is None
    assert "--etcd-servers=https://127.0.0.1:2379" in by_name["kube-apiserver"]["command"]
    # kubeadm's procedure, in its order
    minor = target.split(".")[1]
    assert (node.root / "etc/apt/sources.list.d/kubernetes.list").read_text().count(f"/v1.{minor}/deb/") == 1
    seq = []
    for c in node.calls():
        if c[0] == "kubectl" and c[3] in ("drain", "uncordon"):
            seq.append(f"kubectl {c[3]}")
        elif c[0] in ("apt-mark", "systemctl") or c[0] == "kubeadm":
            seq.append(" ".join(c[:3]))
    assert seq == ["apt-mark unhold kubeadm", "apt-mark hold kubeadm", "kubeadm upgrade apply", "kubectl drain",
                   "apt-mark unhold kubelet", "apt-mark hold kubelet", "systemctl daemon-reload",
                   "systemctl restart kubelet", "kubectl uncordon"]
    kubectl = [c for c in node.calls("kubectl") if c[2] in ("drain", "uncordon")]
    assert kubectl == [["--kubeconfig", cfg.paths.kubeconfig, "drain", "cp1", "--ignore-daemonsets"],
                       ["--kubeconfig", cfg.paths.kubeconfig, "uncordon", "cp1"]]
    assert set(node.packages().values()) == {target.lstrip("v") + "-1.1"}
    # a second run finds nothing to do and does not call kubeadm again
    assert upgrade(node, "apply", target) == 0
    assert len(node.calls("kubeadm")) == 1


@pytest.mark.parametrize("target, flag", [("v1.30.14", "--patches"), ("v1.34.2", "--config")])
def test_cli_dry_run_shows_the_patches_and_changes_nothing(tmp_path, monkeypatch, target, flag):
    node = Node(tmp_path, monkeypatch, "v1.29.15" if target == "v1.30.14" else "v1.33.7")
    # the CLI acts on the real root: a configuration whose paths are under the scratch root
    root = node.root
    conf = tmp_path / "cluster.yaml"
    conf.write_text(yaml.safe_dump({"apiVersion": "k8s-sql.io/v1alpha1", "kind": "Cluster",
                                    "node": {"name": "cp1", "advertiseAddress": "192.168.56.10"},
                                    "shim": {"image": "localhost/k8s-sql-shim:new"},
                                    "paths": {"manifestsDir": f"{root}/etc/kubernetes/manifests",
                                              "kubeconfig": f"{root}/etc/kubernetes/admin.conf",
                                              "patchesDir": f"{root}/etc/k8s-sql/patches",
                                              "kubeadmConfig": f"{root}/etc/k8s-sql/kubeadm.yaml",
                                              "backupDir": f"{root}/var/lib/k8s-sql/backup",
                                              "stateFile": f"{root}/var/lib/k8s-sql/state.json"}}))
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    r = CliRunner().invoke(app, ["upgrade", "apply", "--dry-run", "-c", str(conf), "--kubernetes-version", target,
                                 "--skip-phases", "shim"])
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())
    assert f"would kubeadm upgrade apply {target} {flag} {root}/etc/k8s-sql/" in out
    assert "would check that kube-apiserver.yaml runs the etcd shim, repair it (patch-manifest) if not" in out, out
    assert "dry run:" in out and "nothing was changed" in out
    assert node.calls("kubeadm") == [] and node.calls("apt-get") == []
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before
    r = CliRunner().invoke(app, ["upgrade", "plan", "-c", str(conf), "--kubernetes-version", target,
                                 "--skip-phases", "shim"])
    assert r.exit_code == 0, r.output
    assert "kubeadm upgrade plan" in r.output and f"kube-apiserver   v-old   {target}" in r.output
    assert node.calls("kubeadm") == [["upgrade", "plan", target]]  # read-only


def test_a_plain_upgrade_is_detected_and_repaired(tmp_path, monkeypatch):
    """kubeadm run without the patches (KUBEADM_PLAIN) writes kube-apiserver.yaml without the
    shim: the check after it puts the shim back (patch-manifest's logic) and keeps a backup."""
    node = Node(tmp_path, monkeypatch, "v1.33.7")
    monkeypatch.setenv("KUBEADM_PLAIN", "1")
    upgrade(node, "apply", "v1.34.2")
    pod = node.pod()
    assert [c["name"] for c in pod["spec"]["containers"]] == ["kube-apiserver", "etcd-shim"]
    assert shim_problem(yamlio.dump(pod), node.cfg) is None
    backups = list((node.root / node.cfg.paths.backup_dir.lstrip("/")).glob("kube-apiserver.yaml.*.bak"))
    assert len(backups) == 1 and "etcd-shim" not in backups[0].read_text()  # kubeadm's plain manifest


def test_a_manifest_written_by_hand_is_repaired_by_a_rerun_and_by_patch_manifest(tmp_path, monkeypatch):
    """After someone ran a plain `kubeadm upgrade apply`, `k8s-sql upgrade apply` at that
    version plans the repair at once; `k8s-sql patch-manifest` repairs it as well."""
    node = Node(tmp_path, monkeypatch, "v1.33.7")
    upgrade(node, "apply", "v1.34.2")
    path = node.root / node.manifest.lstrip("/")
    # a plain `kubeadm upgrade apply` by hand (the stand-in writes kubeadm's manifest, no patches)
    subprocess.run(["kubeadm", "upgrade", "apply", "v1.34.2", "--yes"], check=True, capture_output=True)
    plain = path.read_text()
    assert shim_problem(path.read_text(), node.cfg) == "no etcd-shim container"
    changes = up.ShimCheck(up.UpgradeOptions("apply", "v1.34.2")).plan(node.ctx())
    assert [c.describe().split(" (")[0] for c in changes] == [f"write {node.manifest}"]
    assert "put the etcd shim back: no etcd-shim container" in changes[0].describe()
    upgrade(node, "apply", "v1.34.2")
    assert shim_problem(path.read_text(), node.cfg) is None
    assert len(node.calls("kubeadm")) == 2  # the version was right: only the manifest was repaired
    # patch-manifest does the same on its own
    path.write_text(plain)
    res = manifest.patch_file(node.host(), node.cfg, node.manifest, dry_run=False)
    assert res.status == "patched" and shim_problem(path.read_text(), node.cfg) is None


def test_node_keeps_the_datastore_of_its_own_patch(tmp_path, monkeypatch):
    """`upgrade node` on a joined control plane: its patch (datastore at the first node,
    rendered by join) gets the new image and nothing else; kubeadm upgrade node gets it."""
    node = Node(tmp_path, monkeypatch, "v1.33.7")
    patch = node.root / node.cfg.paths.patches_dir.lstrip("/") / sidecar.PATCH_FILE
    joined = patch.read_text().replace("@127.0.0.1:5432/", "@192.168.56.10:5432/")
    assert joined != patch.read_text()
    patch.write_text(joined)
    state = json.loads(node.state.read_text())
    state["cluster_version"] = "v1.34.2"  # `upgrade apply` ran on the first node
    node.state.write_text(json.dumps(state))
    upgrade(node, "node", "v1.34.2")
    assert node.calls("kubeadm") == [["upgrade", "node", "--config", kconfig.upgrade_config_path(node.cfg)]]
    text = patch.read_text()
    assert "@192.168.56.10:5432/" in text and "localhost/k8s-sql-shim:new" in text
    assert text.startswith("# Written by k8s-sql")
    side = {c["name"]: c for c in node.pod()["spec"]["containers"]}["etcd-shim"]
    assert side["image"] == "localhost/k8s-sql-shim:new"
    assert any("@192.168.56.10:5432/" in a for a in side["args"])


@pytest.mark.parametrize("start, target, match", [
    ("v1.32.3", "v1.34.2", "skips a minor version"),
    ("v1.34.2", "v1.33.7", "newer than v1.33.7"),
])
def test_preflight_refuses_before_anything_changes(tmp_path, monkeypatch, start, target, match):
    node = Node(tmp_path, monkeypatch, start)
    before = {p: p.read_bytes() for p in node.root.rglob("*") if p.is_file()}
    with pytest.raises(K8sSqlError, match=match):
        upgrade(node, "apply", target)
    assert [c for c in node.calls() if c[0] != "dpkg-query"] == []
    assert {p: p.read_bytes() for p in node.root.rglob("*") if p.is_file()} == before


def test_apply_on_a_worker_is_refused(tmp_path, monkeypatch):
    node = Node(tmp_path, monkeypatch, "v1.33.7")
    (node.root / node.manifest.lstrip("/")).unlink()
    with pytest.raises(K8sSqlError, match="first control-plane node") as e:
        upgrade(node, "apply", "v1.34.2")
    assert "upgrade node" in e.value.hint


def test_worker_node_upgrade(tmp_path, monkeypatch, capsys):
    """A worker: no patches, no manifest check; drain/uncordon are left to a control plane."""
    node = Node(tmp_path, monkeypatch, "v1.33.7")
    (node.root / node.manifest.lstrip("/")).unlink()
    (node.root / "etc/kubernetes/admin.conf").unlink()
    upgrade(node, "node", "v1.34.2")
    assert node.calls("kubeadm") == [["upgrade", "node"]]
    assert [c for c in node.calls("kubectl")] == []
    assert set(node.packages().values()) == {"1.34.2-1.1"}
    assert "kubectl drain cp1 --ignore-daemonsets" in capsys.readouterr().out


@pytest.fixture
def datastore(pg):
    """A database on the test PostgreSQL with the shim's ``schema_version`` table, and the
    ``postgres.uri`` that reaches it (superuser over the Unix socket: libpq does not use TLS
    there, so verify-full is moot)."""
    import uuid

    db = f"schema_{uuid.uuid4().hex[:8]}"
    pg.create_database(db)
    pg.psql("CREATE TABLE schema_version (version int NOT NULL)", db=db)
    return db, f"postgresql:///{db}?host={pg.socket_dir}&port={pg.port}&user=postgres"


@pytest.mark.parametrize("found, refused", [(2, True), (3, False)])
def test_an_offline_schema_migration_needs_all_shims_stopped(tmp_path, monkeypatch, datastore, pg, found, refused):
    """The datastore at schema 2: the new shim's migration 3 breaks schema-2 shims still
    running on other control planes, so apply refuses without --all-shims-stopped."""
    db, uri = datastore
    pg.psql(f"INSERT INTO schema_version SELECT generate_series(1, {found})", db=db)
    node = Node(tmp_path, monkeypatch, "v1.33.7")
    node.cfg.postgres.mode, node.cfg.postgres.uri = "external", uri
    assert up.database_schema_version(node.ctx()) == found
    opts = up.UpgradeOptions("apply", "v1.34.2")
    if refused:
        with pytest.raises(K8sSqlError, match="migration 3 breaks shims of the old schema") as e:
            up.UpgradePreflight(opts).plan(node.ctx())
        assert "--all-shims-stopped" in e.value.hint
        assert up.UpgradePreflight(up.UpgradeOptions("apply", "v1.34.2", True)).plan(node.ctx()) == []
    else:
        assert up.UpgradePreflight(opts).plan(node.ctx()) == []


def test_offline_migrations():
    assert up.offline_migrations(2, 4) == [3]
    assert up.offline_migrations(3, 4) == []
    assert up.offline_migrations(0, 4) == []  # a fresh database: no shim has run on it
