"""The ``shim`` phase: build ``localhost/k8s-sql-shim:<version>`` on the node when needed.

No container runtime can run here, so ``podman``, ``buildah`` and ``ctr`` are stand-ins:
small Python scripts first on PATH that record their arguments and keep an image list in
a JSON state file. The stand-in ``podman build`` checks the build context the phase wrote
(a Containerfile and a real wheel of k8s-sql, built with pip) before "building".
Files go through ``LocalHost(root=tmp)``, a scratch root.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from k8s_sql import __version__
from k8s_sql.config import Cluster
from k8s_sql.errors import K8sSqlError
from k8s_sql.host import DryRunHost, LocalHost
from k8s_sql.phases.base import Context
from k8s_sql.phases.runner import run_phases
from k8s_sql.phases.shim import BUILD_DIR, CRIO_PIN_FILE, ShimImage, crio_pin_conf

REF = f"localhost/k8s-sql-shim:{__version__}"

STAND_IN = r'''#!{python}
import glob, json, os, sys, zipfile
tool = os.path.basename(sys.argv[0])
state_file = os.environ["RUNTIME_STATE"]
root = os.environ["NODE_ROOT"]
state = json.load(open(state_file))
args = sys.argv[1:]
state["calls"].append([tool] + args)
rc = 0
def on_node(p):
    return os.path.join(root, p.lstrip("/"))
if tool == "podman" and args[:2] == ["image", "exists"]:
    rc = 0 if args[2] in state["podman"] else 1
elif tool == "buildah" and args[:1] == ["inspect"]:
    rc = 0 if args[-1] in state["podman"] else 1
elif tool in ("podman", "buildah") and args[0] in ("build", "bud"):
    ctx = on_node(args[-1])
    cf = open(os.path.join(ctx, "Containerfile")).read()
    wheels = glob.glob(os.path.join(ctx, "dist", "k8s_sql-*.whl"))
    names = zipfile.ZipFile(wheels[0]).namelist() if len(wheels) == 1 else []
    if "ENTRYPOINT" not in cf or "k8s_sql/shim/http.py" not in names:
        print("bad build context", cf[:80], wheels, file=sys.stderr); rc = 1
    else:
        state["podman"].append(args[args.index("-t") + 1]); print("STEP 1/2: FROM python")
elif tool == "podman" and args[0] == "save":
    tar = on_node(args[args.index("-o") + 1]); ref = args[-1]
    open(tar, "w").write(ref)
elif tool == "ctr" and args[2:4] == ["images", "ls"] and "-q" in args:
    print("\n".join(state["containerd"]))
elif tool == "ctr" and args[2:4] == ["images", "ls"]:
    print("REF TYPE DIGEST SIZE PLATFORMS LABELS")
    for ref in state["containerd"]:
        if args[4:] in ([], ["name==" + ref]):
            print(ref, "application/vnd.oci.image.manifest.v1+json sha256:0 42.0MiB linux/amd64",
                  ",".join(state.get("labels", {{}}).get(ref, [])) or "-")
elif tool == "ctr" and args[2:4] == ["images", "label"] and args[4] in state["containerd"]:
    state.setdefault("labels", {{}}).setdefault(args[4], []).append(args[5])
elif tool == "systemctl" and args[:2] == ["is-active", "--quiet"]:
    rc = 0 if args[2] in state.get("active", []) else 3
elif tool == "systemctl" and args[0] == "restart":
    pass
elif tool == "ctr" and args[2:4] == ["images", "import"]:
    state["containerd"].append(open(on_node(args[4])).read())
else:
    print("unexpected", args, file=sys.stderr); rc = 2
json.dump(state, open(state_file, "w"))
sys.exit(rc)
'''


class Node:
    """A scratch root plus stand-in runtime CLIs and their state."""

    def __init__(self, tmp_path, monkeypatch, tools=("podman", "ctr")):
        self.root = tmp_path / "root"
        self.root.mkdir()
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        self.state_file = tmp_path / "state.json"
        self.state_file.write_text(json.dumps({"calls": [], "podman": [], "containerd": []}))
        for tool in tools:
            exe = self.bin / tool
            exe.write_text(STAND_IN.format(python=sys.executable))
            exe.chmod(0o755)
        # only the stand-ins and the basic tools (sh, rm); no real podman/buildah/ctr exist here anyway
        monkeypatch.setenv("PATH", f"{self.bin}:/usr/bin:/bin")
        monkeypatch.setenv("RUNTIME_STATE", str(self.state_file))
        monkeypatch.setenv("NODE_ROOT", str(self.root))

    @property
    def state(self) -> dict:
        return json.loads(self.state_file.read_text())

    def set_images(self, podman=(), containerd=()):
        s = self.state
        s["podman"], s["containerd"] = list(podman), list(containerd)
        self.state_file.write_text(json.dumps(s))

    def context(self, runtime="crio", dry_run=False, **shim) -> Context:
        cfg = Cluster()
        cfg.kubernetes.container_runtime = runtime
        for k, v in shim.items():
            setattr(cfg.shim, k, v)
        host = LocalHost(root=str(self.root))
        return Context(host=DryRunHost(host) if dry_run else host, config=cfg, dry_run=dry_run)


def test_image_present_is_a_no_op(tmp_path, monkeypatch):
    node = Node(tmp_path, monkeypatch)
    node.set_images(podman=[REF])
    pin = node.root / CRIO_PIN_FILE.lstrip("/")
    pin.parent.mkdir(parents=True)
    pin.write_text(crio_pin_conf(REF))
    assert ShimImage().plan(node.context()) == []
    assert node.state["calls"] == [["podman", "image", "exists", REF]]


def test_crio_builds_with_podman_when_absent(tmp_path, monkeypatch):
    node = Node(tmp_path, monkeypatch)
    ctx = node.context()
    assert run_phases([ShimImage()], ctx) == 2  # the build, the pin
    calls = node.state["calls"]
    build = [c for c in calls if c[1] == "build"]
    assert build == [["podman", "build", "--pull=missing", "-f", f"{BUILD_DIR}/Containerfile", "-t", REF, BUILD_DIR]]
    assert REF in node.state["podman"]
    ctx_dir = node.root / BUILD_DIR.lstrip("/")
    assert (ctx_dir / "Containerfile").read_bytes() == (
        __import__("k8s_sql.resources", fromlist=["x"]).data_dir("shim") / "Containerfile").read_bytes()
    assert [p.name for p in (ctx_dir / "dist").iterdir()] == [f"k8s_sql-{__version__}-py3-none-any.whl"]
    # second run: the image exists now, nothing to do
    calls_before = len(node.state["calls"])
    assert run_phases([ShimImage()], node.context()) == 0
    # plan and verify each ask the runtime once
    assert node.state["calls"][calls_before:] == [["podman", "image", "exists", REF]] * 2


def test_containerd_builds_then_imports_into_k8s_io(tmp_path, monkeypatch):
    node = Node(tmp_path, monkeypatch)
    assert run_phases([ShimImage()], node.context("containerd")) == 2
    tar = f"{BUILD_DIR}/image.tar"
    calls = [c for c in node.state["calls"] if c[3:5] != ["images", "ls"]]
    assert calls == [
        ["podman", "build", "--pull=missing", "-f", f"{BUILD_DIR}/Containerfile", "-t", REF, BUILD_DIR],
        ["podman", "save", "--format", "docker-archive", "-o", tar, REF],
        ["ctr", "-n", "k8s.io", "images", "import", tar],
        ["ctr", "-n", "k8s.io", "images", "label", REF, "io.cri-containerd.pinned=pinned"],
    ]
    assert node.state["containerd"] == [REF]
    assert node.state["labels"] == {REF: ["io.cri-containerd.pinned=pinned"]}
    assert run_phases([ShimImage()], node.context("containerd")) == 0
    assert not (node.root / tar.lstrip("/")).exists()  # the archive is removed afterwards


def test_dry_run_prints_the_build_and_runs_nothing(tmp_path, monkeypatch, capsys):
    node = Node(tmp_path, monkeypatch)
    ctx = node.context(dry_run=True)
    from rich.console import Console

    ctx.console = Console(width=200, force_terminal=False)
    assert run_phases([ShimImage()], ctx) == 2
    out = capsys.readouterr().out
    assert f"would build the shim image {REF} with podman for crio" in out
    assert f"podman build --pull=missing -f {BUILD_DIR}/Containerfile -t {REF} {BUILD_DIR}" in out
    assert [c[1] for c in node.state["calls"]] == ["image"]  # only the read-only check
    assert not (node.root / "var").exists()


def test_user_image_or_kine_builds_nothing(tmp_path, monkeypatch):
    node = Node(tmp_path, monkeypatch)
    assert ShimImage().plan(node.context(image="registry.example/k8s-sql-shim:1.0")) == []
    assert ShimImage().plan(node.context(kind="kine")) == []
    assert node.state["calls"] == []


def test_buildah_when_podman_is_missing(tmp_path, monkeypatch):
    node = Node(tmp_path, monkeypatch, tools=("buildah",))
    change = ShimImage().plan(node.context())[0]
    assert change.describe() == f"build the shim image {REF} with buildah for crio"
    assert f"buildah bud --pull -f {BUILD_DIR}/Containerfile -t {REF} {BUILD_DIR}" in change.preview(None)


def test_missing_podman_and_buildah_is_a_clear_error(tmp_path, monkeypatch):
    """Planned the same in a dry run and a real one (marked pending, so a dry run shows the
    whole plan); applying it is the clear error."""
    node = Node(tmp_path, monkeypatch, tools=())
    real, dry = ShimImage().plan(node.context()), ShimImage().plan(node.context(dry_run=True))
    assert [c.describe() for c in real] == [c.describe() for c in dry] == [
        f"build the shim image {REF} for crio (pending: after podman or buildah is installed "
        "(prereqs installs podman; or pass --shim-image))", f"write {CRIO_PIN_FILE} (0644)"]
    with pytest.raises(K8sSqlError) as err:
        run_phases([ShimImage()], node.context())
    assert "neither podman nor buildah is installed" in err.value.what
    assert "--shim-image" in err.value.hint
    # the command line: exit status 1, the message on stderr, nothing written
    res = subprocess.run([sys.executable, "-m", "k8s_sql", "init", "phase", "shim"], capture_output=True, text=True,
                         env=dict(os.environ, PATH=f"{node.bin}:/usr/bin:/bin"))
    assert res.returncode == 1, res.stdout + res.stderr
    assert "neither podman nor buildah is installed" in res.stdout + res.stderr


def test_crio_pins_the_image_and_restarts_a_running_crio(tmp_path, monkeypatch):
    """The kubelet's image garbage collector removes unused images that are not pinned, and
    the shim image cannot be pulled back: CRI-O gets pinned_images in a crio.conf.d drop-in
    (checked here with Python's TOML parser) and a running CRI-O is restarted to read it."""
    import tomllib

    node = Node(tmp_path, monkeypatch, tools=("podman", "systemctl"))
    node.set_images(podman=[REF])
    s = node.state
    s["active"] = ["crio"]
    node.state_file.write_text(json.dumps(s))
    assert run_phases([ShimImage()], node.context()) == 2
    conf = tomllib.loads((node.root / CRIO_PIN_FILE.lstrip("/")).read_text())
    assert conf == {"crio": {"image": {"pinned_images": [REF]}}}
    assert ["systemctl", "restart", "crio"] in node.state["calls"]
    assert run_phases([ShimImage()], node.context()) == 0


def test_unpinned_image_fails_verify(tmp_path, monkeypatch):
    """An image that is there but not pinned (containerd refused the label) is reported."""
    node = Node(tmp_path, monkeypatch)
    node.set_images(containerd=[REF])
    ctx = node.context("containerd")
    with pytest.raises(K8sSqlError, match="is not pinned in containerd"):
        ShimImage().verify(ctx)
