"""Container images for the real-kubelet VM test, built here from Debian's packages and
kubernetes' source, because no registry is reachable from the test's point of view:

- ``python-base``: stands in for docker.io's ``python:3.11-slim-bookworm``, the default of
  shim/Containerfile's ``PYTHON_IMAGE`` build argument: a ``debootstrap --variant=minbase``
  root of Debian 12 with ``python3``, ``python3-venv`` (ensurepip, so ``python3 -m venv``
  has pip) and ``ca-certificates``. Loaded into the VM's podman under docker.io's name, so
  the shim phase's ``podman build --pull=missing`` finds it and pulls nothing; its Python is
  /usr/bin/python3 (3.11) where docker.io's is /usr/local/bin/python3, which the
  Containerfile does not depend on. The CA bundle is the host's (``/etc/ssl/certs/
  ca-certificates.crt``): Debian's pip uses it, and where the host reaches PyPI through a
  TLS-intercepting egress proxy the image's ``pip install`` must trust that proxy's CA too.
- ``pause``: kubernetes' ``build/pause/linux/pause.c`` (the v1.20.2 tree of Debian's source
  package, kept by tests/kube/build-kubernetes.sh) compiled static with the host's gcc, as
  ``/pause`` run as 65535:65535 (kubernetes' build/pause/Dockerfile); tagged in the VM as
  containerd's ``sandbox_image``.
- ``kube-apiserver``: the v1.20.2 binary of tests/kube/build-kubernetes.sh as
  ``/usr/local/bin/kube-apiserver`` in an otherwise empty root (plus /tmp), named
  ``k8s.gcr.io/kube-apiserver:v1.20.2`` as kubeadm 1.20's manifest names it.

Images are written as ``docker save`` archives (manifest.json, config, one uncompressed
layer), which ``podman load`` and ``ctr images import`` both read. The slow parts (the
debootstrap root, the pause binary) are cached under ``$K8S_SQL_VM_CACHE``
(/var/cache/k8s-sql-tests/vm) in ``images-<hash>/``, <hash> of :data:`RECIPE`.

Host packages: debootstrap, debian-archive-keyring (as build-image.sh), gcc and libc6-dev
(static pause). Runs as root (debootstrap).
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

CACHE_ROOT = Path(os.environ.get("K8S_SQL_VM_CACHE", "/var/cache/k8s-sql-tests/vm"))
MIRROR = os.environ.get("K8S_SQL_VM_MIRROR", "http://deb.debian.org/debian")
#: shim/Containerfile's default PYTHON_IMAGE: the name the stand-in base image is loaded under.
PYTHON_REF = "docker.io/library/python:3.11-slim-bookworm"
APISERVER_REF = "k8s.gcr.io/kube-apiserver:v1.20.2"
PAUSE_REF = "k8s.gcr.io/pause:3.2"  # what kubelet 1.20 names; re-tagged to containerd's sandbox_image
#: Changing the recipe below (packages, pause flags) -> change this, and a new cache directory is built.
RECIPE = "bookworm minbase python3,python3-venv,ca-certificates; pause gcc -Os -static -DVERSION=v3.2; v1"
PYTHON_PACKAGES = "python3,python3-venv,ca-certificates"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


class ImageError(Exception):
    """An image could not be built; the message has the end of the tool's output."""


def cache_dir() -> Path:
    return CACHE_ROOT / f"images-{hashlib.sha256(RECIPE.encode()).hexdigest()[:12]}"


def _run(argv: list[str], what: str, **kw) -> subprocess.CompletedProcess:
    res = subprocess.run(argv, capture_output=True, text=True, **kw)
    if res.returncode != 0:
        raise ImageError(f"{what} failed (exit {res.returncode}): {' '.join(argv[:4])}…\n"
                         + "\n".join((res.stdout + res.stderr).splitlines()[-30:]))
    return res


