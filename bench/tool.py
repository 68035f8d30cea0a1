"""Build etcd's own benchmark tool (``tools/benchmark``) offline from Debian's packages.

The tool's source comes from Debian's etcd source package (``apt-get source --download-only
etcd``), its Go dependencies from ``golang-etcd-server-dev`` (``/usr/share/gocode``), and it
compiles with ``golang-go`` in GOPATH mode. The binary is cached under
``~/.cache/k8s-sql/bench/etcd-<source version>/benchmark``.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tarfile
import tempfile

CACHE = os.path.expanduser("~/.cache/k8s-sql/bench")
SRC_LIST = "/etc/apt/sources.list.d/k8s-sql-bench-src.sources"
GOCODE = "/usr/share/gocode"


def _run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(argv, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr[-2000:]}")
    return r


def etcd_source_version() -> str:
    """Upstream version of the installed etcd-server package, e.g. ``3.4.23``."""
    v = _run(["dpkg-query", "-W", "-f", "${Version}", "etcd-server"]).stdout.strip()
    return v.split(":")[-1].split("-")[0].split("+")[0]


def _have_deb_src() -> bool:
    for path in glob.glob("/etc/apt/sources.list") + glob.glob("/etc/apt/sources.list.d/*"):
        try:
            with open(path) as f:
                text = f.read()
        except OSError:
            continue
        if "deb-src" in text and "bookworm" in text:
            return True
    return False


def ensure_deb_src() -> None:
    """Add a ``deb-src`` entry for bookworm (our own file) when none exists, then apt-get update."""
    if _have_deb_src():
        return
    with open(SRC_LIST, "w") as f:
        f.write("Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm\nComponents: main\n"
                "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n")
    _run(["apt-get", "update", "-qq"])


def build_benchmark(log=print) -> str:
    """Path of a built ``benchmark`` binary for the installed etcd version (cached).

    Raises RuntimeError when apt-get source or go build fails.
    """
    version = etcd_source_version()
    out_dir = os.path.join(CACHE, f"etcd-{version}")
    binary = os.path.join(out_dir, "benchmark")
    if os.access(binary, os.X_OK):
        return binary
    os.makedirs(out_dir, exist_ok=True)
    log(f"building etcd {version} tools/benchmark (GOPATH mode, Debian sources)")
    ensure_deb_src()
    with tempfile.TemporaryDirectory(prefix="k8s-sql-bench-build-") as tmp:
        _run(["apt-get", "source", "--download-only", "etcd"], cwd=tmp)
        orig = glob.glob(os.path.join(tmp, "etcd_*.orig.tar.*"))
        if not orig:
            raise RuntimeError("apt-get source etcd gave no .orig tarball")
        with tarfile.open(orig[0]) as tf:
            members = [m for m in tf.getmembers() if "/tools/benchmark/" in m.name]
            tf.extractall(tmp, members=members)
        src = glob.glob(os.path.join(tmp, "*", "tools", "benchmark"))[0]
        gopath = os.path.join(tmp, "gopath")
        dest = os.path.join(gopath, "src", "go.etcd.io", "etcd", "tools", "benchmark")
        os.makedirs(os.path.dirname(dest))
        shutil.copytree(src, dest)
        env = dict(os.environ, GO111MODULE="off", GOPATH=f"{gopath}:{GOCODE}",
                   GOCACHE=os.path.join(CACHE, "gocache"), GOFLAGS="")
        _run(["go", "build", "-o", binary + ".tmp", "go.etcd.io/etcd/tools/benchmark"], cwd=gopath, env=env)
        os.replace(binary + ".tmp", binary)
    return binary
