"""Stand-ins for what the VM tests cannot reach (see each test module's docstring): signed
apt repositories of pkgs.k8s.io's and CRI-O's packages whose ``kubeadm``, ``kubectl`` and
``crio`` do what a provisioning flow needs of them, flannel's manifest, and PyPI as a
wheelhouse; all served from the host under their real names (``/etc/hosts`` in the VM and
the test's CA, see aptrepo.py).

The stand-in ``kubeadm`` logs its arguments (one JSON list per line, :data:`KUBEADM_LOG`).
``init`` writes the kube-apiserver manifest of kubeadm 1.34 with the etcd.external flags
of k8s-sql's configuration and k8s-sql's ``+strategic`` patch merged
(:func:`k8s_sql.kubeadm.manifest.apply_patch_file`, not kubeadm's own merge), a CA, a
bootstrap token and admin.conf; ``token create --print-join-command`` prints the join
command with the sha256 of the CA's public key; ``join`` writes kubelet.conf; ``reset``
removes what kubeadm's reset removes. ``kubectl`` answers ``/readyz`` with ``ok`` once the
kube-apiserver manifest exists (unless :data:`APISERVER_DOWN` holds it down for non-root
callers), reports the node Ready and records what it is asked. ``crio`` is a service that
listens on CRI-O's socket and runs no container.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

import aptrepo

ROOT = Path(__file__).resolve().parents[2]
KUBE_VERSION = "1.34.2"
#: The guest address qemu forwards to the host's repository server (port 443).
REPO_IP = "10.0.2.100"
#: The names the stand-in server answers for (prereqs', provision.sh's and the Vagrantfile's URLs).
NAMES = [aptrepo.HOSTNAME, "download.opensuse.org", "github.com", "registry-1.docker.io"]
FLANNEL_URL_PATH = "flannel-io/flannel/releases/download/v0.26.7/kube-flannel.yml"

KUBEADM_LOG = "/var/log/kubeadm-stand-in.log"
#: The stand-in kubeadm's copy of the discovery of its last ``join --config`` (JSON).
KUBEADM_JOINED = "/var/log/kubeadm-stand-in.join.json"
KUBECTL_LOG = "/var/log/kubectl-stand-in.log"
APISERVER_DOWN = "/run/kubectl-stand-in.apiserver-down"
TOKEN_FILE = "/etc/kubernetes/kubeadm-stand-in.token"

KUBEADM = r'''#!/opt/k8s-sql/bin/python3
# Stand-in for kubeadm {tag} (k8s-sql VM tests): what the provisioning flow needs of it.
import datetime, hashlib, json, os, secrets, sys
args = sys.argv[1:]
with open("{log}", "a") as log:
    log.write(json.dumps(args) + "\n")
if args[:1] in (["version"], ["--version"]):
    print("kubeadm version: {tag}"); sys.exit(0)
PKI, TOKEN, ENDPOINT = "/etc/kubernetes/pki", "{token}", "/etc/kubernetes/kubeadm-stand-in.endpoint"

def ca_hash():
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    cert = x509.load_pem_x509_certificate(open(PKI + "/ca.crt", "rb").read())
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(spki).hexdigest()

if args[:1] == ["init"] and "phase" not in args:
    from ruamel.yaml import YAML
    from k8s_sql.kubeadm import manifest, yamlio
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    docs = {{d["kind"]: d for d in YAML(typ="safe").load_all(open(args[args.index("--config") + 1])) if d}}
    init, cluster = docs["InitConfiguration"], docs["ClusterConfiguration"]
    ext = cluster["etcd"]["external"]
    text = open("/usr/share/kubeadm-stand-in/kube-apiserver.yaml").read()
    for old, new in (("--etcd-servers=https://127.0.0.1:2379", "--etcd-servers=" + ",".join(ext["endpoints"])),
                     ("/etc/kubernetes/pki/etcd/ca.crt", ext["caFile"]),
                     ("/etc/kubernetes/pki/apiserver-etcd-client.crt", ext["certFile"]),
                     ("/etc/kubernetes/pki/apiserver-etcd-client.key", ext["keyFile"])):
        text = text.replace(old, new)
    patch = open(os.path.join(init["patches"]["directory"], "kube-apiserver+strategic.yaml")).read()
    os.makedirs("/etc/kubernetes/manifests", exist_ok=True)
    with open("/etc/kubernetes/manifests/kube-apiserver.yaml", "w") as f:
        f.write(yamlio.dump(manifest.apply_patch_file(text, patch, "stand-in")))
    os.makedirs(PKI, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "kubernetes")])
    now = datetime.datetime.now(datetime.timezone.utc)
    ca = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now)
          .not_valid_after(now + datetime.timedelta(days=3650))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(key, hashes.SHA256()))
    open(PKI + "/ca.crt", "wb").write(ca.public_bytes(serialization.Encoding.PEM))
    fd = os.open(PKI + "/ca.key", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))
    os.close(fd)
    endpoint = "%s:%s" % (init["localAPIEndpoint"]["advertiseAddress"], init["localAPIEndpoint"].get("bindPort", 6443))
    open(ENDPOINT, "w").write(endpoint)
    open(TOKEN, "w").write("%s.%s" % (secrets.token_hex(3), secrets.token_hex(8)))
    with open("/etc/kubernetes/admin.conf", "w") as f:
        f.write("apiVersion: v1\nkind: Config\nclusters:\n- name: kubernetes\n  cluster:\n"
                "    server: https://%s\n" % endpoint)
    print("Your Kubernetes control-plane has initialized successfully!")
elif args[:2] == ["token", "create"]:
    print("kubeadm join %s --token %s --discovery-token-ca-cert-hash %s "
          % (open(ENDPOINT).read(), open(TOKEN).read(), ca_hash()))
elif args[:1] == ["reset"]:
    # kubeadm reset -f: the static pod manifests, kubeconfigs, kubelet state and the
    # contents of the certificates directory go (kubeadm's cleanupDirs), plus its own files
    import glob, shutil
    for d in ("/etc/kubernetes/manifests", "/var/lib/kubelet", PKI):
        for p in glob.glob(d + "/*"):
            shutil.rmtree(p) if os.path.isdir(p) and not os.path.islink(p) else os.remove(p)
    for f in ("admin.conf", "super-admin.conf", "kubelet.conf", "bootstrap-kubelet.conf",
              "controller-manager.conf", "scheduler.conf"):
        if os.path.exists("/etc/kubernetes/" + f):
            os.remove("/etc/kubernetes/" + f)
    for f in (TOKEN, ENDPOINT):
        if os.path.exists(f):
            os.remove(f)
    print("[reset] Deleted contents of: /etc/kubernetes/manifests /var/lib/kubelet " + PKI)
elif args[:1] == ["join"]:
    if "--config" in args:  # kubeadm join --config FILE: discovery from the JoinConfiguration
        from ruamel.yaml import YAML
        doc = YAML(typ="safe").load(open(args[args.index("--config") + 1]))
        if doc.get("kind") != "JoinConfiguration":
            sys.exit("kubeadm stand-in: %s is no JoinConfiguration" % args[args.index("--config") + 1])
        boot = doc["discovery"]["bootstrapToken"]
        endpoint = boot["apiServerEndpoint"]
        with open("{joined}", "w") as f:  # what kubeadm was told (k8s-sql removes the file after the join)
            json.dump(dict(boot, nodeRegistration=doc.get("nodeRegistration")), f)
    else:
        endpoint = args[1]
    os.makedirs("/etc/kubernetes", exist_ok=True)
    with open("/etc/kubernetes/kubelet.conf", "w") as f:
        f.write("apiVersion: v1\nkind: Config\nclusters:\n- name: default-cluster\n  cluster:\n"
                "    server: https://%s\n" % endpoint)
    print("This node has joined the cluster")
else:
    print("kubeadm: stand-in of the k8s-sql VM tests, unexpected %s" % args, file=sys.stderr)
    sys.exit(1)
'''

KUBECTL = r'''#!/bin/sh
# Stand-in for kubectl {tag} (k8s-sql VM tests): there is no API server. /readyz is "ok" once
# kubeadm wrote the kube-apiserver manifest, unless {down} exists: then the test holds the
# API server down for callers other than root (the worker asks as vagrant).
echo "$(id -un): $*" >>{log} 2>/dev/null || true
state=/var/lib/kubectl-stand-in
case " $* " in
  *" version "*|*" --version "*) echo "Client Version: {tag}" ;;
  *" get --raw /readyz "*)
    if [ -f /etc/kubernetes/manifests/kube-apiserver.yaml ] && {{ [ ! -e {down} ] || [ "$(id -u)" = 0 ]; }}
    then echo ok
    else echo "The connection to the server {cp}:6443 was refused - did you specify the right host or port?" >&2
         exit 1; fi ;;
  *" get node "*" -o json "*)
    echo '{{"kind":"Node","spec":{{}},"status":{{"conditions":[{{"type":"Ready","status":"True"}}]}}}}' ;;
  *" get pods -n kube-system -l component=etcd "*) ;;
  *" get namespace kube-flannel "*)
    [ -f $state/kube-flannel ] || {{ echo 'Error from server (NotFound): namespaces "kube-flannel" not found' >&2
                                     exit 1; }}
    echo "namespace/kube-flannel" ;;
  *" apply -f "*) mkdir -p $state && touch $state/kube-flannel && echo "namespace/kube-flannel created" ;;
  *" patch daemonset kube-flannel-ds "*) echo "daemonset.apps/kube-flannel-ds patched" ;;
  *" taint nodes "*) echo "node untainted" ;;
  *) echo "kubectl: stand-in of the k8s-sql VM tests, unexpected: $*" >&2; exit 1 ;;
esac
'''

CRIO = r'''#!/usr/bin/python3
# Stand-in for CRI-O {tag} (k8s-sql VM tests): a service that listens on CRI-O's socket, as
# the real one does (kubeadm-config and kubeadm-init look for it), and runs no container.
import os, socket, sys, time
if sys.argv[1:2] in (["--version"], ["version"]):
    print("crio version {tag}")
    sys.exit(0)
path = "/var/run/crio/crio.sock"
os.makedirs(os.path.dirname(path), exist_ok=True)
if os.path.exists(path):
    os.unlink(path)
sock = socket.socket(socket.AF_UNIX)
sock.bind(path)
sock.listen()
while True:
    time.sleep(3600)
'''

CRIO_SERVICE = """\
[Unit]
Description=Container Runtime Interface for OCI (CRI-O)
Documentation=https://github.com/cri-o/cri-o
Wants=network-online.target
Before=kubelet.service
After=network-online.target

