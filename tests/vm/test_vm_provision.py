"""``vagrant up`` of the playground, for real in two Debian 12 VMs: ``vagrant/provision.sh``
as the Vagrantfile runs it, on a control-plane VM and a worker VM.

Vagrant needs a hypervisor plugin, but what it does for this playground is plain: a box with
a ``vagrant`` user (passwordless sudo), the hostname, a private network with a static
address, the checkout rsynced to ``/vagrant`` (the Vagrantfile's excludes), the playground
key its trigger makes in ``vagrant/.playground/``, then ``provision.sh`` uploaded to
``/tmp/vagrant-shell`` and run as root with the Vagrantfile's arguments. The test does those
steps itself (:func:`vagrant_box`, :func:`synced`) and runs the provisioners of both VMs
together (as libvirt does), then ``vagrant provision`` again on both. README's first command
is test_fresh_vm.py's. Both VMs boot from the cached image (tests/vm/build-image.sh) under qemu; qemu's user-mode network gives each its
NAT interface (10.0.2.15 in both, as with VirtualBox) and a UDP socket pair between the two
qemu processes is the private network (192.168.56.10 and .11, static, systemd-networkd).

Real: apt-get and dpkg with the kubelet's /etc/default/kubelet conffile (the bug of #14:
provision.sh writes it before the package comes), systemd units, Debian's PostgreSQL 15
with TLS, sudo, sshd, ssh-keyscan, the worker's wait loop over SSH, ``k8s-sql init`` and
``k8s-sql join`` over SSH from the worker to ``vagrant@192.168.56.10``.

Stand-ins, at the edge (what cannot be had here; tests/vm/standins.py), built by the test
and served from the host to the VMs over HTTPS under their real names (/etc/hosts and the
test's CA):
- pkgs.k8s.io and CRI-O's repository (download.opensuse.org): signed apt repositories of
  stand-in ``kubeadm``, ``kubelet``, ``kubectl``, ``kubernetes-cni``, ``cri-tools`` and
  ``cri-o`` packages (tests/vm/aptrepo.py: names, versions, dependencies, conffiles of the
  real ones). Their programs behave as standins.py says: ``kubeadm`` is the stand-in of
  tests/test_kubeadm_init.py (writes the kube-apiserver manifest with k8s-sql's
  ``+strategic`` patch merged, and admin.conf), and also makes a CA and a bootstrap token at
  ``init``, prints ``kubeadm join <advertiseAddress>:6443 --token … --discovery-token-ca-cert-hash
  sha256:<CA's SubjectPublicKeyInfo>`` for ``token create --print-join-command`` and writes
  kubelet.conf at ``join --config`` from its JoinConfiguration (keeping a copy of the discovery part), logging its arguments; ``kubectl`` answers ``/readyz`` with ``ok``
  once the kube-apiserver manifest exists, unless the test holds the API server down for
  non-root callers (a file in /run; the worker asks as ``vagrant``), and records
  ``apply``/``patch`` of flannel; ``crio`` listens on its socket and runs no container.
- flannel's manifest on github.com: a stand-in file (kubectl is a stand-in anyway).
- PyPI: a wheelhouse made on the host (``pip wheel`` of this checkout and hatchling) with
  ``no-index`` in the VMs' /etc/pip.conf.
- the shim image: docker.io (its Python base image) cannot be reached, so the control plane
  gets podman from Debian and a stand-in ``localhost/k8s-sql-shim:<version>`` before
  provisioning; the shim phase finds it and pins it (CRI-O's ``pinned_images``). The real
  image build is tested in test_fresh_vm.py and test_vm_kubelet.py.
What a real kubelet, kubeadm, CRI-O and flannel would do is not covered here.

Marked ``vm``; minutes of wall time with TCG (timings at the end of the run).
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import subprocess
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

import standins
from vm import Vm, VmError, free_port

from k8s_sql.config import Cluster
from k8s_sql.kubeadm import sidecar

pytestmark = [pytest.mark.vm, pytest.mark.vm_slow, pytest.mark.timeout(5400)]

ROOT = standins.ROOT
KUBE_VERSION = standins.KUBE_VERSION
CP_IP, WORKER_IP = "192.168.56.10", "192.168.56.11"
REPO_IP, NAMES, FLANNEL_URL_PATH = standins.REPO_IP, standins.NAMES, standins.FLANNEL_URL_PATH
KUBECTL_LOG, APISERVER_DOWN, TOKEN_FILE = standins.KUBECTL_LOG, standins.APISERVER_DOWN, standins.TOKEN_FILE
kubeadm_calls = standins.kubeadm_calls
@pytest.fixture(scope="module")
def repo_server(tmp_path_factory):
    """The stand-in repositories and flannel's manifest over HTTPS on the host."""
    server = standins.build_repos(tmp_path_factory.mktemp("playground-repo"), cp_ip=CP_IP)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def synced(tmp_path_factory, vm_timings) -> Path:
    """What the VMs see: the checkout at /vagrant as Vagrant's rsync leaves it, the key its
    trigger made in vagrant/.playground/, and the wheelhouse at /var/cache/k8s-sql-wheels;
    a raw disk (faster than SSH under TCG)."""
    out = tmp_path_factory.mktemp("synced")
    start = time.monotonic()
    wheels = standins.wheelhouse(out / "wheels")
    key = out / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "k8s-sql-playground", "-f", str(key)],
                   check=True)
    tar = standins.checkout_tar(out / "synced.tar", "vagrant", {
        f"vagrant/vagrant/.playground/{key.name}": key, f"vagrant/vagrant/.playground/{key.name}.pub":
        key.with_suffix(".pub"), "var/cache/k8s-sql-wheels": wheels})
    vm_timings.add("playground: wheelhouse and synced folder", time.monotonic() - start)
    return tar


