"""What the running cluster's kubeadm configuration says (the ``kubeadm-config``
ConfigMap in kube-system, as kubeadm reads it for ``join`` and ``upgrade``)."""

from __future__ import annotations

from k8s_sql.config import Cluster
from k8s_sql.errors import K8sSqlError
from k8s_sql.host import Host
from k8s_sql.kubeadm import yamlio


def _endpoint_of(text: str, source: str) -> str:
    """controlPlaneEndpoint of the ClusterConfiguration in ``text`` (one document, or the
    documents of k8s-sql's kubeadm.yaml); ``""`` when unset.

    Raises:
        K8sSqlError: ``text`` is not YAML (:func:`k8s_sql.kubeadm.yamlio.load_all`).
    """
    for doc in yamlio.load_all(text, source):
        if isinstance(doc, dict) and doc.get("kind", "ClusterConfiguration") == "ClusterConfiguration":
            return str(doc.get("controlPlaneEndpoint") or "")
    return ""


def control_plane_endpoint(host: Host, cfg: Cluster) -> tuple[str, str]:
    """The cluster's controlPlaneEndpoint and where it was read: the ClusterConfiguration of
    the ``kubeadm-config`` ConfigMap (``kubectl`` with ``paths.kubeconfig`` on ``host``, the
    first control-plane node), else the kubeadm configuration ``init`` wrote there
    (``paths.kubeadmConfig``). ``""`` when the cluster has none.

    Raises:
        K8sSqlError: neither can be read.
    """
    reason = "kubectl is not installed"
    if host.which("kubectl"):
        res = host.run(["kubectl", "--kubeconfig", cfg.paths.kubeconfig, "-n", "kube-system", "get", "configmap",
                        "kubeadm-config", "-o", "jsonpath={.data.ClusterConfiguration}"], check=False, timeout=60)
        if res.ok and res.stdout.strip():
            try:
                return _endpoint_of(res.stdout, "the kubeadm-config ConfigMap"), "the kubeadm-config ConfigMap"
            except K8sSqlError:
                reason = "the kubeadm-config ConfigMap is not YAML"
        else:
            reason = " ".join((res.stderr or res.stdout or "no ClusterConfiguration").split())[:200]
    text = host.read_text(cfg.paths.kubeadm_config)
    if text is not None:
        try:
            return _endpoint_of(text, cfg.paths.kubeadm_config), cfg.paths.kubeadm_config
        except K8sSqlError:
            pass
    raise K8sSqlError(f"cannot read the cluster's controlPlaneEndpoint ({reason}; no {cfg.paths.kubeadm_config})",
                      where=host.name, hint="check that the first node's API server is up (`k8s-sql status`)")


def require_control_plane_endpoint(host: Host, cfg: Cluster) -> str:
    """The cluster's controlPlaneEndpoint, checked before a control-plane node joins:
    kubeadm refuses ``join --control-plane`` without one (``checkIfReadyForAdditionalControlPlane``),
    after the joining node was already prepared.

    Raises:
        K8sSqlError: the cluster has none (it cannot be added after ``kubeadm init``), or it
            cannot be read.
    """
    endpoint, source = control_plane_endpoint(host, cfg)
    if not endpoint:
        raise K8sSqlError(
            f"the cluster has no controlPlaneEndpoint (from {source}): kubeadm adds a control-plane node only "
            "to a cluster initialised with one", where=host.name,
            hint="join this node as a worker, or set kubernetes.controlPlaneEndpoint (a DNS name or load "
                 "balancer) and initialise the cluster again; k8s-sql init renders one by default")
    return endpoint
