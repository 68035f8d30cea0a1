"""The shim image's Containerfile and the wheel it installs.

podman/buildah cannot run here, so the image is not built. What is checked instead: the
Containerfile's instructions (parsed as text: a stand-in for inspecting the built image's
config), and the part of the build that is plain pip — a real ``pip wheel`` of the
project, installed into a scratch directory, must carry the templates, the shim's data and
the etcd proto stubs, and a wheel re-packed from that installation (what the ``shim`` phase
does on a node without a source tree) must hold the same files.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONTAINERFILE = ROOT / "shim" / "Containerfile"


def instructions(text: str) -> list[tuple[str, str]]:
    """``[(INSTRUCTION, arguments)]`` with continuation lines joined and comments dropped."""
    out, buf = [], ""
    for line in text.splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        buf += line.rstrip("\\").strip() + " " if line.endswith("\\") else line.strip()
        if not line.endswith("\\"):
            word, _, rest = buf.partition(" ")
            out.append((word.upper(), rest.strip()))
            buf = ""
    return out


def runtime_stage(ins):
    """Instructions of the last stage (the image that runs)."""
    starts = [i for i, (w, _) in enumerate(ins) if w == "FROM"]
    return ins[starts[-1]:]


def test_runtime_stage_runs_the_shim_as_numeric_non_root():
    ins = instructions(CONTAINERFILE.read_text())
    stage = runtime_stage(ins)
    assert len([w for w, _ in ins if w == "FROM"]) == 2, "a build stage and a runtime stage"
    users = [a for w, a in stage if w == "USER"]
    assert users, "the runtime stage sets USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0 and (not gid or (gid.isdigit() and int(gid) != 0))
    assert uid == "65532"
    [entrypoint] = [a for w, a in stage if w == "ENTRYPOINT"]
    argv = json.loads(entrypoint)  # exec form: no shell needed at runtime
    assert Path(argv[0]).name == "k8s-sql" and argv[1:] == ["shim", "serve"]
    env = " ".join(a for w, a in stage if w == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    # only the installed virtualenv is copied from the build stage; no RUN in the runtime stage
    assert [w for w, _ in stage if w == "RUN"] == []
    assert any(w == "COPY" and a.startswith("--from=build") for w, a in stage)
    # the virtualenv path in ENTRYPOINT is the one the build stage creates
    build = "\n".join(a for w, a in ins[:ins.index(stage[0])] if w == "RUN")
    assert f"python3 -m venv {Path(argv[0]).parent.parent}" in build
    assert "compileall" in build  # bytecode made at build time: nothing written on a read-only root fs


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
                   check=True, capture_output=True)
    [whl] = list(out.glob("k8s_sql-*.whl"))
    return whl


def test_wheel_carries_data_and_proto_stubs(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "k8s_sql/_data/shim/Containerfile" in names
    assert "k8s_sql/_data/templates/kubeadm/v1beta4.yaml" in names
    assert "k8s_sql/_data/templates/shim/sidecar.yaml" in names
    for stub in ("rpc_pb2.py", "rpc_pb2_grpc.py", "kv_pb2.py"):
        assert f"k8s_sql/shim/etcdpb/{stub}" in names
    for mod in ("http.py", "metrics.py", "api/maintenance.py"):
        assert f"k8s_sql/shim/{mod}" in names
    entry = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry[0]).decode()
    assert re.search(r"^k8s-sql = k8s_sql.cli:main$", text, re.M)


def test_installed_wheel_finds_its_data_and_repacks_to_the_same_files(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    out = tmp_path / "repacked"
    script = (
        "import json, sys, pathlib\n"
        "import k8s_sql, k8s_sql.shim.etcdpb.rpc_pb2\n"
        "from k8s_sql.resources import data_dir\n"
        "from k8s_sql.phases.shim import source_checkout, make_wheel\n"
        f"w = make_wheel(pathlib.Path({str(out)!r}))\n"
        "print(json.dumps([k8s_sql.__file__, str(data_dir('templates')), str(data_dir('shim')),"
        " source_checkout() is None, str(w)]))\n"
    )
    # PYTHONPATH puts the installed copy ahead of the editable checkout
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                         env=dict(os.environ, PYTHONPATH=str(target)), check=True)
    mod, templates, shim, no_checkout, repacked = json.loads(res.stdout)
    assert mod.startswith(str(target))
    assert templates == str(target / "k8s_sql" / "_data" / "templates")
    assert shim == str(target / "k8s_sql" / "_data" / "shim")
    assert no_checkout
    original = {n for n in zipfile.ZipFile(wheel).namelist()}
    again = {n for n in zipfile.ZipFile(repacked).namelist()}
    assert again == original
    # and pip accepts the re-packed wheel
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(tmp_path / "site2"),
                    repacked], check=True, capture_output=True)
    assert (tmp_path / "site2" / "k8s_sql" / "_data" / "shim" / "Containerfile").is_file()


def _name(requirement: str) -> str:
    """A requirement's distribution name, normalized (PEP 503)."""
    return re.sub(r"[-_.]+", "-", re.split(r"[^A-Za-z0-9._-]", requirement, maxsplit=1)[0]).lower()


def test_build_stage_leaves_out_only_the_installers_dependencies(wheel, tmp_path):
    """The build stage's requirement list, computed by the Containerfile's own snippet from
    the wheel's metadata, is pyproject's dependencies minus INSTALLER_ONLY; every name in
    INSTALLER_ONLY is a dependency (a stale name would hide nothing)."""
    import tomllib

    ins = instructions(CONTAINERFILE.read_text())
    [skip] = [a.split("=", 1)[1].strip('"') for w, a in ins if w == "ARG" and a.startswith("INSTALLER_ONLY=")]
    run = next(a for w, a in ins if w == "RUN" and "INSTALLER_ONLY" in a)
    snippet = re.search(r"python3 -c '(.*?)' \"\$INSTALLER_ONLY\"", run).group(1)
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    res = subprocess.run([sys.executable, "-c", snippet, skip], capture_output=True, text=True, check=True,
                         env=dict(os.environ, PYTHONPATH=str(target)), cwd=tmp_path)
    got = [line for line in res.stdout.splitlines() if line.strip()]
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert {_name(s) for s in skip.split()} <= {_name(d) for d in deps}, skip
    expected = [d for d in deps if _name(d) not in {_name(s) for s in skip.split()}]
    assert sorted(map(_name, got)) == sorted(map(_name, expected)) and len(expected) == len(deps) - len(skip.split())


def test_shim_runs_without_the_installers_dependencies():
    """With the installer-only packages unimportable (as in the image), every module of the
    shim imports and ``k8s-sql shim serve --help`` works."""
    script = (
        "import sys, pkgutil, importlib\n"
        "for m in ('fabric', 'paramiko', 'invoke', 'kubernetes_validate', 'jsonschema'):\n"
        "    sys.modules[m] = None\n"
        "import k8s_sql.shim\n"
        "for info in pkgutil.walk_packages(k8s_sql.shim.__path__, 'k8s_sql.shim.'):\n"
        "    importlib.import_module(info.name)\n"
        "from k8s_sql.cli import main\n"
        "sys.argv = ['k8s-sql', 'shim', 'serve', '--help']\n"
        "main()\n"
    )
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=dict(os.environ, COLUMNS="120"))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Serve the etcd v3 API" in res.stdout