class Node:
    """One playground VM: its name, private address, the Vm."""

    def __init__(self, name: str, ip: str, mac: str, vm: Vm):
        self.name, self.ip, self.mac, self.vm = name, ip, mac, vm

    def ssh(self, command: str, **kw) -> subprocess.CompletedProcess:
        return self.vm.ssh(command, **kw)


def vagrant_box(node: Node, repo_ca: bytes, vagrant_user: bool = True) -> None:
    """What the box and Vagrant give a VM before provisioning: the ``vagrant`` user with
    passwordless sudo (bento's boxes), the hostname (config.vm.hostname, with the 127.0.1.1
    line Vagrant's Debian guest plugin writes), the private network's static address on the
    second NIC, the synced folder; and the test's edge: the stand-in names, the test's CA
    (taken into the trust store when prereqs installs ca-certificates, as in conftest's
    booted_vm), pip's wheelhouse."""
    hosts = " ".join(NAMES)
    network = "" if node.mac is None else (
        f"printf '[Match]\\nMACAddress={node.mac}\\n\\n[Network]\\nAddress={node.ip}/24\\n' "
        ">/etc/systemd/network/10-private.network && systemctl restart systemd-networkd\n")
    node.vm.put("/usr/local/share/ca-certificates/k8s-sql-vm-tests.crt", repo_ca)
    node.ssh(f"""set -e
echo {node.name} >/etc/hostname && hostname {node.name}
sed -i 's/k8s-sql-vm/{node.name}/' /etc/hosts
echo '{REPO_IP} {hosts}' >>/etc/hosts
{network}tar -xf /dev/vdb -C /
printf '[global]\\nno-index = true\\nfind-links = /var/cache/k8s-sql-wheels\\n' >/etc/pip.conf
""", timeout=300)
    if vagrant_user:
        node.ssh("useradd -m -s /bin/bash vagrant && export DEBIAN_FRONTEND=noninteractive && "
                 "apt-get -o DPkg::Lock::Timeout=600 update -qq && "
                 "apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends sudo >/dev/null && "
                 "echo 'vagrant ALL=(ALL) NOPASSWD: ALL' >/etc/sudoers.d/vagrant && chmod 0440 /etc/sudoers.d/vagrant "
                 "&& sudo -u vagrant sudo -n true", timeout=1800)


def preload_shim_image(node: Node) -> str:
    """podman from Debian and a stand-in shim image under k8s-sql's reference (see the module doc)."""
    ref = Cluster().shim_image
    node.ssh("export DEBIAN_FRONTEND=noninteractive && apt-get -o DPkg::Lock::Timeout=600 update -qq && "
             "apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends podman >/dev/null && "
             "d=$(mktemp -d) && echo 'stand-in of the k8s-sql VM tests' >$d/README && "
             f"tar -C $d -cf - README | podman import -q - {shlex.quote(ref)} >/dev/null", timeout=2400)
    return ref