def python_base_layer(timings: dict[str, float]) -> Path:
    """The cached layer tar of the stand-in Python base image (see the module doc); built
    with debootstrap when missing (minutes: it downloads from the Debian mirror)."""
    d = cache_dir()
    layer = d / "python-base.layer.tar"
    if layer.is_file():
        return layer
    d.mkdir(parents=True, exist_ok=True)
    with open(d / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if layer.is_file():
            return layer
        start = time.monotonic()
        root = d / "python-root"
        shutil.rmtree(root, ignore_errors=True)
        log = d / "debootstrap-python.log"
        with open(log, "w") as f:
            res = subprocess.run(["debootstrap", "--variant=minbase", f"--include={PYTHON_PACKAGES}",
                                  "--keyring=/usr/share/keyrings/debian-archive-keyring.gpg", "bookworm",
                                  str(root), MIRROR], stdout=f, stderr=subprocess.STDOUT)
        if res.returncode != 0:
            raise ImageError(f"debootstrap of the Python base failed; end of {log}:\n"
                             + "\n".join(log.read_text(errors="replace").splitlines()[-30:]))
        for m in ("proc", "sys", "dev/pts", "dev"):  # debootstrap may leave them mounted on failure paths
            subprocess.run(["umount", "-l", str(root / m)], capture_output=True)
        _run(["chroot", str(root), "apt-get", "clean"], "apt-get clean in the Python root")
        for sub in ("var/lib/apt/lists", "usr/share/doc", "usr/share/man", "usr/share/info", "var/log",
                    "var/cache/debconf"):
            p = root / sub
            if p.is_dir():
                for child in p.iterdir():
                    shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        shutil.copyfile(HOST_CA_BUNDLE, root / "etc/ssl/certs/ca-certificates.crt")
        (root / "etc/machine-id").write_text("")
        tmp = layer.with_suffix(".tmp")
        _run(["tar", "--numeric-owner", "--xattrs", "-C", str(root), "--exclude=./dev/*", "--exclude=./proc/*",
              "--exclude=./sys/*", "-cf", str(tmp), "."], "tar of the Python root")
        tmp.rename(layer)
        shutil.rmtree(root, ignore_errors=True)
        timings["python-base (debootstrap)"] = time.monotonic() - start
    return layer


def pause_binary(pause_c: Path) -> Path:
    """``pause`` compiled static from ``pause_c`` (cached); kubernetes' Makefile passes the
    version as ``-DVERSION``."""
    d = cache_dir()
    out = d / "pause"
    if out.is_file():
        return out
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / "pause.tmp"
    _run(["gcc", "-Os", "-Wall", "-Werror", "-static", "-DVERSION=v3.2", "-o", str(tmp), str(pause_c)],
         "gcc of pause.c (host packages gcc, libc6-dev)")
    _run(["strip", str(tmp)], "strip pause")
    tmp.rename(out)
    return out


def _file_layer(out: Path, files: dict[str, tuple[Path, int]], dirs: dict[str, int]) -> Path:
    """A layer tar of ``files`` (path in the image -> (host file, mode)) and ``dirs``
    (path -> mode), root-owned."""
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tf:
        seen = set()
        for path in sorted({*dirs, *(str(Path(p).parent) for p in files)}):
            parts = Path(path.lstrip("/")).parts
            for i in range(1, len(parts) + 1):
                sub = "/".join(parts[:i])
                if sub in seen:
                    continue
                seen.add(sub)
                ti = tarfile.TarInfo(sub)
                ti.type, ti.mode = tarfile.DIRTYPE, dirs.get("/" + sub, 0o755)
                tf.addfile(ti)
        for path, (src, mode) in files.items():
            ti = tf.gettarinfo(str(src), path.lstrip("/"))
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = "root"
            ti.mode = mode
            with open(src, "rb") as f:
                tf.addfile(ti, f)
    return out


def sha256_file(path: Path) -> str:
    """The sha256 of a file's content, in hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def image_config_json(diff_id: str, config: dict) -> bytes:
    """The OCI/Docker image configuration of a one-layer amd64 image: ``diff_id`` is the
    layer's uncompressed sha256 (hex), ``config`` its ``config`` object."""
    return json.dumps({
        "architecture": "amd64", "os": "linux", "created": "2026-01-01T00:00:00Z", "config": config,
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
        "history": [{"created": "2026-01-01T00:00:00Z", "created_by": "k8s-sql VM tests (tests/vm/images.py)"}],
    }, sort_keys=True).encode()


def docker_archive(out: Path, ref: str, layer: Path, config: dict) -> Path:
    """A ``docker save`` archive of one image ``ref`` with one uncompressed ``layer`` and
    the image ``config`` (the OCI/Docker image config's ``config`` object: Env, Entrypoint,
    Cmd, User…)."""
    diff_id = sha256_file(layer)
    image_config = image_config_json(diff_id, config)
    config_name = hashlib.sha256(image_config).hexdigest() + ".json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [ref], "Layers": [f"{diff_id}/layer.tar"]}]).encode()
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in ((config_name, image_config), ("manifest.json", manifest)):
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode = len(data), 0o644
            tf.addfile(ti, io.BytesIO(data))
        ti = tarfile.TarInfo(diff_id)
        ti.type, ti.mode = tarfile.DIRTYPE, 0o755
        tf.addfile(ti)
        tf.add(str(layer), f"{diff_id}/layer.tar")
    return out


def registry_layout(root: Path, repository: str, tag: str, layer: Path, config: dict) -> str:
    """An image with one uncompressed ``layer`` and the image ``config`` (as
    :func:`docker_archive`) laid out for a static registry server under ``root``: the OCI
    manifest at ``v2/<repository>/manifests/<tag>`` (and at its digest), config and layer
    at ``v2/<repository>/blobs/sha256:<digest>`` — the paths of the registry API's GET
    requests (distribution-spec ``/v2/<name>/manifests/<reference>``, ``/v2/<name>/blobs/<digest>``).
    The layer is hard-linked (or copied). Returns the manifest's digest (``sha256:…``)."""
    base = root / "v2" / repository
    (base / "manifests").mkdir(parents=True, exist_ok=True)
    (base / "blobs").mkdir(parents=True, exist_ok=True)
    layer_digest = sha256_file(layer)
    image_config = image_config_json(layer_digest, config)
    config_digest = hashlib.sha256(image_config).hexdigest()
    (base / "blobs" / f"sha256:{config_digest}").write_bytes(image_config)
    blob = base / "blobs" / f"sha256:{layer_digest}"
    if not blob.exists():
        try:
            os.link(layer, blob)
        except OSError:
            shutil.copyfile(layer, blob)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": f"sha256:{config_digest}",
                   "size": len(image_config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": f"sha256:{layer_digest}",
                    "size": layer.stat().st_size}],
    }, sort_keys=True).encode()
    digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    for name in (tag, digest):
        (base / "manifests" / name).write_bytes(manifest)
    return digest


