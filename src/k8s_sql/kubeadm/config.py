"""The kubeadm configuration files: InitConfiguration + ClusterConfiguration (``init``),
JoinConfiguration (``join``) and UpgradeConfiguration (``upgrade``, v1beta4 only).

Built from ``templates/kubeadm/<apiVersion>.yaml`` (and ``join-<apiVersion>.yaml``,
``upgrade-v1beta4.yaml``) with
values set in code (no text templating). Semantics: kubeadm configuration API, kubeadm.k8s.io/v1beta3 (kubeadm
1.22–1.30) and v1beta4 (kubeadm >= 1.31). Both versions share every field used here
(localAPIEndpoint, nodeRegistration.criSocket, patches.directory, networking,
controlPlaneEndpoint, etcd.external); they differ elsewhere (v1beta4's extraArgs are
lists of name/value pairs, it adds timeouts), which k8s-sql does not set.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from k8s_sql.config import Cluster
from k8s_sql.errors import K8sSqlError
from k8s_sql.kubeadm import files, yamlio
from k8s_sql.resources import template_path
from k8s_sql.validation import MIN_KUBERNETES_MINOR

#: The shim's client endpoint as kube-apiserver reaches it (loopback, hostNetwork pod).
SHIM_ENDPOINT_HOST = "127.0.0.1"
#: kube-apiserver's secure port (InitConfiguration.localAPIEndpoint.bindPort).
APISERVER_PORT = 6443
#: Why a default controlPlaneEndpoint is only a start (printed by the kubeadm-config phase).
ENDPOINT_NOTE = ("a load balancer or DNS name (kubernetes.controlPlaneEndpoint) is better for real HA: "
                 "this address cannot move to another node")


def minor(kubernetes_version: str) -> int:
    """``v1.34.2`` -> ``34``."""
    return int(kubernetes_version.lstrip("v").split(".")[1])


def control_plane_endpoint(cfg: Cluster, advertise_address: str) -> tuple[str, str]:
    """ClusterConfiguration.controlPlaneEndpoint and where it came from: the configured
    ``kubernetes.controlPlaneEndpoint``, else ``<advertise_address>:6443`` (an IPv6 address
    in brackets). kubeadm adds a control-plane node only to a cluster that has one
    (``kubeadm join --control-plane``), and it cannot be added after ``init``."""
    if cfg.kubernetes.control_plane_endpoint:
        return cfg.kubernetes.control_plane_endpoint, "from kubernetes.controlPlaneEndpoint"
    host = f"[{advertise_address}]" if ":" in advertise_address else advertise_address
    return f"{host}:{APISERVER_PORT}", f"the first node's advertise address; {ENDPOINT_NOTE}"


def api_version(kubernetes_version: str) -> str:
    """``kubeadm.k8s.io/v1beta4`` for 1.31 and later, ``v1beta3`` for 1.22–1.30.

    Raises:
        K8sSqlError: older than 1.22 (only v1beta2 there, which k8s-sql does not write).
    """
    m = minor(kubernetes_version)
    if m >= 31:
        return "kubeadm.k8s.io/v1beta4"
    if m >= MIN_KUBERNETES_MINOR:  # configuration validation refuses older ones first
        return "kubeadm.k8s.io/v1beta3"
    raise K8sSqlError(f"Kubernetes {kubernetes_version} is too old: k8s-sql supports 1.{MIN_KUBERNETES_MINOR} and "
                      f"later", hint=f"set kubernetes.version (or --kubernetes-version) to v1.{MIN_KUBERNETES_MINOR} "
                      "or newer, e.g. v1.34.2")


def shim_endpoint(cfg: Cluster) -> str:
    """``https://127.0.0.1:<shim.port>``: the etcd server kube-apiserver talks to."""
    return f"https://{SHIM_ENDPOINT_HOST}:{cfg.shim.port}"


def render(cfg: Cluster, *, advertise_address: str, cri_socket: str) -> str:
    """The kubeadm configuration (two YAML documents) for ``cfg``.

    Args:
        advertise_address: IP for InitConfiguration.localAPIEndpoint.advertiseAddress.
        cri_socket: endpoint for nodeRegistration.criSocket (``unix:///...``).

    Raises:
        K8sSqlError: as :func:`api_version`.
    """
    version = api_version(cfg.kubernetes.version)
    name = version.split("/")[1]
    path = template_path("kubeadm", f"{name}.yaml")
    init, cluster = yamlio.load_all(path.read_text(), str(path))

    init["localAPIEndpoint"]["advertiseAddress"] = advertise_address
    init["nodeRegistration"]["name"] = cfg.node.name
    init["nodeRegistration"]["criSocket"] = cri_socket
    init["patches"]["directory"] = cfg.paths.patches_dir

    k = cfg.kubernetes
    cluster["kubernetesVersion"] = k.version if k.version.startswith("v") else "v" + k.version
    cluster["networking"]["podSubnet"] = k.pod_subnet
    cluster["networking"]["serviceSubnet"] = k.service_subnet
    endpoint, _ = control_plane_endpoint(cfg, advertise_address)
    cluster.insert(list(cluster).index("networking"), "controlPlaneEndpoint", endpoint)
    ext = cluster["etcd"]["external"]
    ext["endpoints"] = [shim_endpoint(cfg)]
    ext["caFile"] = files.pki(cfg.paths.pki_dir, files.CA_CERT)
    ext["certFile"] = files.pki(cfg.paths.pki_dir, files.APISERVER_CLIENT_CERT)
    ext["keyFile"] = files.pki(cfg.paths.pki_dir, files.APISERVER_CLIENT_KEY)
    for doc in (init, cluster):
        if doc["apiVersion"] != version:
            raise K8sSqlError(f"template {path} has apiVersion {doc['apiVersion']}, expected {version}",
                              hint="reinstall k8s-sql; its templates are damaged")
    return yamlio.dump_all([init, cluster])