class Provision:
    """Runs provision.sh as Vagrant's shell provisioner does (uploaded to /tmp/vagrant-shell,
    run as root with the Vagrantfile's arguments); keeps each run's output."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.runs = 0

    def start(self, node: Node, *args: str) -> subprocess.Popen:
        node.vm.put("/tmp/vagrant-shell", (ROOT / "vagrant/provision.sh").read_bytes(), 0o755)
        self.runs += 1
        log = self.workdir / f"provision.{self.runs}.{node.name}.log"
        f = open(log, "w")
        proc = subprocess.Popen([*node.vm.ssh_argv(), "/tmp/vagrant-shell " + shlex.join(args)],
                                stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT)
        proc.log, proc.logfile, proc.started = log, f, time.monotonic()
        return proc

    @staticmethod
    def finish(proc: subprocess.Popen, timeout: float = 3600) -> tuple[int, str, float]:
        rc = proc.wait(timeout)
        proc.logfile.close()
        return rc, proc.log.read_text(), time.monotonic() - proc.started

    def __call__(self, node: Node, *args: str) -> tuple[int, str, float]:
        return self.finish(self.start(node, *args))


def boot_nodes(image, workdir: Path, repo_port: int, synced_tar: Path) -> list[Node]:
    """The two VMs, booted in parallel: the control plane and the worker linked by a UDP
    socket pair between their qemu processes (the private network)."""
    a, b = free_port(), free_port()
    specs = [("k8s-sql-cp", CP_IP, "52:54:00:56:00:10", (a, b)),
             ("k8s-sql-worker1", WORKER_IP, "52:54:00:56:00:11", (b, a))]
    nodes = []
    for name, ip, mac, ports in specs:
        extra = [
            "-netdev", f"socket,id=n1,udp=127.0.0.1:{ports[1]},localaddr=127.0.0.1:{ports[0]}",
            "-device", f"virtio-net-pci,netdev=n1,mac={mac},romfile="]
        vm = Vm(image, workdir / name, guestfwd=[(REPO_IP, 443, repo_port)], drives=[synced_tar], extra_args=extra)
        nodes.append(Node(name, ip, mac, vm))
    try:
        parallel(lambda n: n.vm.start(), nodes)
    except VmError:
        for n in nodes:
            n.vm.kill()
        raise
    return nodes


def parallel(fn, items) -> None:
    """``fn(item)`` for every item, each in a thread; raises the first exception."""
    errors: list[BaseException] = []

    def run(item) -> None:
        try:
            fn(item)
        except BaseException as e:  # noqa: BLE001 - raised below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in items]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


@pytest.fixture(scope="module")
def playground(vm_image, repo_server, synced, tmp_path_factory, vm_timings):
    """The VMs booted and set up as Vagrant would, podman and the stand-in shim image on the
    control plane; nothing provisioned yet. Powered off at the end."""
    workdir = tmp_path_factory.mktemp("playground")
    start = time.monotonic()
    try:
        cp, worker = boot_nodes(vm_image, workdir, repo_server.port, synced)
    except VmError as e:
        pytest.fail(str(e), pytrace=False)
    vm_timings.add("playground: boot two VMs", time.monotonic() - start)
    try:
        start = time.monotonic()

        def setup(n: Node) -> None:
            vagrant_box(n, repo_server.tls.ca_pem)
            if n is cp:
                preload_shim_image(n)

        parallel(setup, [cp, worker])
        vm_timings.add("playground: boxes set up (sudo, network, podman, shim image)", time.monotonic() - start)
        yield {"cp": cp, "worker": worker, "provision": Provision(workdir), "repo": repo_server}
    finally:
        parallel(lambda n: n.vm.stop(), [cp, worker])


def ok(rc: int, out: str, what: str) -> str:
    assert rc == 0, f"{what} exited {rc}; end of its output:\n" + "\n".join(out.splitlines()[-80:])
    return out


def vagrant_asks(cp: Node) -> list[str]:
    """The worker's /readyz questions in the control plane's kubectl log (as ``vagrant``)."""
    return [ln for ln in cp.ssh(f"cat {KUBECTL_LOG}").stdout.splitlines()
            if ln.startswith("vagrant: ") and "get --raw /readyz" in ln]


@pytest.fixture(scope="module")
def provisioned(playground, vm_timings):
    """``vagrant up``: ``provision.sh control-plane 192.168.56.10 v1.34.2 1`` and ``provision.sh
    worker 192.168.56.11 v1.34.2 192.168.56.10`` started together, as libvirt starts the
    VMs in parallel. Until the control plane is provisioned and the worker has asked
    /readyz over SSH twice more after that, the test holds the API server down as the
    worker sees it (a file in /run that the stand-in kubectl reads for non-root callers:
    the control plane's own post phase must see it ready); then it is released.

    Returns the outputs and exit codes, and what was seen while the API server was held down."""
    cp, worker = playground["cp"], playground["worker"]
    prov = playground["provision"]
    cp.ssh(f"install -m 0666 /dev/null {KUBECTL_LOG} && touch {APISERVER_DOWN}")
    cp_proc = prov.start(cp, "control-plane", CP_IP, f"v{KUBE_VERSION}", "1")  # the Vagrantfile's WORKERS
    worker_proc = prov.start(worker, "worker", WORKER_IP, f"v{KUBE_VERSION}", CP_IP)
    state = {"cp": prov.finish(cp_proc)}
    vm_timings.add("provision control plane", state["cp"][2])
    if state["cp"][0] != 0:
        worker_proc.kill()
        state["worker"] = prov.finish(worker_proc)
        return state
    asked_before = len(vagrant_asks(cp))
    deadline = time.monotonic() + 600
    while len(vagrant_asks(cp)) < asked_before + 2 and worker_proc.poll() is None and time.monotonic() < deadline:
        time.sleep(5)
    state["held"] = {"asked_while_held": len(vagrant_asks(cp)) - asked_before, "worker_exited": worker_proc.poll(),
                     "joined": worker.ssh("test -e /etc/kubernetes/kubelet.conf", check=False).returncode == 0,
                     "admin_conf": cp.ssh("ls /etc/kubernetes/admin.conf /home/vagrant/.kube/config", check=False)
                     .returncode == 0}
    cp.ssh(f"rm -f {APISERVER_DOWN}")
    state["worker"] = prov.finish(worker_proc)
    vm_timings.add("provision worker (from its start, beside the control plane)", state["worker"][2])
    return state


def test_control_plane_provisioned(provisioned, playground):
    """The control plane's provisioner exits 0: k8s-sql from /vagrant in /opt/k8s-sql, every
    init phase, kubeadm init run once with k8s-sql's configuration, the kubelet package's
    /etc/default/kubelet keeps provision.sh's --node-ip (no conffile prompt), flannel
    applied and patched to the private network, the admin kubeconfig for ``vagrant``. With a
    worker the control plane is not a single node: it keeps kubeadm's NoSchedule taint and
    gets no bridge network of k8s-sql's (flannel's is the pod network)."""
    cp = playground["cp"]
    rc, control_plane, _ = provisioned["cp"]
    ok(rc, control_plane, "provision.sh control-plane")
    assert cp.ssh("readlink /usr/local/bin/k8s-sql").stdout.strip() == "/opt/k8s-sql/bin/k8s-sql"
    for phase in ("preflight", "prereqs", "pki", "postgres", "shim", "kubeadm-config", "kubeadm-init", "post"):
        assert f"[{phase}]" in control_plane, control_plane
    inits = [c for c in kubeadm_calls(cp) if c[:1] == ["init"]]
    assert len(inits) == 1 and inits[0][1:3] == ["--config", "/etc/k8s-sql/kubeadm.yaml"], inits
    assert cp.ssh("cat /etc/default/kubelet").stdout == f"KUBELET_EXTRA_ARGS=--node-ip={CP_IP}\n"
    status = cp.ssh("dpkg-query -W -f '${Package} ${db:Status-Abbrev}\\n' kubeadm kubelet kubectl cri-o").stdout
    got = dict(line.split()[:2] for line in status.splitlines())
    assert got == {"cri-o": "ii", "kubeadm": "hi", "kubectl": "hi", "kubelet": "hi"}, status
    assert cp.ssh("dpkg --audit").stdout == ""
    manifest = cp.ssh("cat /etc/kubernetes/manifests/kube-apiserver.yaml").stdout
    assert f"name: {sidecar.CONTAINER_NAME}" in manifest and Cluster().shim_image in manifest, manifest
    kubectl = cp.ssh(f"cat {KUBECTL_LOG}").stdout
    assert "apply -f /tmp/kube-flannel.yml" in kubectl and "--iface-regex=^192" in kubectl, kubectl
    assert "taint nodes" not in kubectl, kubectl
    assert "singleNode: false" in cp.ssh("cat /etc/k8s-sql/cluster.yaml").stdout
    assert cp.ssh("test -e /etc/cni/net.d/99-k8s-sql-bridge.conflist", check=False).returncode != 0
    assert cp.ssh("stat -c '%U %a' /home/vagrant/.kube/config").stdout.strip() == "vagrant 600"
    assert cp.ssh("systemctl is-active postgresql@15-main crio").stdout.split() == ["active", "active"]
    pinned = cp.ssh("cat /etc/crio/crio.conf.d/10-k8s-sql-pinned-images.conf").stdout
    assert Cluster().shim_image in pinned
    assert FLANNEL_URL_PATH in "\n".join(playground["repo"].requests())


def test_worker_waited_for_the_api_server_and_joined(provisioned, playground):
    """The worker's provisioner exits 0 after waiting for /readyz (not only admin.conf): while
    the API server was held down it asked over SSH as vagrant and did not join; then
    ``kubeadm join --config`` ran once with a JoinConfiguration holding the control plane's
    endpoint, its token and the sha256 of its CA's public key (computed here from the CA
    certificate), removed after the join (it holds the token), and kubelet.conf points at
    the control plane."""
    cp, worker = playground["cp"], playground["worker"]
    ok(*provisioned["cp"][:2], "provision.sh control-plane")
    ok(*provisioned["worker"][:2], "provision.sh worker")
    held = provisioned["held"]
    assert held["admin_conf"] and held["asked_while_held"] >= 2, held
    assert not held["joined"] and held["worker_exited"] is None, held
    ca = x509.load_pem_x509_certificate(cp.ssh("cat /etc/kubernetes/pki/ca.crt").stdout.encode())
    spki = ca.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    token = cp.ssh(f"cat {TOKEN_FILE}").stdout.strip()
    assert re.fullmatch(r"[a-z0-9]{6}\.[a-z0-9]{16}", token), token
    joins = [c for c in kubeadm_calls(worker) if c[:1] == ["join"]]
    assert len(joins) == 1, joins
    assert joins[0][1] == "--config", joins
    assert worker.ssh(f"test -e {shlex.quote(joins[0][2])}", check=False).returncode != 0, "the token stays on disk"
    told = json.loads(worker.ssh(f"cat {standins.KUBEADM_JOINED}").stdout)
    assert told["apiServerEndpoint"] == f"{CP_IP}:6443", told
    assert told["token"] == token
    assert told["caCertHashes"] == ["sha256:" + hashlib.sha256(spki).hexdigest()], told
    assert told["nodeRegistration"]["name"] == "k8s-sql-worker1", told
    assert f"https://{CP_IP}:6443" in worker.ssh("cat /etc/kubernetes/kubelet.conf").stdout
    assert worker.ssh("cat /etc/default/kubelet").stdout == f"KUBELET_EXTRA_ARGS=--node-ip={WORKER_IP}\n"
    assert worker.ssh("dpkg --audit").stdout == ""
    assert any(c[:2] == ["token", "create"] for c in kubeadm_calls(cp))


def test_provisioning_again_changes_nothing(provisioned, playground, vm_timings):
    """``vagrant provision`` again, both VMs: both exit 0, no second kubeadm init or join,
    /etc/default/kubelet and the packages as they were, nothing half-configured."""
    cp, worker, prov = playground["cp"], playground["worker"], playground["provision"]
    ok(*provisioned["cp"][:2], "provision.sh control-plane")
    ok(*provisioned["worker"][:2], "provision.sh worker")
    before = {n.name: (len(kubeadm_calls(n)), n.ssh("dpkg-query -W -f '${Package} ${Version} ${db:Status-Abbrev}\\n'")
                       .stdout) for n in (cp, worker)}
    rc, out, seconds = prov(cp, "control-plane", CP_IP, f"v{KUBE_VERSION}", "1")
    vm_timings.add("provision control plane again", seconds)
    ok(rc, out, "second provision.sh control-plane")
    rc, out2, seconds = prov(worker, "worker", WORKER_IP, f"v{KUBE_VERSION}", CP_IP)
    vm_timings.add("provision worker again", seconds)
    ok(rc, out2, "second provision.sh worker")
    for n in (cp, worker):
        calls = kubeadm_calls(n)
        assert not any(c[:1] in (["init"], ["join"]) for c in calls[before[n.name][0]:]), calls
        assert n.ssh("dpkg-query -W -f '${Package} ${Version} ${db:Status-Abbrev}\\n'").stdout == before[n.name][1]
        assert n.ssh("dpkg --audit").stdout == ""
    assert cp.ssh("cat /etc/default/kubelet").stdout == f"KUBELET_EXTRA_ARGS=--node-ip={CP_IP}\n"
