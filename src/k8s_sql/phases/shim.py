"""Phase ``shim``: make the shim's container image available to the container runtime.

Nothing to do when the user names an image (``--shim-image`` / ``shim.image``) or runs
Kine (``shim.kind: kine``): the kubelet pulls those like any other image. Otherwise the
image is ``localhost/k8s-sql-shim:<version>``, which no registry has, so it is built on the
node unless the runtime already has it:

- present? CRI-O shares containers/storage with podman and buildah, so
  ``podman image exists REF`` (or ``buildah inspect --type image REF``) answers for it;
  containerd: ``ctr -n k8s.io images ls -q`` lists REF.
- build context: a node where k8s-sql was pip-installed has no source tree, so the phase
  puts together its own under ``/var/lib/k8s-sql/shim-build/``: ``shim/Containerfile``
  (installed as package data) and ``dist/<wheel>`` — a wheel of the running k8s-sql,
  made with ``pip wheel`` when it runs from a source checkout, otherwise re-packed from
  the installed files (what pip installed from the original wheel). The context is
  written through the :class:`~k8s_sql.host.Host`, so this works over SSH too.
- build: ``podman build`` (or ``buildah bud``); for containerd the image is then saved
  to a tar file and imported into the ``k8s.io`` namespace (``ctr images import``).
- pin: the kubelet's image garbage collector removes unused images under disk pressure,
  and this one could never be pulled back, so the API server (whose pod it is part of)
  could not start again. CRI-O: ``pinned_images`` in ``/etc/crio/crio.conf.d/`` (CRI-O
  reports the image as pinned to the kubelet, which then never removes it), and a restart
  of a running CRI-O; containerd: the label ``io.cri-containerd.pinned=pinned`` on the image
  (honoured by containerd ≥ 1.7; Debian 12's 1.6 keeps the label but does not pin).
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import io
import posixpath
import shlex
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from k8s_sql import __version__
from k8s_sql.errors import K8sSqlError
from k8s_sql.phases.base import Action, Change, Context, Phase, RemoveFile, WriteFile, file_change, pending
from k8s_sql.resources import data_dir

#: Where the build context is written on the node.
BUILD_DIR = "/var/lib/k8s-sql/shim-build"
DIST_NAME = "k8s-sql"
#: CRI-O's drop-in that pins the shim image, and containerd's label that does.
CRIO_PIN_FILE = "/etc/crio/crio.conf.d/10-k8s-sql-pinned-images.conf"
CONTAINERD_PIN_LABEL = "io.cri-containerd.pinned=pinned"


def crio_pin_conf(ref: str) -> str:
    """The CRI-O drop-in pinning ``ref`` (``[crio.image] pinned_images``, crio.conf(5))."""
    return ("# written by k8s-sql: the kubelet's image garbage collection must not remove the shim image,\n"
            "# which no registry has (it is built on this node)\n"
            f'[crio.image]\npinned_images = ["{ref}"]\n')


def containerd_pinned(ctx: Context, ref: str) -> bool:
    """Whether containerd's ``k8s.io`` namespace has ``ref`` with the pinned label
    (``ctr images ls name==REF``, whose LABELS column lists ``key=value`` pairs)."""
    if not ctx.host.which("ctr"):
        return False
    res = ctx.host.run(["ctr", "-n", "k8s.io", "images", "ls", f"name=={ref}"], check=False)
    return res.ok and any(line.split()[:1] == [ref] and CONTAINERD_PIN_LABEL in line.split()[-1].split(",")
                          for line in res.stdout.splitlines()[1:] if line.split())


def pin_changes(ctx: Context, ref: str) -> list[Change]:
    """What pins ``ref`` in the node's runtime (see the module doc); ``[]`` when it is."""
    host = ctx.host
    if ctx.config.kubernetes.container_runtime == "containerd":
        if containerd_pinned(ctx, ref):
            return []
        argv = ["ctr", "-n", "k8s.io", "images", "label", ref, CONTAINERD_PIN_LABEL]
        return [Action(f"pin {ref} in containerd (label {CONTAINERD_PIN_LABEL}) against image garbage collection",
                       lambda c: c.host.run(argv), detail=shlex.join(argv), argvs=[argv])]
    write = file_change(host, CRIO_PIN_FILE, crio_pin_conf(ref).encode(), 0o644)
    if write is None:
        return []
    changes: list[Change] = [write]
    if host.run(["systemctl", "is-active", "--quiet", "crio"], check=False).ok:
        argv = ["systemctl", "restart", "crio"]
        changes.append(Action("restart crio to read the pinned image (running containers keep running)",
                              lambda c: c.host.run(argv, timeout=300), detail=shlex.join(argv), argvs=[argv]))
    return changes


