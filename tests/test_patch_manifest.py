"""``k8s-sql patch-manifest`` on kube-apiserver manifests of existing kubeadm clusters
(real kubeadm 1.20 output; hand-built 1.30/1.34 manifests and a kubeadm-shaped etcd
static pod), run as a user would: the CLI in a subprocess, against copies in a temporary
"/etc/kubernetes/manifests", with the datastore certificates `k8s-sql render` makes."""

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
ETCD = LOCAL / "etcd-1.20.yaml"
#: the datastore pki directory of the scratch node, relative to it
PKI_REL = "etc/kubernetes/pki/k8s-sql"
SIDECAR_PKI = ["ca.crt", "shim-server.crt", "shim-server.key", "shim-postgres-client.crt", "shim-postgres-client.key",
               "apiserver-shim-client.crt", "apiserver-shim-client.key"]


@pytest.fixture(scope="session")
def rendered_pki(tmp_path_factory) -> Path:
    """The datastore certificates, made once by `k8s-sql render`."""
    out = tmp_path_factory.mktemp("pki") / "out"
    r = subprocess.run(["k8s-sql", "render", "--out", str(out), "--node-name", "cp1",
                        "--apiserver-advertise-address", "192.168.56.2"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return out / "etc/kubernetes/pki/k8s-sql"


def write_config(node: Path, extra: str = "") -> None:
    (node / "k8s-sql.yaml").write_text(
        f"apiVersion: k8s-sql.io/v1alpha1\nkind: Cluster\n"
        f"paths:\n  manifestsDir: {node}/etc/kubernetes/manifests\n"
        f"  backupDir: {node}/var/lib/k8s-sql/backup\n  pkiDir: {node}/{PKI_REL}\n" + extra)


@pytest.fixture
def node(tmp_path, rendered_pki):
    """A scratch node: etc/kubernetes/manifests, the datastore certificates, a backup dir
    and a k8s-sql config naming them."""
    (tmp_path / "etc/kubernetes/manifests").mkdir(parents=True)
    shutil.copytree(rendered_pki, tmp_path / PKI_REL)
    write_config(tmp_path)
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
    pki = f"{node}/{PKI_REL}"
    assert f["--etcd-servers"] == "https://127.0.0.1:2379"
    assert (f["--etcd-cafile"], f["--etcd-certfile"], f["--etcd-keyfile"]) == \
        (f"{pki}/ca.crt", f"{pki}/apiserver-shim-client.crt", f"{pki}/apiserver-shim-client.key")
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
    assert f"+    - --etcd-cafile={node}/{PKI_REL}/ca.crt" in res.stdout
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


# --- an etcd-backed cluster: patch-manifest does not move data ---------------------------

def untouched(node: Path, target: Path, before: bytes) -> None:
    """The refusal wrote nothing: same manifest, no backup, no temporary file."""
    assert target.read_bytes() == before
    assert not (node / "var/lib/k8s-sql/backup").exists()
    assert not (node / "etc/kubernetes/tmp").exists() or not os.listdir(node / "etc/kubernetes/tmp")


def test_help_says_no_data_is_moved():
    res = subprocess.run(["k8s-sql", "patch-manifest", "--help"], capture_output=True, text=True,
                         env={**os.environ, "COLUMNS": "200"})
    assert res.returncode == 0
    text = " ".join(res.stdout.split())
    assert "does not move data" in text and "--allow-empty-datastore" in text


@pytest.mark.parametrize("dry_run", [False, True], ids=["apply", "dry-run"])
def test_stacked_etcd_beside_the_manifest_is_refused(node, dry_run):
    """kubeadm 1.20's stacked layout: etcd.yaml beside kube-apiserver.yaml. Patching would
    point kube-apiserver at an empty datastore: refused, in a dry run too."""
    target = install(node, SHARED / "kube-apiserver.stacked.yaml")
    shutil.copy(ETCD, node / "etc/kubernetes/manifests/etcd.yaml")
    before = target.read_bytes()
    res = cli(node, *(["--dry-run"] if dry_run else []))
    err = " ".join(res.stderr.split())
    assert res.returncode == 1, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    assert f"{node}/etc/kubernetes/manifests/etcd.yaml" in err
    assert "does not move data" in err and "empty datastore" in err and "--allow-empty-datastore" in err
    untouched(node, target, before)


def test_etcd_pod_under_another_file_name_is_found(node):
    """The kubelet runs every file in the manifests directory, whatever its name."""
    target = install(node, LOCAL / "kube-apiserver-1.30.yaml")
    shutil.copy(ETCD, node / "etc/kubernetes/manifests/etcd-main.yml")
    before = target.read_bytes()
    res = cli(node)
    assert res.returncode == 1 and "etcd-main.yml" in res.stderr and "does not move data" in res.stderr
    untouched(node, target, before)


def test_allow_empty_datastore_still_refuses_a_port_clash(node):
    """With etcd still running on 127.0.0.1:2379 the sidecar could not listen there."""
    target = install(node, SHARED / "kube-apiserver.stacked.yaml")
    shutil.copy(ETCD, node / "etc/kubernetes/manifests/etcd.yaml")
    before = target.read_bytes()
    res = cli(node, "--allow-empty-datastore")
    err = " ".join(res.stderr.split())
    assert res.returncode == 1 and "shim.port 2379" in err and "shim.metricsPort 2381" in err, err
    assert "move its manifest out of the manifests directory" in err
    untouched(node, target, before)


def test_allow_empty_datastore_patches_with_free_ports(node):
    """Explicitly accepted: patched, etcd's manifest and data left alone, and the output
    says that the previous datastore's data was not moved."""
    write_config(node, "shim: {port: 2479, metricsPort: 2482}\n")
    target = install(node, SHARED / "kube-apiserver.stacked.yaml")
    etcd = node / "etc/kubernetes/manifests/etcd.yaml"
    shutil.copy(ETCD, etcd)
    res = cli(node, "--allow-empty-datastore")
    assert res.returncode == 0, res.stderr
    out = " ".join(res.stdout.split())
    assert "(https://127.0.0.1:2379) is not moved" in out
    assert flags(yaml.safe_load(target.read_text()))["--etcd-servers"] == "https://127.0.0.1:2479"
    assert etcd.read_bytes() == ETCD.read_bytes()


def with_overrides(node: Path) -> tuple[Path, bytes]:
    target = install(node, LOCAL / "kube-apiserver-1.30.yaml")
    text = target.read_text().replace("    - --etcd-servers=https://127.0.0.1:2379\n",
                                      "    - --etcd-servers=https://127.0.0.1:2379\n"
                                      "    - --etcd-servers-overrides=/events#https://10.0.0.5:2379\n")
    assert "overrides" in text
    target.write_text(text)
    return target, text.encode()


def test_etcd_servers_overrides_are_refused(node):
    target, before = with_overrides(node)
    res = cli(node)
    err = " ".join(res.stderr.split())
    assert res.returncode == 1 and "--etcd-servers-overrides=/events#https://10.0.0.5:2379" in err
    assert "--allow-empty-datastore" in err and "Traceback" not in err
    untouched(node, target, before)


def test_allow_empty_datastore_removes_the_overrides(node):
    """Left in place they would point at the old etcd with the shim's certificates."""
    target, _ = with_overrides(node)
    res = cli(node, "--allow-empty-datastore")
    assert res.returncode == 0, res.stderr
    assert "--etcd-servers-overrides=/events#https://10.0.0.5:2379 is removed" in " ".join(res.stdout.split())
    f = flags(yaml.safe_load(target.read_text()))
    assert "--etcd-servers-overrides" not in f and f["--etcd-servers"] == "https://127.0.0.1:2379"


@pytest.mark.parametrize("remove", [SIDECAR_PKI, ["shim-server.key"]], ids=["none", "one-missing"])
def test_missing_certificates_are_refused(node, remove):
    """Even with --allow-empty-datastore: the sidecar and kube-apiserver could not start."""
    for name in remove:
        (node / PKI_REL / name).unlink()
    target = install(node, SHARED / "kube-apiserver.seed-http.yaml")
    before = target.read_bytes()
    res = cli(node, "--allow-empty-datastore")
    err = " ".join(res.stderr.split())
    assert res.returncode == 1 and f"need are missing: {', '.join(remove)}" in err, err
    assert f"{node}/{PKI_REL}" in err and "k8s-sql init phase pki" in err
    untouched(node, target, before)


@pytest.mark.parametrize("text, message", [
    ("", "the document is empty"),
    ("# only a comment\n", "the document is empty"),
    ("- kind: Pod\n- apiVersion: v1\n", "a list, not a mapping"),
    ("just a string\n", "a scalar, not a mapping"),
    ("apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec: []\n", "not a valid Pod"),
    ("apiVersion: v1\nkind: Pod\nmetadata: {name: x, creationTimestamp: 2001-13-45}\n", "a value cannot be read"),
    ("apiVersion: v1\nkind: Pod\n---\napiVersion: v1\nkind: Pod\n", "not valid YAML"),
    ("apiVersion: v1\nkind: Pod\nkind: Pod\n", "not valid YAML"),
    ("metadata: {name: x}\nspec: {}\n", "not a Pod manifest"),
    ("&x [*x]\n", "recursive alias"),
    ("[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
], ids=["empty", "comment", "list", "scalar", "spec-list", "bad-date", "two-docs", "dup-key", "no-kind",
        "alias-loop", "deep"])
def test_malformed_manifests_give_an_error_not_a_traceback(node, text, message):
    target = node / "etc/kubernetes/manifests/kube-apiserver.yaml"
    target.write_text(text)
    for extra in ([], ["--dry-run"]):
        res = cli(node, *extra)
        assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
        assert message in " ".join(res.stderr.split()) and str(target) in res.stderr.replace("\n", "")
    assert target.read_text() == text and not (node / "var/lib/k8s-sql/backup").exists()
