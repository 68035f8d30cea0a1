"""``k8s-sql render --out DIR``: every generated file lands in DIR, nothing else is touched,
the certificates chain to the CA (checked with openssl), and a second render rewrites
nothing; what render refuses (live paths, symlinks out of DIR, a DIR that holds files,
unwritable places) leaves everything as it was. Runs the real console script."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

FILES = [
    "etc/kubernetes/pki/k8s-sql/ca.crt", "etc/kubernetes/pki/k8s-sql/ca.key",
    "etc/kubernetes/pki/k8s-sql/postgres-server.crt", "etc/kubernetes/pki/k8s-sql/postgres-server.key",
    "etc/kubernetes/pki/k8s-sql/shim-postgres-client.crt", "etc/kubernetes/pki/k8s-sql/shim-postgres-client.key",
    "etc/kubernetes/pki/k8s-sql/shim-server.crt", "etc/kubernetes/pki/k8s-sql/shim-server.key",
    "etc/kubernetes/pki/k8s-sql/apiserver-shim-client.crt", "etc/kubernetes/pki/k8s-sql/apiserver-shim-client.key",
    "etc/k8s-sql/kubeadm.yaml", "etc/k8s-sql/patches/kube-apiserver+strategic.yaml",
    "postgresql/conf.d/k8s-sql.conf", "postgresql/pg_hba.k8s-sql.conf", "postgresql/k8s-sql-role.sql",
]


def render_argv(out, *extra) -> list[str]:
    return [sys.executable, "-m", "k8s_sql", "render", "--out", str(out), "--node-name", "cp1",
            "--apiserver-advertise-address", "192.0.2.10", "--kubernetes-version", "v1.30.4", *extra]


def render(out, *extra, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(render_argv(out, *extra), capture_output=True, text=True, timeout=120, cwd=cwd)


def tree(root) -> dict[str, tuple[int, float]]:
    out = {}
    for d, _, names in os.walk(root):
        for n in names:
            p = os.path.join(d, n)
            st = os.stat(p)
            out[os.path.relpath(p, root)] = (st.st_mode & 0o777, st.st_mtime_ns)
    return out


def test_render_writes_everything_into_out_and_nothing_else(tmp_path):
    out = tmp_path / "out"
    before = os.path.exists("/etc/k8s-sql"), os.path.exists("/etc/kubernetes/pki/k8s-sql")
    r = render(out)
    assert r.returncode == 0, r.stderr
    files = tree(out)
    assert sorted(files) == sorted(FILES)
    assert os.listdir(tmp_path) == ["out"]  # the staging directory beside it was moved into place
    assert (os.path.exists("/etc/k8s-sql"), os.path.exists("/etc/kubernetes/pki/k8s-sql")) == before
    assert {p: m for p, (m, _) in files.items() if p.endswith(".key")} == {p: 0o600 for p in FILES if p.endswith(".key")}

    pki = out / "etc/kubernetes/pki/k8s-sql"
    for cert in ("postgres-server", "shim-postgres-client", "shim-server", "apiserver-shim-client"):
        v = subprocess.run(["openssl", "verify", "-CAfile", pki / "ca.crt", pki / f"{cert}.crt"],
                           capture_output=True, text=True)
        assert v.returncode == 0 and v.stdout.strip().endswith(": OK"), v.stdout + v.stderr
    san = subprocess.run(["openssl", "x509", "-noout", "-ext", "subjectAltName", "-in", pki / "postgres-server.crt"],
                         capture_output=True, text=True).stdout
    assert "IP Address:127.0.0.1" in san and "IP Address:192.0.2.10" in san and "DNS:cp1" in san

    docs = list(yaml.safe_load_all((out / "etc/k8s-sql/kubeadm.yaml").read_text()))
    assert docs[0]["apiVersion"] == "kubeadm.k8s.io/v1beta3"  # Kubernetes 1.30
    cluster = next(d for d in docs if d["kind"] == "ClusterConfiguration")
    assert cluster["etcd"]["external"]["endpoints"] == ["https://127.0.0.1:2379"]
    hba = (out / "postgresql/pg_hba.k8s-sql.conf").read_text()
    assert "hostssl   kubernetes k8s_sql 127.0.0.1/32 cert" in hba
    assert "ssl_min_protocol_version = 'TLSv1.2'" in (out / "postgresql/conf.d/k8s-sql.conf").read_text()
    assert "PASSWORD NULL" in (out / "postgresql/k8s-sql-role.sql").read_text()

    again = render(out)
    assert again.returncode == 0 and "up to date, nothing written" in " ".join(again.stdout.split())
    assert tree(out) == files


def test_render_with_client_addresses(tmp_path):
    """postgres.clientAddresses: a pg_hba line each, and PostgreSQL also listens on the
    node's address (the one in the server certificate)."""
    out, cfg = tmp_path / "out", tmp_path / "cluster.yaml"
    cfg.write_text("apiVersion: k8s-sql.io/v1alpha1\nkind: Cluster\npostgres: {clientAddresses: [192.0.2.11]}\n")
    r = render(out, "-c", str(cfg))
    assert r.returncode == 0, r.stderr
    assert "hostssl   kubernetes k8s_sql 192.0.2.11/32 cert" in (out / "postgresql/pg_hba.k8s-sql.conf").read_text()
    assert "listen_addresses = 'localhost,192.0.2.10'" in (out / "postgresql/conf.d/k8s-sql.conf").read_text()


