"""The record of what k8s-sql created (``paths.stateFile``), the system-path list, and the
removal primitives reset relies on. Everything runs against a scratch root
(``LocalHost(root=tmp)``): the paths below are the node's paths, under that root."""

from __future__ import annotations

import json
import os
import stat

import pytest
from rich.console import Console

from k8s_sql.config import Cluster
from k8s_sql.errors import CommandError, K8sSqlError
from k8s_sql.host import DryRunHost, LocalHost
from k8s_sql.paths import SYSTEM_PATHS, is_system_path, normalize
from k8s_sql.phases.base import Action, Change, Context, RemoveDir, RemoveFile, WriteFile
from k8s_sql.phases.kubeadm_config import KubeadmConfig
from k8s_sql.phases.runner import run_phases
from k8s_sql.state import STATE_FILE, State, sha256


def quiet() -> Console:
    return Console(file=open(os.devnull, "w"))


def config() -> Cluster:
    cfg = Cluster()
    cfg.node.name, cfg.node.advertise_address = "cp1", "192.0.2.10"
    cfg.node.cri_socket = "unix:///var/run/crio/crio.sock"
    return cfg


def ctx_in(root, *, dry_run=False, record=True, cfg=None) -> Context:
    cfg = cfg or config()
    host = LocalHost(root=str(root))
    return Context(DryRunHost(host) if dry_run else host, cfg, console=quiet(), dry_run=dry_run,
                   state=State.for_config(cfg) if record else None)


def record(root) -> dict:
    """The record on disk under ``root``: path -> entry."""
    doc = json.loads((root / STATE_FILE.lstrip("/")).read_text())
    assert doc["apiVersion"] == "k8s-sql.io/v1alpha1" and doc["kind"] == "State"
    return {e["path"]: e for e in doc["entries"]}


# system paths

@pytest.mark.parametrize("path", ["/", "/etc", "/etc/", "//usr", "/usr/./", "/var", "/var/lib", "/home", "/root",
                                  "/boot", "/bin", "/sbin", "/lib", "/lib64", "/opt", "/srv", "/tmp",
                                  "/etc/kubernetes", "/etc/kubernetes/pki", "/etc/kubernetes/manifests",
                                  "/var/lib/kubelet", "/etc/postgresql", "/var/lib/postgresql", "/home/alice",
                                  "/home/alice/", "/etc/k8s-sql/..", "", "etc", "relative/dir"])
def test_system_paths(path):
    assert is_system_path(path)


@pytest.mark.parametrize("path", ["/etc/k8s-sql", "/etc/k8s-sql/patches", "/etc/kubernetes/pki/k8s-sql",
                                  "/var/lib/k8s-sql", "/var/lib/k8s-sql/backup", "/home/alice/.kube",
                                  "/opt/k8s-sql", "/srv/cluster/pki", "/tmp/scratch"])
def test_not_system_paths(path):
    assert not is_system_path(path)


def test_every_parent_of_a_system_path_is_one():
    for p in SYSTEM_PATHS:
        assert is_system_path(os.path.dirname(p)), p


def test_the_default_paths_k8s_sql_owns_are_not_system_paths():
    p = Cluster().paths
    for path in (p.pki_dir, p.patches_dir, p.kubeadm_config, p.backup_dir, p.postgres_clients, p.state_file):
        assert not is_system_path(path), path


def test_normalize():
    assert normalize("//etc//k8s-sql/./x/../y/") == "/etc/k8s-sql/y"
    assert normalize("etc") is None and normalize("") is None


# recording