def image_present(ctx: Context, ref: str) -> bool:
    """Whether the node's container runtime already has image ``ref`` (read-only check;
    a missing CLI counts as "not present")."""
    host = ctx.host
    if ctx.config.kubernetes.container_runtime == "containerd":
        if not host.which("ctr"):
            return False
        res = host.run(["ctr", "-n", "k8s.io", "images", "ls", "-q"], check=False)
        return res.ok and ref in res.stdout.split()
    if host.which("podman"):
        return host.run(["podman", "image", "exists", ref], check=False).ok
    if host.which("buildah"):
        return host.run(["buildah", "inspect", "--type", "image", ref], check=False).ok
    return False


def builder(ctx: Context) -> str | None:
    """``podman`` or ``buildah``, whichever the node has (podman first), else ``None``."""
    for name in ("podman", "buildah"):
        if ctx.host.which(name):
            return name
    return None


def build_commands(tool: str, runtime: str, ref: str, context_dir: str = BUILD_DIR) -> list[list[str]]:
    """The commands that build ``ref`` from ``context_dir`` and hand it to ``runtime``."""
    containerfile = posixpath.join(context_dir, "Containerfile")
    if tool == "podman":
        cmds = [["podman", "build", "--pull=missing", "-f", containerfile, "-t", ref, context_dir]]
    else:
        cmds = [["buildah", "bud", "--pull", "-f", containerfile, "-t", ref, context_dir]]
    if runtime == "containerd":
        tar = posixpath.join(context_dir, "image.tar")
        if tool == "podman":
            cmds.append(["podman", "save", "--format", "docker-archive", "-o", tar, ref])
        else:
            cmds.append(["buildah", "push", ref, f"docker-archive:{tar}:{ref}"])
        cmds.append(["ctr", "-n", "k8s.io", "images", "import", tar])
    return cmds


def source_checkout() -> Path | None:
    """The project root when k8s-sql runs from a source checkout (has ``pyproject.toml``), else None."""
    root = Path(__file__).resolve().parents[3]
    if (root / "pyproject.toml").is_file() and (root / "src" / "k8s_sql").is_dir():
        return root
    return None


def make_wheel(dest: Path) -> Path:
    """Write a wheel of the running k8s-sql to ``dest`` and return its path.

    From a source checkout: ``pip wheel --no-deps`` (hatchling, as pyproject.toml says).
    Otherwise the installed files listed in the distribution's RECORD are re-packed into
    a wheel with a fresh RECORD (sha256, as PEP 427 wants).

    Raises:
        K8sSqlError: pip failed, or k8s-sql is not installed as a distribution.
    """
    dest.mkdir(parents=True, exist_ok=True)
    root = source_checkout()
    if root is not None:
        res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dest), str(root)],
                             capture_output=True, text=True)
        wheels = sorted(dest.glob("k8s_sql-*.whl"))
        if res.returncode != 0 or not wheels:
            raise K8sSqlError(f"cannot build a wheel of k8s-sql: {(res.stderr or res.stdout).strip()[-500:]}",
                              where=str(root), hint="run `pip wheel --no-deps . -w dist` there to see why")
        return wheels[-1]
    return repack_installed(dest)


