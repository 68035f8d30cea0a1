"""``k8s-sql migrate`` on a kubeadm control-plane node, end to end, with scratch paths: a
configuration whose paths (manifests, pki, patches, backups) are in a temporary directory,
its own throwaway PostgreSQL (prepared by the flow's ``pki`` and ``postgres`` phases), real
etcd 3.4 and real kube-apiserver v1.20.2 (the cached build of tests/kube).

The kubelet is a stand-in (no container runtime here): :class:`StandInKubelet` watches the
manifests directory and, like the kubelet with static pods, starts every container's
command of each manifest as a process (etcd, kube-apiserver, and the shim sidecar's
``k8s-sql shim serve``) and stops them when the manifest disappears or changes. Images,
volumes and probes are not interpreted: the processes see the host's files directly.

Covered: the plan and ``--dry-run`` (nothing changes); an interruption (SIGKILL while the
flow waits for etcd to stop) then a rerun that completes; every object keeps its
resourceVersion through kube-apiserver and an update with an old resourceVersion succeeds;
``migrate --rollback`` brings etcd and the unpatched kube-apiserver back with their data; one
chain that SIGKILLs the run as each phase begins and reruns it, then rolls back after the copy
committed, after etcd's manifest moved aside and after the sidecar patch, each time followed by
a working cluster on etcd and, once the datastore is dropped (README), a migrate that completes.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from ruamel.yaml import YAML

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "kube"))
sys.path.insert(0, str(HERE / "shim"))

from etcd_server import ETCD, free_port, make_tls  # noqa: E402
from kube import (ADVERTISE_ADDRESS, KUBEADM_MANIFEST, KubeApiserver, Kubectl, _get, ensure_binaries)  # noqa: E402
from kubepki import make_kube_pki  # noqa: E402
from pgcluster import TempPostgres  # noqa: E402

CACHED_BIN = Path("/var/cache/k8s-sql-tests/kubernetes-1.20.5+really1.20.2-1.1+deb12u1/bin")


@pytest.fixture(scope="module")
def kube_bin(tmp_path_factory) -> Path:
    """The cached kube-apiserver and kubectl, else built by build-kubernetes.sh."""
    if all(os.access(CACHED_BIN / n, os.X_OK) for n in ("kube-apiserver", "kubectl")):
        return CACHED_BIN
    return ensure_binaries(tmp_path_factory.getbasetemp() / "build-kubernetes.log")


class StandInKubelet(threading.Thread):
    """Runs the containers of the static pods in ``manifests`` as processes (see the module docstring)."""

    def __init__(self, manifests: Path, programs: dict[str, list[str]], logs: Path):
        super().__init__(daemon=True)
        self.manifests, self.programs, self.logs = manifests, programs, logs
        self.pods: dict[str, tuple[str, list[subprocess.Popen]]] = {}
        self.halt = threading.Event()
        self.starts: list[str] = []

    def run(self):
        while not self.halt.is_set():
            seen = {}
            for p in sorted(self.manifests.iterdir()) if self.manifests.is_dir() else []:
                if p.name.startswith(".") or not p.is_file():
                    continue
                seen[p.name] = hashlib.sha256(p.read_bytes()).hexdigest()
            for name in list(self.pods):
                if seen.get(name) != self.pods[name][0]:
                    self._stop_pod(name)
            for name, digest in seen.items():
                if name not in self.pods:
                    self._start(name, digest)
            self.halt.wait(0.3)
        for name in list(self.pods):
            self._stop_pod(name)

    def _start(self, name, digest):
        pod = YAML(typ="safe").load((self.manifests / name).read_text())
        procs = []
        for c in pod["spec"]["containers"]:
            argv = [str(a) for a in (c.get("command") or []) + (c.get("args") or [])]
            argv = self.programs[argv[0]] + argv[1:]
            log = open(self.logs / f"{name}.{c['name']}.{len(self.starts)}.log", "wb")
            procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT))
        self.starts.append(name)
        self.pods[name] = (digest, procs)

    def _stop_pod(self, name):
        procs = self.pods.pop(name)[1]
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop(self):
        self.halt.set()
        self.join(30)


def _write_yaml(path: Path, doc) -> None:
    y = YAML()
    with open(path, "w") as f:
        y.dump(doc, f)


@pytest.fixture
def node(kube_bin):
    """A scratch control-plane node: etcd and kube-apiserver manifests, a configuration, the stand-in kubelet."""
    base = Path(tempfile.mkdtemp(prefix="k8s-sql-migrate-node-"))
    os.chmod(base, 0o755)
    pg = TempPostgres().init().start()
    manifests = base / "manifests"
    manifests.mkdir()
    (base / "logs").mkdir()
    etcd_tls = make_tls(base / "etcd-pki", client_cn="kube-apiserver-etcd-client")
    client, peer, metrics = free_port(), free_port(), free_port()
    etcd_url = f"https://127.0.0.1:{client}"
    _write_yaml(manifests / "etcd.yaml", {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "etcd", "namespace": "kube-system"},
        "spec": {"containers": [{"name": "etcd", "image": "k8s.gcr.io/etcd:3.4.13-0", "command": [
            "etcd", "--name=cp1", f"--data-dir={base}/etcd-data", f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}", f"--listen-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-cluster=cp1=http://127.0.0.1:{peer}", f"--listen-metrics-urls=http://127.0.0.1:{metrics}",
            f"--cert-file={etcd_tls.cert_file}", f"--key-file={etcd_tls.key_file}",
            f"--trusted-ca-file={etcd_tls.ca_file}", "--client-cert-auth"]}]}})
    port = free_port()
    pki = make_kube_pki(base / "kube-pki", f"https://127.0.0.1:{port}", advertise_address=ADVERTISE_ADDRESS)

    class Etcd:
        endpoint, ca_file, cert_file, key_file = etcd_url, etcd_tls.ca_file, etcd_tls.client_cert_file, \
            etcd_tls.client_key_file
    flags = KubeApiserver(kube_bin / "kube-apiserver", pki, Etcd, port, base / "unused.log").flags
    pod = YAML().load(KUBEADM_MANIFEST.read_text())
    pod["spec"]["containers"][0]["command"] = ["kube-apiserver", *(f"--{k}={v}" for k, v in flags.items())]
    _write_yaml(manifests / "kube-apiserver.yaml", pod)
    config = base / "k8s-sql.yaml"
    config.write_text(
        "apiVersion: k8s-sql.io/v1alpha1\nkind: Cluster\nnode: {name: cp1, advertiseAddress: '127.0.0.1'}\n"
        f"paths: {{pkiDir: {base}/pki, backupDir: {base}/backup, patchesDir: {base}/patches, "
        f"manifestsDir: {manifests}, kubeadmConfig: {base}/kubeadm.yaml, postgresClients: {base}/postgres-clients, "
        f"kubeconfig: {base}/admin.conf, stateFile: {base}/state.json}}\n"
        f"postgres: {{configDir: {pg.config_dir}, dataDir: {pg.data_dir}, socketDir: {pg.socket_dir}, "
        f"port: {pg.port}, version: '{pg.major}'}}\n"
        f"shim: {{port: {free_port()}, metricsPort: {free_port()}, compactionInterval: '0', image: 'k8s-sql/shim:test'}}\n")
    kubelet = StandInKubelet(manifests, {"etcd": [ETCD], "kube-apiserver": [str(kube_bin / "kube-apiserver")],
                                         "k8s-sql": [sys.executable, "-m", "k8s_sql"]}, base / "logs")
    kubelet.start()
    kubectl = Kubectl(kube_bin / "kubectl", pki.admin_conf, base / "kubectl-cache")
    n = type("Node", (), dict(base=base, config=config, manifests=manifests, kubectl=kubectl, etcd_tls=etcd_tls,
                              kubelet=kubelet, pg=pg, url=f"https://127.0.0.1:{port}", pki=pki))
    try:
        yield n
    finally:
        kubelet.stop()
        pg.destroy()
        import shutil
        shutil.rmtree(base, ignore_errors=True)


def _ready(node, timeout=240):
    import ssl
    ctx = ssl.create_default_context(cafile=node.pki.path("ca.crt"))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _get(node.url + "/readyz", ctx) == (200, "ok"):
            return
        time.sleep(1)
    logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}" for p in sorted((node.base / "logs").iterdir()))
    raise AssertionError(f"kube-apiserver not ready:\n{logs}")


def _migrate(node, *extra, **kw):
    t = node.etcd_tls
    argv = [sys.executable, "-m", "k8s_sql", "migrate", "-c", str(node.config), "--cacert", t.ca_file,
            "--cert", t.client_cert_file, "--key", t.client_key_file, *extra]
    return subprocess.run(argv, capture_output=True, text=True, timeout=600, env=dict(os.environ, COLUMNS="200"), **kw)


def _rvs(kubectl):
    items = kubectl.json("get", "configmaps,secrets,namespaces", "--all-namespaces")["items"]
    return {f"{i['kind']}/{i['metadata'].get('namespace', '')}/{i['metadata']['name']}":
            i["metadata"]["resourceVersion"] for i in items}


def test_node_flow_dry_run_interrupt_rerun_and_rollback(node):
    _ready(node)
    k = node.kubectl
    k("create", "namespace", "moved")
    for i in range(8):
        k("-n", "moved", "create", "configmap", f"cm{i}", f"--from-literal=k=v{i}")
    k("-n", "moved", "label", "configmap", "cm2", "x=y")
    old = k.json("-n", "moved", "get", "configmap", "cm3")
    before = _rvs(k)
    manifests = {p.name: p.read_bytes() for p in node.manifests.iterdir()}

    # the plan, dry run: every phase named, nothing changed
    r = _migrate(node, "--dry-run")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "plan: migrate-check -> pki -> postgres -> migrate-snapshot" in r.stdout
    assert "would" in r.stdout and "dry run:" in r.stdout
    assert {p.name: p.read_bytes() for p in node.manifests.iterdir()} == manifests
    assert not (node.base / "backup" / "migrate" / "etcd-snapshot.db").exists()

    # interrupted while it waits for the kubelet to stop etcd, then run again
    proc = subprocess.Popen([sys.executable, "-m", "k8s_sql", "migrate", "-c", str(node.config), "--cacert",
                             node.etcd_tls.ca_file, "--cert", node.etcd_tls.client_cert_file, "--key",
                             node.etcd_tls.client_key_file], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    out = []
    for line in proc.stdout:
        out.append(line)
        if "[migrate-stop-etcd]" in line:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "".join(out)
    assert "verified:" in "".join(out)
    r = _migrate(node)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "[migrate-copy]" in r.stdout and "/readyz ok" in r.stdout, r.stdout
    assert not (node.manifests / "etcd.yaml").exists()
    assert (node.base / "backup" / "migrate" / "etcd.yaml").read_bytes() == manifests["etcd.yaml"]
    assert (node.base / "backup" / "migrate" / "etcd-snapshot.db").stat().st_size > 0
    assert (node.base / "etcd-data").is_dir()  # etcd's data directory is kept

    _ready(node)
    after = _rvs(k)
    assert all(after.get(key) == rv for key, rv in before.items()), (before, after)
    old["data"]["k"] = "after-migrate"
    assert "replaced" in k("replace", "-f", "-", input=json.dumps(old)).stdout
    # a second run finds nothing to do
    r = _migrate(node)
    assert r.returncode == 0 and "[migrate-copy]" in r.stdout and "would" not in r.stdout, r.stdout + r.stderr

    # rollback: the manifests exactly as they were; etcd answers with its data
    r = _migrate(node, "--rollback")
    assert r.returncode == 0, r.stdout + r.stderr
    assert {p.name: p.read_bytes() for p in node.manifests.iterdir()} == manifests
    _ready(node)
    assert _rvs(k) == before


def test_several_etcd_members_are_refused_with_the_order_to_follow(tmp_path):
    """A real two-member etcd 3.4 cluster (two stacked control planes): migrate refuses before
    changing anything and says what to do on which node, in which order."""
    ports = [(free_port(), free_port()) for _ in range(2)]
    cluster = ",".join(f"m{i}=http://127.0.0.1:{p}" for i, (_, p) in enumerate(ports))
    procs = []
    try:
        for i, (c, p) in enumerate(ports):
            procs.append(subprocess.Popen([
                ETCD, "--name", f"m{i}", "--data-dir", str(tmp_path / f"m{i}"),
                "--listen-client-urls", f"http://127.0.0.1:{c}", "--advertise-client-urls", f"http://127.0.0.1:{c}",
                "--listen-peer-urls", f"http://127.0.0.1:{p}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{p}",
                "--initial-cluster", cluster, "--initial-cluster-state", "new", "--log-level", "error",
                "--logger", "zap"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        config = tmp_path / "k8s-sql.yaml"
        config.write_text("apiVersion: k8s-sql.io/v1alpha1\nkind: Cluster\nnode: {name: cp1}\n"
                          f"paths: {{manifestsDir: {tmp_path}/manifests, backupDir: {tmp_path}/backup, "
                          f"stateFile: {tmp_path}/state.json}}\n")
        (tmp_path / "manifests").mkdir()
        deadline = time.monotonic() + 60
        while True:
            r = subprocess.run([sys.executable, "-m", "k8s_sql", "migrate", "-c", str(config), "--from-etcd",
                                f"http://127.0.0.1:{ports[0][0]}"], capture_output=True, text=True, timeout=120)
            if "members" in r.stderr or time.monotonic() > deadline:
                break
            time.sleep(1)  # the members are still electing a leader
        assert r.returncode == 1, r.stdout + r.stderr
        assert "etcd has 2 members: " in r.stderr and "m0 (http://127.0.0.1:" in r.stderr and "m1 (" in r.stderr
        assert "kubeadm reset" in r.stderr and "member remove" in r.stderr and "join --control-plane" in r.stderr
        assert "Traceback" not in r.stderr
        assert not (tmp_path / "backup").exists()  # nothing was done
    finally:
        for p in procs:
            p.terminate()
            p.wait(20)


def _run_until(node, marker: str) -> str:
    """Run ``k8s-sql migrate`` and SIGKILL it when it prints ``marker``; returns its output."""
    t = node.etcd_tls
    proc = subprocess.Popen([sys.executable, "-m", "k8s_sql", "migrate", "-c", str(node.config), "--cacert", t.ca_file,
                             "--cert", t.client_cert_file, "--key", t.client_key_file], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=dict(os.environ, COLUMNS="200"))
    out = []
    for line in proc.stdout:
        out.append(line)
        if marker in line:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "".join(out)
    return "".join(out)


def test_interrupted_after_kube_apiserver_stopped_then_rollback_then_migrate(node):
    """Killed as the copy starts (kube-apiserver already stopped): --rollback brings the
    cluster back on etcd with every resourceVersion; a later migrate then completes."""
    _ready(node)
    k = node.kubectl
    k("create", "namespace", "moved")
    for i in range(5):
        k("-n", "moved", "create", "configmap", f"cm{i}", f"--from-literal=k=v{i}")
    before = _rvs(k)
    manifests = {p.name: p.read_bytes() for p in node.manifests.iterdir()}
    _run_until(node, "[migrate-copy]")
    assert not (node.manifests / "kube-apiserver.yaml").exists()  # it had been stopped

    r = _migrate(node, "--rollback")
    assert r.returncode == 0, r.stdout + r.stderr
    assert {p.name: p.read_bytes() for p in node.manifests.iterdir()} == manifests
    _ready(node)
    assert _rvs(k) == before
    k("-n", "moved", "create", "configmap", "written-after-rollback")

    r = _migrate(node)
    assert r.returncode == 0, r.stdout + r.stderr
    _ready(node)
    after = _rvs(k)
    assert "ConfigMap/moved/written-after-rollback" in after
    assert all(after.get(key) == rv for key, rv in before.items())


def _drop_datastore(node) -> None:
    """README's step before migrating again after a rollback: drop the datastore's database."""
    node.pg.psql("DROP DATABASE kubernetes WITH (FORCE)")


def _assert_reached(node, phase: str) -> None:
    """What the node shows once the run got as far as ``phase``'s start (the earlier phases done)."""
    aside, manifests = node.base / "backup" / "migrate", node.manifests
    order = ("migrate-copy", "migrate-stop-etcd", "migrate-sidecar", "migrate-verify")
    if phase in order:  # kube-apiserver stopped
        assert (aside / "kube-apiserver.yaml").exists() and (aside / "etcd-snapshot.db").exists(), phase
    if phase in order[1:]:  # the copy committed
        assert (aside / "revisions.json").exists(), phase
    if phase in order[2:]:  # etcd stopped
        assert not (manifests / "etcd.yaml").exists() and (aside / "etcd.yaml").exists(), phase
    if phase in order[3:]:  # kube-apiserver back, on the shim
        assert "shim" in (manifests / "kube-apiserver.yaml").read_text(), phase