def test_a_phase_records_what_it_creates_with_checksums(tmp_path):
    """The kubeadm-config phase knows nothing of the record: WriteFile does it."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)  # the system's /etc exists; /etc/k8s-sql does not
    ctx = ctx_in(root)
    assert run_phases([KubeadmConfig()], ctx) == 2
    rec = record(root)
    conf = root / "etc/k8s-sql/kubeadm.yaml"
    patch = root / "etc/k8s-sql/patches/kube-apiserver+strategic.yaml"
    assert rec == {
        "/etc/k8s-sql": {"path": "/etc/k8s-sql", "kind": "dir"},
        "/etc/k8s-sql/patches": {"path": "/etc/k8s-sql/patches", "kind": "dir"},
        "/etc/k8s-sql/kubeadm.yaml": {"path": "/etc/k8s-sql/kubeadm.yaml", "kind": "file",
                                      "sha256": sha256(conf.read_bytes())},
        "/etc/k8s-sql/patches/kube-apiserver+strategic.yaml": {
            "path": "/etc/k8s-sql/patches/kube-apiserver+strategic.yaml", "kind": "file",
            "sha256": sha256(patch.read_bytes())},
    }
    st = os.stat(root / STATE_FILE.lstrip("/"))
    assert stat.S_IMODE(st.st_mode) == 0o600
    doc = json.loads((root / STATE_FILE.lstrip("/")).read_text())
    assert doc["stateDirs"] == ["/var/lib/k8s-sql"]  # /var and /var/lib are the system's
    assert doc["legacy"] is False
    assert not [n for n in os.listdir(root / "var/lib/k8s-sql") if n.startswith(".k8s-sql-")]  # no temp files


def test_system_directories_are_never_recorded(tmp_path):
    """An empty scratch root: writing /etc/k8s-sql/... creates /etc too, which is a system
    path and so never becomes k8s-sql's; nor does /var/lib for the record itself."""
    root = tmp_path / "root"
    ctx = ctx_in(root)
    run_phases([KubeadmConfig()], ctx)
    assert set(record(root)) == {"/etc/k8s-sql", "/etc/k8s-sql/patches", "/etc/k8s-sql/kubeadm.yaml",
                                 "/etc/k8s-sql/patches/kube-apiserver+strategic.yaml"}
    doc = json.loads((root / STATE_FILE.lstrip("/")).read_text())
    assert doc["stateDirs"] == ["/var/lib/k8s-sql"]


def test_a_file_k8s_sql_only_modified_is_not_recorded(tmp_path):
    root = tmp_path / "root"
    (root / "etc/postgresql").mkdir(parents=True)
    hba = root / "etc/postgresql/pg_hba.conf"
    hba.write_text("local all postgres peer\n")
    ctx = ctx_in(root)
    WriteFile("/etc/postgresql/pg_hba.conf", b"# BEGIN k8s-sql\n# END k8s-sql\nlocal all postgres peer\n", 0o640,
              backup=True, backup_dir="/var/lib/k8s-sql/backup").apply(ctx)
    assert os.listdir(root / "var/lib/k8s-sql/backup")  # backed up ...
    # ... but neither it nor the backup is k8s-sql's to remove: nothing was recorded
    assert not (root / STATE_FILE.lstrip("/")).exists()


def test_rewriting_a_recorded_file_updates_its_checksum(tmp_path):
    root = tmp_path / "root"
    ctx = ctx_in(root)
    WriteFile("/etc/k8s-sql/x.yaml", b"one\n").apply(ctx)
    WriteFile("/etc/k8s-sql/x.yaml", b"two\n").apply(ctx)
    assert record(root)["/etc/k8s-sql/x.yaml"]["sha256"] == sha256(b"two\n")
    # a fresh State (the next k8s-sql run) reads the same record
    assert State.for_config(ctx.config).get(ctx.host, "/etc/k8s-sql/x.yaml").sha256 == sha256(b"two\n")


def test_removing_a_recorded_file_forgets_it(tmp_path):
    root = tmp_path / "root"
    ctx = ctx_in(root)
    WriteFile("/etc/k8s-sql/a", b"a").apply(ctx)
    WriteFile("/etc/k8s-sql/b", b"b").apply(ctx)
    RemoveFile("/etc/k8s-sql/a").apply(ctx)
    assert set(record(root)) == {"/etc/k8s-sql", "/etc/k8s-sql/b"}


def test_a_dry_run_records_nothing_on_disk(tmp_path):
    root = tmp_path / "root"
    ctx = ctx_in(root, dry_run=True)
    assert run_phases([KubeadmConfig()], ctx) == 2
    assert not (root / "var").exists() and not (root / "etc").exists()
    # the record exists in the DryRunHost's memory only, as the files do
    assert {e.path for e in State.for_config(ctx.config).entries(ctx.host)} >= {"/etc/k8s-sql/kubeadm.yaml"}


def test_a_context_without_state_records_nothing(tmp_path):
    """What ``render`` uses: writes happen, no record anywhere."""
    root = tmp_path / "root"
    ctx = ctx_in(root, record=False)
    run_phases([KubeadmConfig()], ctx)
    assert (root / "etc/k8s-sql/kubeadm.yaml").exists()
    assert not (root / "var").exists()


