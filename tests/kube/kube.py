"""Real Kubernetes components for the tests in this directory.

* :func:`ensure_binaries` — kube-apiserver, kube-controller-manager and kubectl v1.20.2, built
  by ``build-kubernetes.sh`` (cached; a cold machine builds them here).
* :class:`ShimDatastore` — the datastore as k8s-sql deploys it: ``k8s-sql init phase pki`` and
  ``init phase postgres`` on a throwaway PostgreSQL (the shim's role logs in with its client
  certificate over ``sslmode=verify-full``), then ``k8s-sql shim serve`` with exactly the
  command line of the kube-apiserver sidecar (mTLS on its etcd endpoint).
* :class:`EtcdDatastore` — etcd 3.4 with client-certificate auth, the reference.
* :class:`KubeApiserver` — kube-apiserver with the flags kubeadm 1.20 writes
  (``shared/fixtures/kubeadm-1.20/kube-apiserver.stacked.yaml``), paths and ports moved to a
  scratch directory and loopback.
* :class:`ControllerManager` — kube-controller-manager with the flags kubeadm 1.20 writes.
* :class:`Kubectl` — kubectl with an admin kubeconfig.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from ruamel.yaml import YAML

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "shim"))

from etcd_server import ETCDCTL, EtcdServer, free_port, make_tls  # noqa: E402
from kubepki import KubePki  # noqa: E402
from pgcluster import TempPostgres  # noqa: E402
from procs import stop_process  # noqa: E402

BUILD_SCRIPT = HERE / "build-kubernetes.sh"
#: kube-apiserver's static pod as kubeadm v1.20.2 wrote it (stacked etcd); see shared/fixtures/README.md.
KUBEADM_MANIFEST = HERE.parents[2] / "shared/fixtures/kubeadm-1.20/kube-apiserver.stacked.yaml"
KUBEADM_PKI = "/etc/kubernetes/pki"
#: kube-apiserver's --advertise-address: an address of TEST-NET-1 (RFC 5737) that nothing here
#: listens on and nothing dials; it is only published in the ``kubernetes`` Endpoints, which refuse
#: loopback addresses (kube-apiserver itself serves on 127.0.0.1, ``--bind-address``).
ADVERTISE_ADDRESS = "192.0.2.10"
#: Seconds a cold build may take before the fixture gives up (2 shared cores; see build-kubernetes.sh).
BUILD_TIMEOUT = 75 * 60


class BuildError(RuntimeError):
    """build-kubernetes.sh failed; the message carries the end of its output."""


def ensure_binaries(log_path: str | os.PathLike, kubelet: bool = False) -> Path:
    """The directory holding kube-apiserver, kube-controller-manager and kubectl (and kubelet
    when ``kubelet``: only the VM test runs one).

    Runs ``build-kubernetes.sh``, which returns at once when its cache is complete and builds
    otherwise (8 to 16 minutes on 2 shared cores). Its output goes to ``log_path``.

    Raises:
        BuildError: the script failed or timed out; the message has its last 60 lines.
    """
    with open(log_path, "w+") as log:  # read back through this handle: the path may be cleaned meanwhile
        # its own process group: a timeout or an interrupted run ends go build's children too
        proc = subprocess.Popen(["bash", str(BUILD_SCRIPT)] + (["kubelet"] if kubelet else []), stdout=subprocess.PIPE, stderr=log, text=True,
                                start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=BUILD_TIMEOUT)
            code = proc.returncode
        except BaseException as e:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            if not isinstance(e, subprocess.TimeoutExpired):
                raise
            out, code = "", None
        log.seek(0)
        tail = "\n".join(log.read().splitlines()[-60:])
    if code != 0:
        what = f"timed out after {BUILD_TIMEOUT} s" if code is None else f"exited with {code}"
        raise BuildError(f"{BUILD_SCRIPT.name} {what} (log: {log_path}); last lines:\n{tail}")
    bin_dir = Path(out.strip().splitlines()[-1])
    for name in ("kube-apiserver", "kube-controller-manager", "kubectl") + (("kubelet",) if kubelet else ()):
        if not os.access(bin_dir / name, os.X_OK):
            raise BuildError(f"{BUILD_SCRIPT.name} succeeded but {bin_dir / name} is missing; last lines:\n{tail}")
    return bin_dir


class Daemon:
    """A background process whose stdout and stderr go to ``log_path``."""

    def __init__(self, name: str, argv: list[str], log_path: str | os.PathLike):
        self.name, self.argv, self.log_path = name, argv, Path(log_path)
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Daemon":
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, SIGKILL after ``timeout`` s; safe to call twice."""
        stop_process(self.proc, timeout)

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def crash(self, lines: int = 24) -> str:
        """The start of a Go panic or fatal error in the log (what a crash says first), or ''."""
        text = self.log_tail(100_000).splitlines()
        for i, line in enumerate(text):
            if re.match(r"(panic:|fatal error:|\[signal )", line):
                return "\n".join(text[i:i + lines])
        return ""

    def wait_until(self, ready, what: str, timeout: float) -> None:
        """Poll ``ready()`` until true; raise with the log tail if the process exits or time runs out."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} before {what}:\n{self.log_tail()}")
            if ready():
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: no {what} after {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.3)


def _get(url: str, context: ssl.SSLContext | None = None, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, context=context, timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except OSError as e:
        return 0, str(e)


def metric(metrics_url: str, name: str) -> float | None:
    """The value of an unlabelled Prometheus metric at ``metrics_url/metrics`` (``None`` if absent)."""
    status, body = _get(metrics_url + "/metrics")
    if status != 200:
        return None
    m = re.search(rf"^{re.escape(name)} (\S+)$", body, re.M)
    return float(m.group(1)) if m else None


class _Datastore:
    """What kube-apiserver and etcdctl need of an etcd endpoint."""

    kind = ""
    endpoint = ca_file = cert_file = key_file = metrics_url = ""

    def etcdctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """etcdctl (API v3) with the kube-apiserver client certificate; text output (bytes that are
        not UTF-8 replaced). With ``check`` a non-zero exit is an AssertionError carrying its output."""
        argv = [ETCDCTL, "--endpoints", self.endpoint, "--cacert", self.ca_file, "--cert", self.cert_file,
                "--key", self.key_file, "--dial-timeout", "5s", "--command-timeout", "15s", *args]
        r = subprocess.run(argv, capture_output=True, encoding="utf-8", errors="replace", timeout=60,
                           env=dict(os.environ, ETCDCTL_API="3"))  # values are kube-apiserver's protobuf
        if check and r.returncode != 0:
            raise AssertionError(f"etcdctl {' '.join(args)} exited {r.returncode}: {r.stdout}{r.stderr}")
        return r

    def compact_revision(self) -> float | None:
        """``etcd_debugging_mvcc_compact_revision`` (etcd's name; the shim exports it too)."""
        return metric(self.metrics_url, "etcd_debugging_mvcc_compact_revision")


class ShimDatastore(_Datastore):
    """k8s-sql's datastore in a new 0755 directory under /tmp (PostgreSQL, running as postgres,
    must reach its key there; pytest's temp dirs are 0700): its own PostgreSQL (``init phase postgres`` reconfigures
    and reloads it), the datastore PKI of ``init phase pki``, and the shim started with the
    sidecar's command line (:func:`k8s_sql.kubeadm.sidecar.command_line`). The shim's own
    compaction is off (``shim.compactionInterval: 0``) so that compaction is kube-apiserver's."""

    kind = "shim"

    def __init__(self):
        self.base = Path(tempfile.mkdtemp(prefix="k8s-sql-kube-"))
        self.pg: TempPostgres | None = None
        self.daemon: Daemon | None = None

    def start(self) -> "ShimDatastore":
        from k8s_sql.config import load_file
        from k8s_sql.kubeadm import sidecar

        os.chmod(self.base, 0o755)
        self.pg = TempPostgres().init().start()
        b, pg = self.base, self.pg
        config = b / "k8s-sql.yaml"
        config.write_text(
            "apiVersion: k8s-sql.io/v1alpha1\nkind: Cluster\nnode: {name: cp1, advertiseAddress: '127.0.0.1'}\n"
            f"paths: {{pkiDir: {b}/pki, backupDir: {b}/backup, patchesDir: {b}/patches, "
            f"kubeadmConfig: {b}/kubeadm.yaml, postgresClients: {b}/postgres-clients, kubeconfig: {b}/admin.conf, "
            f"stateFile: {b}/state.json}}\n"
            f"postgres: {{configDir: {pg.config_dir}, dataDir: {pg.data_dir}, socketDir: {pg.socket_dir}, "
            f"port: {pg.port}, version: '{pg.major}'}}\n"
            f"shim: {{port: {free_port()}, metricsPort: {free_port()}, compactionInterval: '0'}}\n")
        for phase in ("pki", "postgres"):
            r = subprocess.run([sys.executable, "-m", "k8s_sql", "init", "phase", phase, "-c", str(config)],
                               capture_output=True, text=True, timeout=300)
            if r.returncode != 0:
                raise RuntimeError(f"k8s-sql init phase {phase} failed:\n{r.stdout}{r.stderr}")
        cfg = load_file(str(config))
        _, args = sidecar.command_line(cfg)
        self.args = args
        self.datastore_uri = sidecar.datastore_uri(cfg)
        pki = cfg.paths.pki_dir
        self.endpoint = f"https://127.0.0.1:{cfg.shim.port}"
        self.metrics_url = f"http://127.0.0.1:{cfg.shim.metrics_port}"
        self.ca_file = f"{pki}/ca.crt"
        self.cert_file = f"{pki}/apiserver-shim-client.crt"
        self.key_file = f"{pki}/apiserver-shim-client.key"
        self.daemon = Daemon("k8s-sql shim", [sys.executable, "-m", "k8s_sql", *args], b / "shim.log").start()
        self.daemon.wait_until(lambda: _get(self.metrics_url + "/health")[0] == 200, "200 from /health", 60)
        return self

    def restart(self) -> "ShimDatastore":
        """Stop the shim (SIGTERM) and start it again on the same port and database."""
        self.daemon.stop()
        self.daemon.start()
        self.daemon.wait_until(lambda: _get(self.metrics_url + "/health")[0] == 200, "200 from /health", 60)
        return self

    def stop(self) -> None:
        if self.daemon:
            self.daemon.stop()
        if self.pg:
            self.pg.destroy()
        shutil.rmtree(self.base, ignore_errors=True)

    def log_tail(self) -> str:
        return self.daemon.log_tail() if self.daemon else ""


class EtcdDatastore(_Datastore):
    """etcd 3.4 (Debian's) in ``base`` with a server certificate and ``--client-cert-auth``,
    as kubeadm runs its stacked etcd."""

    kind = "etcd"

    def __init__(self, base: str | os.PathLike):
        self.base = Path(base)
        self.server: EtcdServer | None = None

    def start(self) -> "EtcdDatastore":
        tls = make_tls(self.base / "pki", client_cn="kube-apiserver-etcd-client")
        self.server = EtcdServer(self.base, tls).start()
        self.endpoint, self.metrics_url = self.server.endpoint, self.server.metrics_url
        self.ca_file, self.cert_file, self.key_file = tls.ca_file, tls.client_cert_file, tls.client_key_file
        return self

    def stop(self) -> None:
        if self.server:
            self.server.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def log_tail(self) -> str:
        return self.server.log_tail() if self.server else ""


def kubeadm_apiserver_flags(manifest: str | os.PathLike = KUBEADM_MANIFEST) -> dict[str, str]:
    """``{flag: value}`` of the kube-apiserver command in a kubeadm static-pod manifest."""
    pod = YAML(typ="safe").load(Path(manifest).read_text())
    command = pod["spec"]["containers"][0]["command"]
    assert command[0] == "kube-apiserver", command[0]
    return dict(arg[2:].split("=", 1) for arg in command[1:])


class KubeApiserver(Daemon):
    """kube-apiserver with kubeadm's flags on ``datastore``.

    Changed from the manifest, and only these (``changed`` lists them): paths under
    /etc/kubernetes/pki point into ``pki.dir``; ``--advertise-address`` is :data:`ADVERTISE_ADDRESS`
    and ``--secure-port`` a free port; the four ``--etcd-*`` flags name the datastore's endpoint, CA
    and kube-apiserver client pair (what kubeadm writes for ``etcd.external``, as k8s-sql
    configures it); ``--bind-address=127.0.0.1`` is added so that nothing listens beyond
    loopback; ``extra`` adds or overrides flags (e.g. ``--etcd-compaction-interval``).
    ``changed`` names the flags whose value differs from kubeadm's beyond the pki directory.
    """

    def __init__(self, binary: Path, pki: KubePki, datastore: _Datastore, port: int, log_path: Path,
                 extra: dict[str, str] | None = None):
        flags = kubeadm_apiserver_flags()
        for k, v in flags.items():
            if v.startswith(KUBEADM_PKI + "/"):
                flags[k] = pki.path(v[len(KUBEADM_PKI) + 1:])
        before = dict(flags)
        flags.update({"advertise-address": ADVERTISE_ADDRESS, "secure-port": str(port), "bind-address": "127.0.0.1",
                      "etcd-servers": datastore.endpoint, "etcd-cafile": datastore.ca_file,
                      "etcd-certfile": datastore.cert_file, "etcd-keyfile": datastore.key_file})
        flags.update(extra or {})
        self.flags = flags
        self.changed = sorted(k for k in flags if before.get(k) != flags[k])
        self.url = f"https://127.0.0.1:{port}"
        self.pki = pki
        super().__init__("kube-apiserver", [str(binary), *(f"--{k}={v}" for k, v in flags.items())], log_path)

    def readyz(self) -> tuple[int, str]:
        """GET /readyz as an anonymous client (kubeadm's readiness probe does the same)."""
        ctx = ssl.create_default_context(cafile=self.pki.path("ca.crt"))
        return _get(self.url + "/readyz", ctx)

    def start(self, timeout: float = 240.0) -> "KubeApiserver":
        super().start()
        self.wait_until(lambda: self.readyz() == (200, "ok"), "200 ok from /readyz", timeout)
        return self


#: kube-controller-manager's flags as kubeadm 1.20 writes them
#: (cmd/kubeadm/app/phases/controlplane/manifests.go, getControllerManagerCommand; no pod subnet
#: set, cluster name "kubernetes"). ``{pki}`` is /etc/kubernetes/pki, ``{conf}`` controller-manager.conf.
KUBEADM_CONTROLLER_MANAGER_FLAGS = {
    "authentication-kubeconfig": "{conf}",
    "authorization-kubeconfig": "{conf}",
    "bind-address": "127.0.0.1",
    "client-ca-file": "{pki}/ca.crt",
    "cluster-name": "kubernetes",
    "cluster-signing-cert-file": "{pki}/ca.crt",
    "cluster-signing-key-file": "{pki}/ca.key",
    "controllers": "*,bootstrapsigner,tokencleaner",
    "kubeconfig": "{conf}",
    "leader-elect": "true",
    "port": "0",
    "requestheader-client-ca-file": "{pki}/front-proxy-ca.crt",
    "root-ca-file": "{pki}/ca.crt",
    "service-account-private-key-file": "{pki}/sa.key",
    "use-service-account-credentials": "true",
}


class ControllerManager(Daemon):
    """kube-controller-manager with kubeadm's flags; its secure port is a free loopback port
    (kubeadm leaves the default, 10257) so that runs side by side do not collide."""

    def __init__(self, binary: Path, pki: KubePki, log_path: Path):
        flags = {k: v.format(pki=pki.dir, conf=pki.controller_manager_conf)
                 for k, v in KUBEADM_CONTROLLER_MANAGER_FLAGS.items()}
        flags["secure-port"] = str(free_port())
        super().__init__("kube-controller-manager", [str(binary), *(f"--{k}={v}" for k, v in flags.items())],
                         log_path)


class Kubectl:
    """``kubectl`` with ``--kubeconfig`` = an admin kubeconfig (user kubernetes-admin, O=system:masters)."""

    def __init__(self, binary: Path, kubeconfig: str, cache_dir: str | os.PathLike):
        self.argv = [str(binary), "--kubeconfig", kubeconfig, "--cache-dir", str(cache_dir)]

    def __call__(self, *args: str, input: str | None = None, check: bool = True,
                 timeout: float = 90) -> subprocess.CompletedProcess:
        """Run kubectl; with ``check`` a non-zero exit is an AssertionError carrying its output."""
        r = subprocess.run([*self.argv, *args], input=input, capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} exited {r.returncode}:\n{r.stdout}{r.stderr}")
        return r

    def json(self, *args: str, **kw) -> dict:
        """``kubectl ... -o json``, parsed."""
        return json.loads(self(*args, "-o", "json", **kw).stdout)

    def popen(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([*self.argv, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def wait_for(self, check, what: str, timeout: float = 120.0, interval: float = 1.0):
        """Call ``check()`` until it returns something truthy (returned); AssertionError after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = check()
            if last:
                return last
            time.sleep(interval)
        raise AssertionError(f"no {what} after {timeout:.0f} s (last: {last!r})")