def upgrade_config_path(cfg: Cluster) -> str:
    """Where ``k8s-sql upgrade`` writes kubeadm's UpgradeConfiguration: ``kubeadm-upgrade.yaml``
    beside ``paths.kubeadmConfig``."""
    return posixpath.join(posixpath.dirname(cfg.paths.kubeadm_config), "kubeadm-upgrade.yaml")


def render_upgrade(cfg: Cluster, target_version: str) -> str | None:
    """kubeadm's UpgradeConfiguration (kubeadm.k8s.io/v1beta4, kubeadm >= 1.31) for an upgrade
    to ``target_version``: ``apply.kubernetesVersion``, and the shim patch directory
    (``paths.patchesDir``) in both ``apply.patches`` and ``node.patches``: kubeadm keeps no
    patches directory from ``init``, it applies patches on upgrade only when told.
    ``None`` for 1.22–1.30 (v1beta3 has no UpgradeConfiguration: ``--patches`` is passed).

    Raises:
        K8sSqlError: as :func:`api_version`.
    """
    version = api_version(target_version)
    if version != "kubeadm.k8s.io/v1beta4":
        return None
    path = template_path("kubeadm", "upgrade-v1beta4.yaml")
    doc = yamlio.load(path.read_text(), str(path))
    doc["apply"]["kubernetesVersion"] = target_version if target_version.startswith("v") else "v" + target_version
    doc["apply"]["patches"]["directory"] = cfg.paths.patches_dir
    doc["node"]["patches"]["directory"] = cfg.paths.patches_dir
    if doc["apiVersion"] != version:
        raise K8sSqlError(f"template {path} has apiVersion {doc['apiVersion']}, expected {version}",
                          hint="reinstall k8s-sql; its templates are damaged")
    return yamlio.dump(doc)


def join_config_path(cfg: Cluster) -> str:
    """Where ``k8s-sql join`` writes kubeadm's JoinConfiguration on the joining node:
    ``kubeadm-join.yaml`` beside ``paths.kubeadmConfig`` (0600, removed after the join)."""
    return posixpath.join(posixpath.dirname(cfg.paths.kubeadm_config), "kubeadm-join.yaml")


@dataclass(frozen=True)
class Discovery:
    """Token discovery, as ``kubeadm token create --print-join-command`` prints it:
    ``api_server_endpoint`` (``host:port``), the bootstrap ``token`` (``abcdef.0123456789abcdef``,
    a secret) and ``ca_cert_hashes`` (``sha256:<hex>``, the CA's public key pins)."""

    api_server_endpoint: str
    token: str
    ca_cert_hashes: tuple[str, ...]


@dataclass(frozen=True)
class JoinControlPlane:
    """JoinConfiguration.controlPlane: the ``certificate_key`` (64 hex digits, a secret:
    it decrypts the kubeadm-certs Secret) and the API server's advertise address
    (``None``: kubeadm takes the default route's address)."""

    certificate_key: str
    advertise_address: str | None = None


def render_join(cfg: Cluster, discovery: Discovery, *, node_name: str, cri_socket: str,
                control_plane: JoinControlPlane | None = None) -> str:
    """kubeadm's JoinConfiguration for the joining node whose configuration is ``cfg``
    (its ``kubernetes.version`` picks the API version, as for :func:`render`):
    ``discovery.bootstrapToken``, ``nodeRegistration`` (``name``, ``criSocket``; no
    kubeletExtraArgs, as :func:`render` sets none), and for a control plane ``controlPlane``
    (``localAPIEndpoint``, ``certificateKey``) and ``patches.directory`` (``paths.patchesDir``,
    where the sidecar patch is: kubeadm applies patches only when told). A worker gets
    neither: kubeadm writes no static pod there. The text holds the token and the
    certificate key: write it 0600, never print it.

    Semantics: kubeadm configuration API v1beta3/v1beta4, JoinConfiguration.

    Raises:
        K8sSqlError: as :func:`api_version`; a damaged template.
    """
    version = api_version(cfg.kubernetes.version)
    path = template_path("kubeadm", f"join-{version.split('/')[1]}.yaml")
    doc = yamlio.load(path.read_text(), str(path))
    token = doc["discovery"]["bootstrapToken"]
    token["apiServerEndpoint"] = discovery.api_server_endpoint
    token["token"] = discovery.token
    token["caCertHashes"] = list(discovery.ca_cert_hashes)
    doc["nodeRegistration"]["name"] = node_name
    doc["nodeRegistration"]["criSocket"] = cri_socket
    if control_plane is None:
        del doc["controlPlane"]
        del doc["patches"]
    else:
        endpoint = doc["controlPlane"]["localAPIEndpoint"]
        if control_plane.advertise_address:
            endpoint["advertiseAddress"] = control_plane.advertise_address
        else:  # kubeadm's default: the address of the default route
            del endpoint["advertiseAddress"]
        endpoint["bindPort"] = APISERVER_PORT
        doc["controlPlane"]["certificateKey"] = control_plane.certificate_key
        doc["patches"]["directory"] = cfg.paths.patches_dir
    if doc["apiVersion"] != version or doc["kind"] != "JoinConfiguration":
        raise K8sSqlError(f"template {path} is {doc['apiVersion']} {doc['kind']}, expected {version} JoinConfiguration",
                          hint="reinstall k8s-sql; its templates are damaged")
    return yamlio.dump(doc)