def test_a_record_started_on_a_node_with_k8s_sql_files_is_marked_legacy(tmp_path):
    root = tmp_path / "root"
    run_phases([KubeadmConfig()], ctx_in(root, record=False))  # an older k8s-sql: no record
    os.unlink(root / "etc/k8s-sql/patches/kube-apiserver+strategic.yaml")
    run_phases([KubeadmConfig()], ctx_in(root))
    doc = json.loads((root / STATE_FILE.lstrip("/")).read_text())
    assert doc["legacy"] is True
    assert set(record(root)) == {"/etc/k8s-sql/patches/kube-apiserver+strategic.yaml"}


@pytest.mark.parametrize("text, what", [
    ("{not json", "not JSON"),
    ('{"apiVersion": "v1", "kind": "ConfigMap"}', "apiVersion"),
    ('{"apiVersion": "k8s-sql.io/v1alpha1", "kind": "State", "entries": [{"path": "etc", "kind": "dir"}]}',
     "normalised absolute path"),
    ('{"apiVersion": "k8s-sql.io/v1alpha1", "kind": "State", "entries": [{"path": "/x", "kind": "file"}]}',
     "SHA-256"),
    ('{"apiVersion": "k8s-sql.io/v1alpha1", "kind": "State", "entries": [{"path": "/x", "kind": "link"}]}',
     "neither file nor dir"),
])
def test_a_damaged_record_is_a_clear_error(tmp_path, text, what):
    root = tmp_path / "root"
    (root / "var/lib/k8s-sql").mkdir(parents=True)
    (root / "var/lib/k8s-sql/state.json").write_text(text)
    ctx = ctx_in(root)
    with pytest.raises(K8sSqlError) as e:
        WriteFile("/etc/k8s-sql/x", b"x").apply(ctx)
    assert what in str(e.value) and e.value.where == STATE_FILE and "move it away" in (e.value.hint or "")
    assert not (root / "etc/k8s-sql/x").exists()  # nothing written on a damaged record
    assert (root / "var/lib/k8s-sql/state.json").read_text() == text


# removal primitives

def test_remove_refuses_a_directory_and_rmdir_an_unempty_one(tmp_path):
    host = LocalHost(root=str(tmp_path))
    (tmp_path / "d/sub").mkdir(parents=True)
    (tmp_path / "d/sub/keep").write_text("user data\n")
    with pytest.raises(CommandError, match="is a directory"):
        host.remove("/d")
    with pytest.raises(CommandError, match="not empty"):
        host.rmdir("/d/sub")
    assert (tmp_path / "d/sub/keep").read_text() == "user data\n"
    os.symlink(tmp_path / "d", tmp_path / "link")
    assert host.is_dir("/d") and not host.is_dir("/link")
    host.remove("/link")  # the link, not what it points to
    assert not os.path.lexists(tmp_path / "link") and (tmp_path / "d/sub/keep").exists()
    host.remove("/d/sub/keep")
    host.rmdir("/d/sub")
    host.rmdir("/d/sub")  # missing: not an error
    host.remove("/d/missing")
    assert host.listdir("/d") == []


def test_remove_file_with_a_checksum_keeps_a_changed_file(tmp_path):
    host = LocalHost(root=str(tmp_path))
    (tmp_path / "f").write_text("changed by the user\n")
    ctx = Context(host, config(), console=quiet())
    RemoveFile("/f", sha256=sha256(b"what k8s-sql wrote\n")).apply(ctx)
    assert (tmp_path / "f").exists()
    RemoveFile("/f", sha256=sha256(b"changed by the user\n")).apply(ctx)
    assert not (tmp_path / "f").exists()


def test_remove_dir_keeps_a_directory_that_is_not_empty(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d/user").write_text("x")
    ctx = Context(LocalHost(root=str(tmp_path)), config(), console=quiet())
    RemoveDir("/d").apply(ctx)
    assert (tmp_path / "d/user").exists()


def test_dry_run_removal_of_a_directory_is_refused_too(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d/f").write_text("x")
    host = DryRunHost(LocalHost(root=str(tmp_path)))
    with pytest.raises(CommandError, match="is a directory"):
        host.remove("/d")
    with pytest.raises(CommandError, match="not empty"):
        host.rmdir("/d")
    host.remove("/d/f")
    host.rmdir("/d")
    assert not host.exists("/d") and (tmp_path / "d/f").exists()


def test_which_changes_a_dry_run_replays_is_a_property_of_the_change():
    assert WriteFile.replay_in_dry_run and RemoveFile.replay_in_dry_run and RemoveDir.replay_in_dry_run
    assert not Action.replay_in_dry_run and not Change.replay_in_dry_run