#: The media type the stand-in registry serves manifests with (aptrepo.RepoServer).
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"

PYTHON_CONFIG = {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"],
                 "Cmd": ["python3"]}


@dataclass
class Bundle:
    """What goes into the VM, as one tar file attached as a raw disk (``tar -xf /dev/vdb``):
    ``python-base.tar``, ``pause.tar``, ``kube-apiserver.tar`` (docker archives) and the
    ``kubelet`` binary. ``timings``: seconds of the steps that ran (cached ones are absent)."""

    disk: Path
    members: list[str]
    timings: dict[str, float]


def build_bundle(out: Path, kube_bin: Path, pause_c: Path) -> Bundle:
    """Build (or take from the cache) the images and put them with ``kube_bin/kubelet`` in
    ``out/images.disk``.

    Raises:
        ImageError: debootstrap, gcc or tar failed.
    """
    timings: dict[str, float] = {}
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    base = python_base_layer(timings)
    pause = pause_binary(pause_c)
    arch = {}
    arch["python-base.tar"] = docker_archive(out / "python-base.tar", PYTHON_REF, base, PYTHON_CONFIG)
    arch["pause.tar"] = docker_archive(out / "pause.tar", PAUSE_REF, _file_layer(
        out / "pause.layer.tar", {"/pause": (pause, 0o755)}, {}), {"Entrypoint": ["/pause"], "User": "65535:65535"})
    arch["kube-apiserver.tar"] = docker_archive(out / "kube-apiserver.tar", APISERVER_REF, _file_layer(
        out / "kube-apiserver.layer.tar", {"/usr/local/bin/kube-apiserver": (kube_bin / "kube-apiserver", 0o755)},
        {"/tmp": 0o1777}), {"Env": ["PATH=/usr/local/bin:/usr/bin:/bin"]})
    disk = out / "images.disk"
    with tarfile.open(disk, "w", format=tarfile.PAX_FORMAT) as tf:
        for name, path in arch.items():
            tf.add(str(path), name)
        tf.add(str(kube_bin / "kubelet"), "kubelet")
    size = disk.stat().st_size
    with open(disk, "ab") as f:  # a whole number of sectors for the block device
        f.write(b"\0" * (-size % 4096))
    for p in (*arch.values(), out / "pause.layer.tar", out / "kube-apiserver.layer.tar"):
        p.unlink()
    timings["images bundle (archives + disk)"] = time.monotonic() - start - sum(timings.values())
    return Bundle(disk, [*arch, "kubelet"], timings)