def test_render_refuses_a_broken_ca(tmp_path):
    out = tmp_path / "out"
    assert render(out).returncode == 0
    (out / "etc/kubernetes/pki/k8s-sql/ca.key").write_text("garbage")
    r = render(out)
    assert r.returncode == 1 and "ca" in r.stderr.lower() and "Traceback" not in r.stderr
    assert os.listdir(out) == ["etc", "postgresql"]  # no staging directory left behind


# --- what render refuses ------------------------------------------------------------------

def snapshot(root) -> dict[str, tuple]:
    """Every entry under ``root`` (symlinks not followed): kind, content, mode."""
    out = {}
    for d, dirs, names in os.walk(root):
        for n in dirs + names:
            p = os.path.join(d, n)
            rel = os.path.relpath(p, root)
            if os.path.islink(p):
                out[rel] = ("link", os.readlink(p))
            elif os.path.isdir(p):
                out[rel] = ("dir", os.stat(p).st_mode & 0o777)
            else:
                out[rel] = ("file", Path(p).read_bytes(), os.stat(p).st_mode & 0o777)
    return out


def clean_error(r: subprocess.CompletedProcess, code: int, *words: str) -> str:
    text = " ".join((r.stdout + r.stderr).replace("│", " ").split())
    assert r.returncode == code, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    for w in words:
        assert w in text, text
    return text


def _can_unshare() -> bool:
    try:
        return subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0
    except FileNotFoundError:
        return False


needs_unshare = pytest.mark.skipif(not _can_unshare(), reason="needs `unshare -m` (util-linux, as root)")


def in_readonly_root(argv: list[str], *, ro_dirs=(), cwd=None) -> subprocess.CompletedProcess:
    """Run ``argv`` in a private mount namespace where ``/`` is mounted read-only (and each
    of ``ro_dirs`` is a read-only tmpfs): a refusal test that targets the live system then
    cannot damage this machine even if render regressed. Real read-only mounts, because
    root (as CI runs) ignores permission bits."""
    script = "mount -o remount,bind,ro / || exit 97\n"
    for d in ro_dirs:
        script += f"mount -t tmpfs -o ro tmpfs '{d}' || exit 97\n"
    script += 'exec "$@"\n'
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", *argv],
                       capture_output=True, text=True, timeout=120, cwd=cwd)
    assert r.returncode != 97, r.stderr
    return r


def test_empty_out_is_refused(tmp_path):
    """`--out ''` used to write into the working directory."""
    r = render("", cwd=tmp_path)
    clean_error(r, 2, "--out", "empty directory name")
    assert os.listdir(tmp_path) == []


@needs_unshare
@pytest.mark.parametrize("out", ["/", "/etc/kubernetes/render", "/etc/k8s-sql", "/var/lib/k8s-sql/out",
                                 "/etc/postgresql/x", "/etc", "/usr"])