[Service]
Type=simple
ExecStart=/usr/bin/crio
Restart=on-failure

[Install]
WantedBy=multi-user.target
"""

FLANNEL_STAND_IN = "# stand-in for flannel's kube-flannel.yml (k8s-sql VM tests)\napiVersion: v1\nkind: Namespace\n" \
                   "metadata:\n  name: kube-flannel\n"


def kube_packages(cp_ip: str = "127.0.0.1") -> list[aptrepo.Package]:
    """aptrepo's stand-in packages, with kubeadm and kubectl behaving as the module doc says;
    ``cp_ip`` is the address kubectl's "connection refused" message names."""
    tag = f"v{KUBE_VERSION}"
    out = []
    for p in aptrepo.kube_packages(KUBE_VERSION):
        files = dict(p.files)
        if p.name == "kubeadm":
            files["/usr/bin/kubeadm"] = (0o755, KUBEADM.format(tag=tag, log=KUBEADM_LOG, token=TOKEN_FILE,
                                                                      joined=KUBEADM_JOINED))
            files["/usr/share/kubeadm-stand-in/kube-apiserver.yaml"] = (
                0o644, (ROOT / "tests/fixtures/manifests/kube-apiserver-1.34.yaml").read_text())
        if p.name == "kubectl":
            files["/usr/bin/kubectl"] = (0o755, KUBECTL.format(tag=tag, log=KUBECTL_LOG, down=APISERVER_DOWN, cp=cp_ip))
        out.append(aptrepo.Package(p.name, p.version, p.section, p.description, files, p.depends, p.recommends,
                                   p.conffiles, p.postinst))
    return out