def test_killed_at_every_phase_then_rerun_and_rollback_where_it_is_hardest(node):
    """One chain: ``k8s-sql migrate`` (a real process) SIGKILLed as it begins each phase in
    turn, rerun each time, then a run that completes: kube-apiserver is ready on the shim and
    every object kept its resourceVersion. Then rollback where it is hardest: killed after the
    copy committed (as migrate-stop-etcd begins), after etcd's manifest moved aside (as
    migrate-sidecar begins), after the sidecar patch (as migrate-verify begins); each time
    ``migrate --rollback`` brings the cluster back on etcd with every resourceVersion, and,
    after the datastore is dropped as README says, a later migrate completes."""
    from k8s_sql.phases.migrate import MIGRATE_PHASES

    _ready(node)
    k = node.kubectl
    k("create", "namespace", "moved")
    for i in range(4):
        k("-n", "moved", "create", "configmap", f"cm{i}", f"--from-literal=k=v{i}")
    before = _rvs(k)
    manifests = {p.name: p.read_bytes() for p in node.manifests.iterdir()}

    for phase in MIGRATE_PHASES:
        out = _run_until(node, f"[{phase}]")
        assert "Traceback" not in out, out
        _assert_reached(node, phase)
    r = _migrate(node)
    assert r.returncode == 0 and "/readyz ok" in r.stdout, r.stdout + r.stderr
    _ready(node)
    after = _rvs(k)
    assert all(after.get(key) == rv for key, rv in before.items()), (before, after)

    r = _migrate(node, "--rollback")
    assert r.returncode == 0, r.stdout + r.stderr
    _ready(node)
    # the datastore still holds the first copy: refused before kube-apiserver is stopped
    r = _migrate(node)
    assert r.returncode == 1 and "already holds data" in r.stderr and "DROP DATABASE kubernetes" in r.stderr, \
        r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    assert {p.name: p.read_bytes() for p in node.manifests.iterdir()} == manifests
    _drop_datastore(node)
    for phase in ("migrate-stop-etcd", "migrate-sidecar", "migrate-verify"):
        _ready(node)
        assert _rvs(k) == before, phase
        _run_until(node, f"[{phase}]")
        _assert_reached(node, phase)
        r = _migrate(node, "--rollback")
        assert r.returncode == 0, phase + r.stdout + r.stderr
        assert {p.name: p.read_bytes() for p in node.manifests.iterdir()} == manifests, phase
        assert not (node.base / "patches" / "kube-apiserver+strategic.yaml").exists(), phase
        _drop_datastore(node)
    _ready(node)
    assert _rvs(k) == before  # on etcd again, as it was
    r = _migrate(node)
    assert r.returncode == 0 and "/readyz ok" in r.stdout, r.stdout + r.stderr
    _ready(node)
    after = _rvs(k)
    assert all(after.get(key) == rv for key, rv in before.items()), (before, after)
