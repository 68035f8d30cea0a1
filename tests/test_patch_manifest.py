"""``k8s-sql patch-manifest`` on kube-apiserver manifests of existing kubeadm clusters
(real kubeadm 1.20 output; hand-built 1.30/1.34 manifests), run as a user would: the CLI
in a subprocess, against copies in a temporary "/etc/kubernetes/manifests"."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

SHARED = Path(__file__).parents[2] / "shared/fixtures/kubeadm-1.20"
LOCAL = Path(__file__).parent / "fixtures/manifests"
PKI = "/etc/kubernetes/pki/k8s-sql"


@pytest.fixture
def node(tmp_path):
    """A scratch node: etc/kubernetes/manifests, a backup dir and a k8s-sql config naming it."""
    (tmp_path / "etc/kubernetes/manifests").mkdir(parents=True)
    conf = tmp_path / "k8s-sql.yaml"
    conf.write_text(f"apiVersion: k8s-sql.io/v1alpha1\nkind: Cluster\n"
                    f"paths:\n  manifestsDir: {tmp_path}/etc/kubernetes/manifests\n"
                    f"  backupDir: {tmp_path}/var/lib/k8s-sql/backup\n")
    return tmp_path


def install(node: Path, source: Path) -> Path:
    dest = node / "etc/kubernetes/manifests/kube-apiserver.yaml"
    shutil.copy(source, dest)
    os.chmod(dest, 0o600)
    return dest


def cli(node: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["k8s-sql", "patch-manifest", "-c", str(node / "k8s-sql.yaml"), *args],
                          capture_output=True, text=True)


def flags(pod) -> dict:
    api = next(c for c in pod["spec"]["containers"] if c["name"] == "kube-apiserver")
    return dict(a.split("=", 1) for a in api["command"][1:])


@pytest.mark.parametrize("source, schema", [
    (SHARED / "kube-apiserver.stacked.yaml", "1.25.0"),
    (SHARED / "kube-apiserver.seed-http.yaml", "1.25.0"),
    (LOCAL / "kube-apiserver-1.30.yaml", "1.30.0"),
    (LOCAL / "kube-apiserver-1.34.yaml", "1.34.0"),
], ids=lambda v: getattr(v, "name", v))
def test_patch_then_already_patched(node, source, schema):
    target = install(node, source)
    res = cli(node)
    assert res.returncode == 0, res.stderr
    assert f"valid for Kubernetes {schema}" in res.stdout
    pod = yaml.safe_load(target.read_text())
    kubernetes_validate.validate(pod, schema, strict=True)
    f = flags(pod)
    assert f["--etcd-servers"] == "https://127.0.0.1:2379"
    assert (f["--etcd-cafile"], f["--etcd-certfile"], f["--etcd-keyfile"]) == \
        (f"{PKI}/ca.crt", f"{PKI}/apiserver-shim-client.crt", f"{PKI}/apiserver-shim-client.key")
    assert [c["name"] for c in pod["spec"]["containers"]] == ["kube-apiserver", "etcd-shim"]
    # every other flag and field kept, in the same order
    before = yaml.safe_load(source.read_text())
    assert list(pod) == list(before)
    assert [k for k in flags(before) if not k.startswith("--etcd-")] == [k for k in f if not k.startswith("--etcd-")]
    assert oct(target.stat().st_mode & 0o777) == "0o600"
    # backup outside the manifests dir, same bytes as before; no temp files left beside the manifest
    backups = list((node / "var/lib/k8s-sql/backup").iterdir())
    assert len(backups) == 1 and backups[0].read_bytes() == source.read_bytes()
    assert os.listdir(node / "etc/kubernetes/manifests") == ["kube-apiserver.yaml"]
    # second run: "already patched", file untouched, no new backup
    stamp = (target.read_bytes(), target.stat().st_mtime_ns)
    again = cli(node)
    assert again.returncode == 0 and "already patched" in again.stdout
    assert (target.read_bytes(), target.stat().st_mtime_ns) == stamp
    assert len(list((node / "var/lib/k8s-sql/backup").iterdir())) == 1


def test_comments_and_key_order_kept(node):
    source = LOCAL / "kube-apiserver-1.34.yaml"
    target = install(node, source)
    assert cli(node).returncode == 0
    text = target.read_text()
    assert "# operator's note: keep the audit flags below in sync" in text
    old_lines = source.read_text().splitlines()
    new_lines = text.splitlines()
    # the seed-to-shim change is three flag lines; everything up to the volumes is line-for-line the same
    changed = [(a, b) for a, b in zip(old_lines, new_lines) if a != b]
    assert [a.split("=")[0].strip() for a, _ in changed[:3]] == ["- --etcd-cafile", "- --etcd-certfile",
                                                                 "- --etcd-keyfile"]
    assert "creationTimestamp: null" in text


def test_dry_run_shows_diff_and_changes_nothing(node):
    target = install(node, LOCAL / "kube-apiserver-1.30.yaml")
    before = target.read_bytes()
    res = cli(node, "--dry-run")
    assert res.returncode == 0, res.stderr
    assert "+  - name: etcd-shim" in res.stdout
    assert f"+    - --etcd-cafile={PKI}/ca.crt" in res.stdout
    assert target.read_bytes() == before
    assert not (node / "var/lib/k8s-sql/backup").exists()


def test_explicit_manifest_path(node, tmp_path):
    other = tmp_path / "elsewhere/apiserver.yaml"
    other.parent.mkdir()
    shutil.copy(LOCAL / "kube-apiserver-1.34.yaml", other)
    res = cli(node, "--manifest", str(other))
    assert res.returncode == 0, res.stderr
    assert "etcd-shim" in other.read_text()


@pytest.mark.parametrize("text, message", [
    ("apiVersion: v1\nkind: Pod\nspec: [unclosed\n", "not valid YAML"),
    ("apiVersion: v1\nkind: Service\nmetadata: {name: x}\n", "not a Pod manifest"),
    ("apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec:\n  containers:\n  - name: other\n    image: x\n",
     "no container named kube-apiserver"),
])
def test_bad_manifests_are_refused(node, text, message):
    target = node / "etc/kubernetes/manifests/kube-apiserver.yaml"
    target.write_text(text)
    res = cli(node)
    assert res.returncode == 1 and message in res.stderr and "Traceback" not in res.stderr
    assert target.read_text() == text and not (node / "var/lib/k8s-sql/backup").exists()


def test_schema_violation_is_refused(node):
    target = install(node, LOCAL / "kube-apiserver-1.34.yaml")
    broken = target.read_text().replace("    imagePullPolicy: IfNotPresent\n",
                                        "    imagePullPolicy: IfNotPresent\n    restartPolicyy: Always\n")
    target.write_text(broken)
    res = cli(node)
    assert res.returncode == 1 and "not a valid Pod for Kubernetes 1.34.0" in res.stderr
    assert target.read_text() == broken


def test_binary_file_is_refused(node):
    target = node / "etc/kubernetes/manifests/kube-apiserver.yaml"
    target.write_bytes(b"\xff\xfe\x00binary")
    res = cli(node)
    assert res.returncode == 1 and "not a text file" in res.stderr
    assert target.read_bytes() == b"\xff\xfe\x00binary"


def test_missing_manifest(node):
    res = cli(node)
    assert res.returncode == 1 and "does not exist" in res.stderr and "--manifest" in res.stderr


def test_unwritable_backup_dir_leaves_manifest_alone(node):
    target = install(node, LOCAL / "kube-apiserver-1.30.yaml")
    (node / "var/lib/k8s-sql").mkdir(parents=True)
    (node / "var/lib/k8s-sql/backup").write_text("a file where the backup directory should be")
    before = target.read_bytes()
    res = cli(node)
    assert res.returncode == 1 and "cannot write" in res.stderr and "Traceback" not in res.stderr
    assert target.read_bytes() == before
    assert os.listdir(node / "etc/kubernetes/manifests") == ["kube-apiserver.yaml"]