def repack_installed(dest: Path) -> Path:
    """A wheel made from the installed k8s-sql files (see :func:`make_wheel`).

    Raises:
        K8sSqlError: no installed distribution, or it lists no files.
    """
    try:
        dist = importlib.metadata.distribution(DIST_NAME)
    except importlib.metadata.PackageNotFoundError:
        raise K8sSqlError("k8s-sql is not installed as a package, so no wheel can be made for the shim image",
                          hint="install it with pip, or pass --shim-image with a published image") from None
    version = dist.version
    info = f"k8s_sql-{version}.dist-info"
    skip = {f"{info}/{n}" for n in ("RECORD", "INSTALLER", "REQUESTED", "direct_url.json")}
    members = []
    for f in dist.files or []:
        name = str(f)
        if ".." in f.parts or "__pycache__" in f.parts or name in skip:
            continue
        if name.startswith(("k8s_sql/", f"{info}/")):
            members.append((name, Path(f.locate()).read_bytes()))
    if not any(n.startswith("k8s_sql/") for n, _ in members):
        raise K8sSqlError("the installed k8s-sql lists no package files", hint="reinstall k8s-sql with pip")
    path = dest / f"k8s_sql-{version}-py3-none-any.whl"
    record = io.StringIO()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            zf.writestr(name, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.write(f"{name},sha256={digest},{len(data)}\n")
        record.write(f"{info}/RECORD,,\n")
        zf.writestr(f"{info}/RECORD", record.getvalue())
    return path


def upload_context(ctx: Context, context_dir: str = BUILD_DIR) -> None:
    """Write the Containerfile and a fresh wheel to ``context_dir`` on the node (stale
    wheels in ``dist/`` are removed)."""
    host = ctx.host
    containerfile = (data_dir("shim") / "Containerfile").read_bytes()
    with tempfile.TemporaryDirectory(prefix="k8s-sql-wheel-") as tmp:
        wheel = make_wheel(Path(tmp))
        dist = posixpath.join(context_dir, "dist")
        for old in host.listdir(dist):
            if old != wheel.name and not host.is_dir(posixpath.join(dist, old)):
                RemoveFile(posixpath.join(dist, old)).apply(ctx)
        # through WriteFile, so that the context is recorded for reset (k8s_sql.state)
        WriteFile(posixpath.join(context_dir, "Containerfile"), containerfile, 0o644).apply(ctx)
        WriteFile(posixpath.join(dist, wheel.name), wheel.read_bytes(), 0o644).apply(ctx)


class ShimImage(Phase):
    """Builds ``localhost/k8s-sql-shim:<version>`` on the node when the runtime lacks it.

    Without podman or buildah on the node the build is planned all the same, marked
    pending (a dry run shows it like any other step); applying it then raises.

    Raises (from apply and verify):
        K8sSqlError: neither podman nor buildah is installed, a build command fails, or
            the image is still missing afterwards.
    """

    name = "shim"
    title = "Make the shim image available to the container runtime"

    def plan(self, ctx: Context) -> list[Change]:
        cfg = ctx.config
        ref = cfg.shim_image
        if cfg.shim.kind == "kine" or cfg.shim.image:
            ctx.console.print(f"  image {ref} is pulled by the kubelet; nothing to build")
            return []
        if image_present(ctx, ref):
            return pin_changes(ctx, ref)
        if builder(ctx) is None:
            build: list[Change] = [pending(
                f"build the shim image {ref} for {cfg.kubernetes.container_runtime}",
                "podman or buildah is installed (prereqs installs podman; or pass --shim-image)",
                self._plan_build, detail="\n".join(shlex.join(c) for c in build_commands(
                    "podman", cfg.kubernetes.container_runtime, ref)),
                argvs=build_commands("podman", cfg.kubernetes.container_runtime, ref))]
        else:
            build = self._plan_build(ctx)
        return build + pin_changes(ctx, ref)

    def _plan_build(self, ctx: Context) -> list[Change]:
        """The build with the node's podman or buildah.

        Raises:
            K8sSqlError: neither is installed.
        """
        cfg = ctx.config
        ref = cfg.shim_image
        tool = builder(ctx)
        if tool is None:
            raise K8sSqlError(f"neither podman nor buildah is installed, so the shim image {ref} cannot be built",
                              where=ctx.host.name,
                              hint="apt-get install podman (or buildah), or pass --shim-image with a published image")
        runtime = cfg.kubernetes.container_runtime
        cmds = build_commands(tool, runtime, ref)
        detail = (f"write {BUILD_DIR}/Containerfile and {BUILD_DIR}/dist/k8s_sql-{__version__}-*.whl, then\n"
                  + "\n".join(shlex.join(c) for c in cmds))

        def build(c: Context) -> None:
            upload_context(c)
            for argv in cmds:
                c.host.run(argv, stream=argv[1] in ("build", "bud"))
            if runtime == "containerd":
                c.host.remove(posixpath.join(BUILD_DIR, "image.tar"))  # the runtime has its own copy now

        return [Action(f"build the shim image {ref} with {tool} for {runtime}", build, detail, argvs=cmds)]

    def verify(self, ctx: Context) -> None:
        cfg = ctx.config
        if cfg.shim.kind == "kine" or cfg.shim.image:
            return
        if not image_present(ctx, cfg.shim_image):
            raise K8sSqlError(f"the container runtime ({cfg.kubernetes.container_runtime}) still has no image "
                              f"{cfg.shim_image}", where=ctx.host.name,
                              hint="look at the build output above; build it by hand as in shim/README.md")
        if pin_changes(ctx, cfg.shim_image):
            raise K8sSqlError(f"the image {cfg.shim_image} is not pinned in {cfg.kubernetes.container_runtime}",
                              where=ctx.host.name, hint="run `k8s-sql init phase shim` again")
