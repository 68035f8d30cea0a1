"""``k8s-sql init`` through the shim phase in a fresh Debian 12 VM, then a real kubelet
v1.20.2 running the kube-apiserver static pod with k8s-sql's shim sidecar on Debian's
containerd 1.6 — the API server's data in PostgreSQL, through the shim, for real.

What runs for real in the VM (booted as in test_fresh_vm.py, over SSH through
``k8s-sql init --host root@127.0.0.1 --ssh-port N``):
- the phases preflight, prereqs, pki, postgres, shim and kubeadm-config: Debian's apt,
  dpkg, systemd, PostgreSQL 15, containerd 1.6 and runc, and podman with netavark
  (installed by prereqs), which builds ``localhost/k8s-sql-shim:<version>`` from
  shim/Containerfile and the wheel of this checkout (its ``pip install`` fetches the
  dependencies from PyPI), saves it and imports it into containerd's ``k8s.io``
  namespace, where the phase labels it pinned;
- kubelet v1.20.2 built from Debian's ``kubernetes`` source package
  (tests/kube/build-kubernetes.sh, ``CGO_ENABLED=0``), standalone: ``--pod-manifest-path``
  and no kubeconfig, on containerd's CRI plugin with the systemd cgroup driver prereqs
  configured. It is installed beside the stand-in kubelet package, not in it: the binary
  goes to /usr/local/bin/kubelet and a drop-in of the package's kubelet.service
  (``/etc/systemd/system/kubelet.service.d/90-k8s-sql-vm-test.conf``) runs it — the
  package is versioned 1.34.2 (kubernetes.version) and must not carry a 1.20 binary;
- the kube-apiserver static pod: kubeadm v1.20.2's manifest
  (``../shared/fixtures/kubeadm-1.20/kube-apiserver.stacked.yaml``, the flags as kubeadm
  writes them) with the etcd flags from the kubeadm configuration the kubeadm-config phase
  wrote and k8s-sql's rendered sidecar patch (``kube-apiserver+strategic.yaml``, as the
  phase wrote it) merged in; kube-apiserver v1.20.2 (same build) in its container, the
  shim as rendered: uid 65532, read-only root file system, verify-full to PostgreSQL.

Stand-ins, at the edge, because they cannot be had here:
- kubeadm: not built/run. What ``kubeadm init`` would do is done by the test the way the
  stand-in kubeadm of tests/test_kubeadm_init.py does it — the manifest above with the
  etcd.external flags and the ``+strategic`` patch applied by
  :func:`k8s_sql.kubeadm.manifest.apply_patch_file` (k8s-sql's strategic merge, not
  kubeadm's) — and kubeadm's certificates (tests/kube/kubepki.py, kubeadm 1.20's names and
  usages) are made on the host and copied in. So the kubeadm-init and post phases do not
  run, and the kubeadm configuration is for kubernetes.version 1.34.2 while the control
  plane is 1.20.2;
- pkgs.k8s.io: the signed local apt repository of tests/vm/aptrepo.py (stand-in kubeadm,
  kubectl, cri-tools programs; the kubelet package's binary is a stand-in too, see above);
- CRI-O: not covered, the runtime is Debian's containerd (``containerRuntime: containerd``);
- registry images (tests/vm/images.py): docker.io's ``python:3.11-slim-bookworm`` is a
  debootstrap root of Debian 12 with python3 loaded into podman under that name (so the
  shim build pulls nothing); ``k8s.gcr.io/kube-apiserver:v1.20.2`` is the built binary in an
  empty root; the pause image is kubernetes' pause.c compiled here, tagged as containerd's
  ``sandbox_image``. They reach the VM as a read-only raw disk (``/dev/vdb``).

Pinning: the phase puts ``io.cri-containerd.pinned=pinned`` on the image, and the test
checks it is there. Debian 12's containerd is 1.6.20, older than the CRI plugin's pinned
images (containerd PR #7944 in 1.7, backported to release/1.6 by #8720 after 1.6.20; the
label on imported images honoured only after #8867/#9382), and kubelet 1.20 predates CRI's
``pinned`` field (kubernetes PR #103299, 1.23) that its image GC honours: on this pair the
label is recorded but protects nothing. The test asserts the label, not the protection.

Marked ``vm``: minutes of wall time (TCG when KVM does not work); timings at the end of the run.
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import sys
import time
from pathlib import Path

import pytest

from k8s_sql import __version__
from k8s_sql.kubeadm import manifest, yamlio

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kube"))

import images  # noqa: E402
import kube  # noqa: E402  (tests/kube: build-kubernetes.sh)
import kubepki  # noqa: E402
from checks import Cli, ok, phase_blocks  # noqa: E402

# kubelet start to 2/2 ready, under TCG: the kube-apiserver liveness probe restarts it
# when the guest starves, so leave room for a few restarts
POD_WAIT = 1800

pytestmark = [pytest.mark.vm, pytest.mark.vm_slow, pytest.mark.timeout(5400)]

FIXTURE = Path(__file__).resolve().parents[3] / "shared/fixtures/kubeadm-1.20/kube-apiserver.stacked.yaml"
SHIM_REF = f"localhost/k8s-sql-shim:{__version__}"
KUBEADM_CONFIG = "/etc/k8s-sql/kubeadm.yaml"
PATCH = "/etc/k8s-sql/patches/kube-apiserver+strategic.yaml"
MANIFEST = "/etc/kubernetes/manifests/kube-apiserver.yaml"
STAGE = "/var/lib/k8s-sql-vm-test"  # where the images disk is unpacked in the VM (not k8s-sql's)
DROPIN = "/etc/systemd/system/kubelet.service.d/90-k8s-sql-vm-test.conf"
ADMIN_CERT = "/root/k8s-sql-vm-test-admin"  # the admin client certificate for curl (not k8s-sql's)
PHASES = ("preflight", "prereqs", "pki", "postgres", "shim", "kubeadm-config")
KUBELET_READ_ONLY = "http://127.0.0.1:10255"


@pytest.fixture(scope="module")
def kube_bin(tmp_path_factory, vm_timings) -> Path:
    """kube-apiserver and kubelet v1.20.2 (tests/kube/build-kubernetes.sh, cached)."""
    start = time.monotonic()
    try:
        path = kube.ensure_binaries(tmp_path_factory.getbasetemp() / "build-kubernetes.log", kubelet=True)
    except kube.BuildError as e:
        pytest.fail(str(e), pytrace=False)
    vm_timings.add("kubernetes binaries (build or cache)", time.monotonic() - start)
    assert os.access(path / "kubelet", os.X_OK), f"no kubelet in {path}"
    return path


@pytest.fixture(scope="module")
def bundle(kube_bin, tmp_path_factory, vm_timings) -> images.Bundle:
    pause_c = kube_bin.parent / "src" / "pause.c"
    start = time.monotonic()
    try:
        b = images.build_bundle(tmp_path_factory.mktemp("images"), kube_bin, pause_c)
    except images.ImageError as e:
        pytest.fail(str(e), pytrace=False)
    for name, seconds in b.timings.items():
        vm_timings.add(name, seconds)
    vm_timings.add("images total (build or cache)", time.monotonic() - start)
    return b


@pytest.fixture(scope="module")
def vm_drives(bundle) -> list[Path]:
    """The images disk, /dev/vdb in the VM (overrides conftest's empty list)."""
    return [bundle.disk]


#: The runtime this test runs the static pod on (CRI-O cannot be had here).
CONFIG = """\
apiVersion: k8s-sql.io/v1alpha1
kind: Cluster
kubernetes:
  containerRuntime: containerd
"""


@pytest.fixture(scope="module")
def cli(booted_vm):
    return Cli(booted_vm, booted_vm.vm.workdir, CONFIG)


def timed(vm_timings, name, fn):
    start = time.monotonic()
    out = fn()
    vm_timings.add(name, time.monotonic() - start)
    return out


def stand_in_kubeadm(vm, tmp: Path) -> dict:
    """What ``kubeadm init`` would write, made the way tests/test_kubeadm_init.py's stand-in
    does (see the module doc): kubeadm's PKI, and the kube-apiserver manifest of kubeadm
    1.20.2 with etcd.external's flags and k8s-sql's patch merged in. Returns the
    InitConfiguration."""
    docs = {d["kind"]: d for d in yamlio.load_all(vm.ssh(f"cat {KUBEADM_CONFIG}").stdout, KUBEADM_CONFIG)}
    init, cluster = docs["InitConfiguration"], docs["ClusterConfiguration"]
    ext = cluster["etcd"]["external"]
    address = init["localAPIEndpoint"]["advertiseAddress"]
    node = init["nodeRegistration"]["name"]
    text = FIXTURE.read_text()
    for old, new in (("--etcd-servers=https://127.0.0.1:2379", "--etcd-servers=" + ",".join(ext["endpoints"])),
                     ("/etc/kubernetes/pki/etcd/ca.crt", ext["caFile"]),
                     ("/etc/kubernetes/pki/apiserver-etcd-client.crt", ext["certFile"]),
                     ("/etc/kubernetes/pki/apiserver-etcd-client.key", ext["keyFile"]),
                     ("192.168.56.2", address)):
        assert old in text, old
        text = text.replace(old, new)
    pod = manifest.apply_patch_file(text, vm.ssh(f"cat {PATCH}").stdout, "stand-in kubeadm")
    pki = kubepki.make_kube_pki(tmp / "pki", "https://127.0.0.1:6443", node_name=node, advertise_address=address)
    for f in sorted(Path(pki.dir).iterdir()):
        if f.suffix in (".crt", ".key", ".pub"):
            vm.put(f"/etc/kubernetes/pki/{f.name}", f.read_bytes(), 0o600 if f.suffix == ".key" else 0o644)
    vm.put("/etc/kubernetes/admin.conf", Path(pki.admin_conf).read_bytes(), 0o600)
    # curl's client certificate for /readyz: the admin.conf user's, as kubectl would use it
    conf = yamlio.load(Path(pki.admin_conf).read_text(), "admin.conf")
    user = conf["users"][0]["user"]
    vm.put(f"{ADMIN_CERT}.crt", base64.b64decode(user["client-certificate-data"]), 0o600)
    vm.put(f"{ADMIN_CERT}.key", base64.b64decode(user["client-key-data"]), 0o600)
    vm.put(MANIFEST, yamlio.dump(pod).encode(), 0o600)
    return init


def kubelet_dropin(node: str, sandbox: str) -> str:
    """The drop-in that runs the real kubelet standalone (see the module doc)."""
    args = ["/usr/local/bin/kubelet", "--pod-manifest-path=/etc/kubernetes/manifests",
            "--container-runtime=remote", "--container-runtime-endpoint=unix:///run/containerd/containerd.sock",
            "--runtime-request-timeout=15m", "--cgroup-driver=systemd", f"--hostname-override={node}",
            f"--pod-infra-container-image={sandbox}", "--read-only-port=10255", "--fail-swap-on=false",
            "--v=2"]
    return ("# k8s-sql VM test: the real kubelet v1.20.2, standalone (no kubeconfig)\n"
            "[Service]\nExecStart=\nExecStart=" + " ".join(args) + "\n")


def pods(vm) -> list[dict]:
    res = vm.ssh(f"curl -sS --max-time 10 {KUBELET_READ_ONLY}/pods", check=False)
    if res.returncode != 0:
        return []
    return json.loads(res.stdout).get("items") or []


def apiserver_pod(vm) -> dict | None:
    return next((p for p in pods(vm) if p["metadata"]["name"].startswith("kube-apiserver-")), None)


def all_ready(pod: dict | None) -> bool:
    statuses = ((pod or {}).get("status") or {}).get("containerStatuses") or []
    return len(statuses) == 2 and all(s.get("ready") and "running" in (s.get("state") or {}) for s in statuses)


@pytest.fixture(scope="module")
def flow(cli, booted_vm, bundle, vm_timings, tmp_path_factory):
    """The whole flow on one VM (see the module doc); returns the outputs and facts the
    tests look at."""
    vm = booted_vm.vm
    facts: dict = {}
    res, seconds = cli("init", "--skip-phases", "shim,kubeadm-config,kubeadm-init,post")
    vm_timings.add("init preflight..postgres (fresh VM)", seconds)
    ok(res, "k8s-sql init (preflight..postgres)")

    def load_images():
        vm.ssh(f"mkdir -p {STAGE} && tar -xf /dev/vdb -C {STAGE}")
        vm.ssh(f"podman load -q -i {STAGE}/python-base.tar && rm {STAGE}/python-base.tar")
        vm.ssh(f"ctr -n k8s.io images import {STAGE}/pause.tar && ctr -n k8s.io images import "
               f"{STAGE}/kube-apiserver.tar && rm {STAGE}/pause.tar {STAGE}/kube-apiserver.tar")
        dump = vm.ssh("containerd config dump").stdout
        sandbox = next(line.split("=", 1)[1].strip().strip('"') for line in dump.splitlines()
                       if line.strip().startswith("sandbox_image"))
        if sandbox != images.PAUSE_REF:
            vm.ssh(f"ctr -n k8s.io images tag --force {images.PAUSE_REF} {shlex.quote(sandbox)}")
        return sandbox
    facts["sandbox"] = timed(vm_timings, "unpack and load images in the VM", load_images)

    res, seconds = cli("init", "--skip-phases", "kubeadm-init,post")
    vm_timings.add("init with shim (podman build, import, pin) + kubeadm-config", seconds)
    facts["shim_init"] = ok(res, "k8s-sql init (through the shim and kubeadm-config phases)")

    init = stand_in_kubeadm(vm, tmp_path_factory.mktemp("kubeadm"))
    facts["node"] = init["nodeRegistration"]["name"]
    vm.ssh(f"install -m 0755 {STAGE}/kubelet /usr/local/bin/kubelet && rm {STAGE}/kubelet")
    vm.put(DROPIN, kubelet_dropin(facts["node"], facts["sandbox"]).encode())
    start = time.monotonic()
    vm.ssh("systemctl daemon-reload && systemctl restart kubelet")
    deadline = start + POD_WAIT
    pod = None
    while time.monotonic() < deadline:
        pod = apiserver_pod(vm)
        if all_ready(pod):
            break
        time.sleep(5)
    vm_timings.add("kubelet start to pod 2/2 ready", time.monotonic() - start)
    if not all_ready(pod):
        journal = vm.ssh("journalctl -u kubelet --no-pager | tail -n 60", check=False).stdout
        ctrs = vm.ssh("ctr -n k8s.io containers ls; ctr -n k8s.io tasks ls", check=False).stdout
        pytest.fail(f"the kube-apiserver pod is not 2/2 ready after {POD_WAIT} s: "
                    f"{json.dumps((pod or {}).get('status'), indent=1)[:3000]}\n--- containers\n{ctrs}\n"
                    f"--- kubelet journal\n{journal}", pytrace=False)
    facts["pod"] = pod
    return facts


def container_ids(pod: dict) -> dict[str, str]:
    return {s["name"]: s["containerID"].split("://", 1)[1] for s in pod["status"]["containerStatuses"]}


def test_shim_phase_builds_on_the_base_image_and_pins(flow, booted_vm, bundle):
    """The shim phase built the image with podman on the stand-in Python base (the image's
    first layer is the base's), imported it into containerd's k8s.io namespace and labelled
    it pinned; the build context's image.tar is gone."""
    vm = booted_vm.vm
    blocks = phase_blocks(flow["shim_init"], PHASES)
    assert "podman" in blocks.get("shim", "") and SHIM_REF in blocks["shim"], blocks.get("shim")
    base = json.loads(vm.ssh(f"podman image inspect {images.PYTHON_REF}").stdout)[0]["RootFS"]["Layers"]
    shim = json.loads(vm.ssh(f"podman image inspect {SHIM_REF}").stdout)[0]
    assert shim["RootFS"]["Layers"][0] == base[0], (shim["RootFS"], base)
    assert shim["Config"]["User"] == "65532:65532"
    listing = vm.ssh(f"ctr -n k8s.io images ls name=={SHIM_REF}").stdout.splitlines()
    assert len(listing) == 2 and listing[1].split()[0] == SHIM_REF, listing
    assert "io.cri-containerd.pinned=pinned" in listing[1].split()[-1].split(","), listing
    assert vm.ssh("test -e /var/lib/k8s-sql/shim-build/image.tar", check=False).returncode != 0
    version = vm.ssh("containerd --version").stdout
    assert " 1.6." in version, f"containerd is no longer 1.6 ({version}): revisit the pinning note of this module"


def test_kubelet_runs_the_static_pod_with_the_sidecar(flow, booted_vm):
    """kubelet v1.20.2 (its /pods on the read-only port) runs kube-apiserver-<node> with
    both containers running and ready, the shim image the one the phase built, and the
    sidecar as the phase rendered it."""
    vm = booted_vm.vm
    assert vm.ssh("/usr/local/bin/kubelet --version").stdout.strip() == "Kubernetes v1.20.2"
    assert vm.ssh("systemctl is-active kubelet").stdout.strip() == "active"
    pod = flow["pod"]
    assert pod["metadata"]["name"] == f"kube-apiserver-{flow['node']}"
    statuses = {s["name"]: s for s in pod["status"]["containerStatuses"]}
    assert set(statuses) == {"kube-apiserver", "etcd-shim"}, statuses.keys()
    assert statuses["etcd-shim"]["image"].endswith(SHIM_REF), statuses["etcd-shim"]
    assert all(s["ready"] and "running" in s["state"] for s in statuses.values()), statuses
    rendered = yamlio.load(vm.ssh(f"cat {PATCH}").stdout, "patch")
    sidecar = next(c for c in rendered["spec"]["containers"] if c["name"] == "etcd-shim")
    running = next(c for c in pod["spec"]["containers"] if c["name"] == "etcd-shim")
    assert running["args"] == list(sidecar["args"]) and running["image"] == sidecar["image"]


def test_shim_runs_as_65532_with_a_read_only_root(flow, booted_vm):
    """The shim's process runs as uid/gid 65532 (its /proc status), its OCI spec has a
    read-only root, and writing to / inside it fails."""
    vm = booted_vm.vm
    cid = container_ids(flow["pod"])["etcd-shim"]
    spec = json.loads(vm.ssh(f"ctr -n k8s.io containers info {cid}").stdout)["Spec"]
    assert spec["root"].get("readonly") is True, spec["root"]
    assert (spec["process"]["user"]["uid"], spec["process"]["user"]["gid"]) == (65532, 65532)
    pid = vm.ssh(f"ctr -n k8s.io tasks ls | awk '$1 == \"{cid}\" {{print $2}}'").stdout.strip()
    status = vm.ssh(f"grep -E '^(Uid|Gid):' /proc/{pid}/status").stdout.split()
    assert status == ["Uid:", *["65532"] * 4, "Gid:", *["65532"] * 4], status
    write = vm.ssh(f"ctr -n k8s.io tasks exec --exec-id probe-{int(time.time())} {cid} "
                   "/opt/k8s-sql/bin/python3 -c \"open('/probe', 'w')\"", check=False)
    assert write.returncode != 0 and "Read-only file system" in write.stdout + write.stderr, write


def test_shim_reaches_postgres_with_verify_full(flow, booted_vm):
    """The running shim's datastore URI asks for verify-full, its PostgreSQL sessions are
    TLS ones of the certificate-only role, and the API server's objects are in its tables."""
    vm = booted_vm.vm
    cid = container_ids(flow["pod"])["etcd-shim"]
    args = json.loads(vm.ssh(f"ctr -n k8s.io containers info {cid}").stdout)["Spec"]["process"]["args"]
    assert any("sslmode=verify-full" in a for a in args), args
    sql = ("SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) "
           "WHERE a.usename = 'k8s_sql' AND s.ssl")
    tls_sessions = int(vm.ssh(f"runuser -u postgres -- psql -X -A -t -c \"{sql}\"").stdout.strip())
    plain = int(vm.ssh("runuser -u postgres -- psql -X -A -t -c \"SELECT count(*) FROM pg_stat_activity a "
                       "JOIN pg_stat_ssl s USING (pid) WHERE a.usename = 'k8s_sql' AND NOT s.ssl\"").stdout.strip())
    assert tls_sessions >= 1 and plain == 0, (tls_sessions, plain)
    key = vm.ssh("runuser -u postgres -- psql -X -A -t -d kubernetes -c \"SELECT convert_from(key, 'UTF8') "
                 "FROM kv WHERE key = convert_to('/registry/namespaces/default', 'UTF8')\"").stdout.strip()
    assert key == "/registry/namespaces/default"


def test_apiserver_ready_on_the_shim(flow, booted_vm):
    """kube-apiserver's /readyz (verbose, as the admin user of admin.conf) passes, its
    etcd check included — the etcd behind it being the shim."""
    vm = booted_vm.vm
    res = vm.ssh(f"curl -sS --max-time 20 --cacert /etc/kubernetes/pki/ca.crt --cert {ADMIN_CERT}.crt "
                 f"--key {ADMIN_CERT}.key 'https://127.0.0.1:6443/readyz?verbose'", check=False)
    assert "[+]etcd ok" in res.stdout and "readyz check passed" in res.stdout, res.stdout + res.stderr
    ns = vm.ssh(f"curl -sS --max-time 20 --cacert /etc/kubernetes/pki/ca.crt --cert {ADMIN_CERT}.crt "
                f"--key {ADMIN_CERT}.key https://127.0.0.1:6443/api/v1/namespaces/kube-system").stdout
    assert json.loads(ns)["metadata"]["name"] == "kube-system", ns


def test_second_init_changes_nothing(flow, cli, booted_vm, vm_timings):
    """init again with the pod running: every phase is up to date, the shim image is the
    same, and neither container was restarted or replaced."""
    vm = booted_vm.vm
    image_before = vm.ssh(f"ctr -n k8s.io images ls name=={SHIM_REF}").stdout
    res, seconds = cli("init", "--skip-phases", "kubeadm-init,post")
    vm_timings.add("second init (no-op)", seconds)
    blocks = phase_blocks(ok(res, "second k8s-sql init"), PHASES)
    for name in PHASES:
        assert "up to date" in blocks.get(name, ""), f"[{name}] planned changes:\n{blocks.get(name)}"
    assert vm.ssh(f"ctr -n k8s.io images ls name=={SHIM_REF}").stdout == image_before
    time.sleep(10)
    pod = apiserver_pod(vm)
    assert all_ready(pod), pod
    assert container_ids(pod) == container_ids(flow["pod"])
    assert all(s["restartCount"] == 0 for s in pod["status"]["containerStatuses"]), pod["status"]