def crio_package() -> aptrepo.Package:
    """cri-o 1.34 as CRI-O's repository names it, with its conffile drop-in and the bridge
    configuration it ships disabled."""
    v = "1.34.2"
    return aptrepo.Package(
        "cri-o", f"{v}-1.1", "admin", "Open Container Initiative-based implementation of Kubernetes CRI",
        {"/usr/bin/crio": (0o755, CRIO.format(tag=v)),
         "/usr/lib/systemd/system/crio.service": (0o644, CRIO_SERVICE),
         "/etc/crio/crio.conf.d/10-crio.conf": (0o644, "[crio.image]\nsignature_policy = \"/etc/crio/policy.json\"\n"),
         "/etc/cni/net.d/10-crio-bridge.conflist.disabled": (0o644, "{}\n")},
        depends="python3", conffiles=("/etc/crio/crio.conf.d/10-crio.conf",),
        postinst=aptrepo.POSTINST_DAEMON_RELOAD)


def flat_repo(root: Path, path: str, packages: list[aptrepo.Package], signer: aptrepo.Signer) -> None:
    repo = root / path.strip("/")
    repo.mkdir(parents=True, exist_ok=True)
    release = aptrepo.write_index(repo, [aptrepo.build_deb(p, repo) for p in packages])
    signer.sign_release(release)
    (repo / "Release.key").write_text(signer.public_key())