def test_live_and_system_paths_are_refused(out):
    r = in_readonly_root(render_argv(out))
    clean_error(r, 2, "--out", out)


def test_configured_paths_are_refused_even_through_a_symlink(tmp_path):
    """paths.* name live directories: DIR may not be one, be inside one (also by a
    symlink), or contain one."""
    live = tmp_path / "node/pki"
    live.mkdir(parents=True)
    cfg = tmp_path / "cluster.yaml"
    cfg.write_text(f"apiVersion: k8s-sql.io/v1alpha1\nkind: Cluster\npaths: {{pkiDir: {live}}}\n")
    (tmp_path / "link").symlink_to(live)
    for out, how in ((live, "is"), (live / "render", "is inside"), (tmp_path / "link/render", "is inside"),
                     (tmp_path / "node", "contains")):
        r = render(out, "-c", str(cfg))
        clean_error(r, 2, f"{how} {live} (paths.pkiDir)")
    assert snapshot(tmp_path / "node") == {"pki": ("dir", 0o755)}


def test_symlink_out_of_dir_is_never_written_through(tmp_path):
    """DIR/etc/k8s-sql -> a directory outside DIR: refused, with or without --force."""
    out, outside = tmp_path / "out", tmp_path / "outside"
    (out / "etc").mkdir(parents=True)
    outside.mkdir()
    (out / "etc/k8s-sql").symlink_to(outside)
    before = snapshot(out)
    for extra in ([], ["--force"]):
        r = render(out, *extra)
        clean_error(r, 1, f"{out}/etc/k8s-sql is a symlink to {outside}", "never writes through a symlink")
    assert os.listdir(outside) == []
    assert snapshot(out) == before


def test_non_empty_dir_needs_force_and_then_backs_up(tmp_path):
    out = tmp_path / "out"
    mine = out / "etc/k8s-sql/kubeadm.yaml"
    mine.parent.mkdir(parents=True)
    mine.write_text("my own kubeadm configuration\n")
    (out / "notes.txt").write_text("keep me\n")
    before = snapshot(out)
    r = render(out)
    clean_error(r, 1, f"{out} already holds files", "render would write 15 files (1 of them replacing", "--force")
    assert snapshot(out) == before

    r = render(out, "--force")
    assert r.returncode == 0, r.stderr
    text = " ".join(r.stdout.replace("│", " ").split())
    assert "etc/k8s-sql/kubeadm.yaml (replaced)" in text
    backups = list((out / ".k8s-sql-backup").iterdir())
    assert len(backups) == 1 and f"replaced files were copied to {backups[0]}" in text
    saved = backups[0] / "etc/k8s-sql/kubeadm.yaml"
    assert saved.read_text() == "my own kubeadm configuration\n" and saved.stat().st_mode & 0o777 == 0o600
    assert "ClusterConfiguration" in mine.read_text()
    assert (out / "notes.txt").read_text() == "keep me\n"
    assert sorted(p for p in tree(out) if not p.startswith((".k8s-sql-backup", "notes"))) == sorted(FILES)
    # nothing to change: no --force needed, nothing written
    again = render(out)
    assert again.returncode == 0 and "up to date, nothing written" in again.stdout


def test_a_file_where_a_directory_goes_leaves_nothing_behind(tmp_path):
    """DIR/etc/k8s-sql is a file: render used to write the keys, then fail with a traceback."""
    out = tmp_path / "out"
    (out / "etc").mkdir(parents=True)
    (out / "etc/k8s-sql").write_text("a file\n")
    before = snapshot(out)
    for extra in ([], ["--force"]):
        r = render(out, *extra)
        clean_error(r, 1, f"{out}/etc/k8s-sql is a file where render needs a directory", "move it away")
    assert snapshot(out) == before
    assert os.listdir(tmp_path) == ["out"]


def test_out_is_a_file(tmp_path):
    (tmp_path / "out").write_text("x")
    clean_error(render(tmp_path / "out"), 1, "is not a directory")
    clean_error(render(tmp_path / "out/sub"), 1, "is not a directory")
    assert (tmp_path / "out").read_text() == "x"