def build_repos(out: Path, cp_ip: str = "127.0.0.1") -> aptrepo.RepoServer:
    """pkgs.k8s.io (Kubernetes :data:`KUBE_VERSION`), CRI-O's repository and flannel's
    manifest under ``out/www``, served over HTTPS for :data:`NAMES`; the server has ``tls``
    (its CA for the VMs). The caller stops it."""
    root = out / "www"
    minor = ".".join(KUBE_VERSION.split(".")[:2])
    signer = aptrepo.Signer()
    try:
        flat_repo(root, f"/core:/stable:/v{minor}/deb/", kube_packages(cp_ip), signer)
        flat_repo(root, f"/repositories/isv:/cri-o:/stable:/v{minor}/deb/", [crio_package()], signer)
    finally:
        signer.close()
    (root / FLANNEL_URL_PATH).parent.mkdir(parents=True)
    (root / FLANNEL_URL_PATH).write_text(FLANNEL_STAND_IN)
    tls = aptrepo.make_tls(out, NAMES)
    server = aptrepo.RepoServer(root, tls, out / "requests.log")
    server.tls = tls
    return server


def wheelhouse(dest: Path) -> Path:
    """PyPI's stand-in: ``pip wheel`` of this checkout (its dependencies) and hatchling (its
    build backend) into ``dest``; in a VM, ``/etc/pip.conf`` with ``no-index`` and
    ``find-links`` points pip at it."""
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "-w", str(dest), str(ROOT), "hatchling>=1.21"],
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, f"pip wheel (the wheelhouse standing in for PyPI) failed:\n{res.stderr[-3000:]}"
    return dest


#: Left out of a checkout copied into a VM (the Vagrantfile's rsync__exclude, plus caches).
EXCLUDE = (".git", ".venv", "vagrant/.vagrant", ".pytest_cache")


def checkout_tar(dest: Path, at: str, extra: dict[str, Path]) -> Path:
    """A tar of this checkout under ``at`` (a path without the leading slash, e.g.
    ``vagrant``; :data:`EXCLUDE`, ``__pycache__`` and ``vagrant/.playground`` left out),
    plus ``extra`` (path in the tar -> file or directory here), padded to whole sectors:
    a VM gets it as a raw disk and unpacks it with ``tar -xf /dev/vdX -C /`` (faster than
    SSH under TCG)."""
    def keep(info: tarfile.TarInfo):
        rel = info.name[len(at) + 1:] if info.name.startswith(at + "/") else ""
        if any(rel == e or rel.startswith(e + "/") for e in EXCLUDE) or "__pycache__" in info.name.split("/") \
                or rel.startswith("vagrant/.playground"):
            return None
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        return info

    with tarfile.open(dest, "w", format=tarfile.GNU_FORMAT) as tar:
        tar.add(ROOT, at, filter=keep)
        for name, path in extra.items():
            tar.add(path, name)
    size = dest.stat().st_size
    with open(dest, "ab") as f:
        f.write(b"\0" * (-size % 4096 + 4096 * 4))
    return dest


def kubeadm_calls(node) -> list[list[str]]:
    """The stand-in kubeadm's calls on ``node`` (anything with ``ssh``), oldest first."""
    import json
    text = node.ssh(f"cat {KUBEADM_LOG} 2>/dev/null || true").stdout
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def readme_first_command() -> str:
    """The command under "# 1." in README's first ``sh`` block."""
    lines = (ROOT / "README.md").read_text().split("```sh\n", 1)[1].split("```", 1)[0].splitlines()
    return lines[next(i for i, ln in enumerate(lines) if ln.startswith("# 1.")) + 1]