@needs_unshare
@pytest.mark.parametrize("layout", ["new-dir-in-readonly-parent", "existing-readonly-dir"])
def test_readonly_directory(tmp_path, layout):
    ro = tmp_path / "ro"
    ro.mkdir()
    out = ro / "out" if layout.startswith("new") else ro
    r = in_readonly_root(render_argv(out), ro_dirs=[ro], cwd=tmp_path)
    clean_error(r, 1, "Read-only file system", "writable")
    assert os.listdir(ro) == []


def test_proc_is_refused_cleanly():
    clean_error(render("/proc/k8s-sql-render-test/out"), 1, "cannot write into /proc")


def test_negative_validity_is_an_error_not_a_traceback(tmp_path):
    cfg = tmp_path / "cluster.yaml"
    cfg.write_text("apiVersion: k8s-sql.io/v1alpha1\nkind: Cluster\ncertificates: {validityDays: -5}\n")
    r = render(tmp_path / "out", "-c", str(cfg))
    clean_error(r, 1, "validityDays")
    assert os.listdir(tmp_path) == ["cluster.yaml"]


def test_a_failed_move_puts_back_what_it_replaced(tmp_path, monkeypatch):
    """The one failure the checks before the move cannot foresee (a rename failing half
    way, e.g. an I/O error) is simulated: os.replace fails on the third file. Every file
    moved so far is restored from its backup or removed, and DIR is as it was."""
    from rich.console import Console

    from k8s_sql import config, render as rendermod

    out = tmp_path / "out"
    assert render(out).returncode == 0
    for name in ("etc/k8s-sql/kubeadm.yaml", "postgresql/k8s-sql-role.sql", "postgresql/pg_hba.k8s-sql.conf"):
        (out / name).write_text("edited\n")
    before = snapshot(out)
    real_replace, calls = os.replace, []

    def failing_replace(src, dst):
        calls.append(dst)
        if len(calls) == 3:
            raise OSError(5, "Input/output error", dst)
        return real_replace(src, dst)

    monkeypatch.setattr(rendermod.os, "replace", failing_replace)
    cfg = config.load_file(None)
    cfg.node.name, cfg.node.advertise_address, cfg.kubernetes.version = "cp1", "192.0.2.10", "v1.30.4"
    with pytest.raises(rendermod.K8sSqlError, match="Input/output error"):
        rendermod.render(cfg, str(out), Console(file=open(os.devnull, "w")), force=True)
    assert len(calls) == 3
    assert snapshot(out) == before


def test_render_records_nothing_in_the_state_file(tmp_path):
    """render plans the phases but is no install: k8s-sql's record of what it owns on this
    node (paths.stateFile) is neither created nor touched."""
    state = tmp_path / "var/lib/k8s-sql/state.json"
    cfg = tmp_path / "cluster.yaml"
    cfg.write_text(f"apiVersion: k8s-sql.io/v1alpha1\nkind: Cluster\npaths: {{stateFile: {state}}}\n")
    r = render(tmp_path / "out", "-c", str(cfg))
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(tmp_path)) == ["cluster.yaml", "out"]
    assert sorted(tree(tmp_path / "out")) == sorted(FILES)


def test_binary_config_file_is_an_error_not_a_traceback(tmp_path):
    """A binary --config used to end in a UnicodeDecodeError traceback."""
    cfg = tmp_path / "cluster.yaml"
    cfg.write_bytes(b"apiVersion: k8s-sql.io/v1alpha1\nkind: Cluster\n\xff\xfe\x00\x80binary")
    validate = subprocess.run([sys.executable, "-m", "k8s_sql", "config", "validate", "-c", str(cfg)],
                              capture_output=True, text=True, timeout=120)
    for r in (validate, render(tmp_path / "out", "-c", str(cfg))):
        clean_error(r, 1, f"{cfg}: the configuration file is not UTF-8 text", "print-defaults")
    assert sorted(os.listdir(tmp_path)) == ["cluster.yaml"]
