"""Phase ``kubeadm-config``: write kubeadm's configuration and the kube-apiserver patch
that adds the etcd shim sidecar.

kubeadm applies the patch only when a command is given its directory: ``init`` through
InitConfiguration.patches (written here), ``join`` and ``upgrade`` only with ``--patches``
or (v1beta4) UpgradeConfiguration's ``apply.patches``/``node.patches`` — kubeadm keeps no
patches directory in the cluster. A plain ``kubeadm upgrade`` drops the sidecar; ``k8s-sql
upgrade`` passes the directory and checks the result."""

from __future__ import annotations

import posixpath

from k8s_sql.kubeadm import config as kconfig
from k8s_sql.kubeadm import node, sidecar
from k8s_sql.phases.base import Change, Context, Phase, file_change, pending_note


class KubeadmConfig(Phase):
    """Writes ``paths.kubeadm_config`` (InitConfiguration + ClusterConfiguration, 0600 root)
    and ``<paths.patches_dir>/kube-apiserver+strategic.yaml``. ClusterConfiguration always
    has a controlPlaneEndpoint (see :func:`k8s_sql.kubeadm.config.control_plane_endpoint`).

    With no CRI socket on the node yet (and no ``node.criSocket``), the configured runtime's
    default socket is written and the plan says it is pending until prereqs has installed
    and started the runtime.

    Raises (from plan):
        K8sSqlError: Kubernetes older than 1.22, no advertise address.
    Raises (from verify):
        K8sSqlError: no ``node.criSocket`` and no runtime socket on the node after all.
    """

    name = "kubeadm-config"
    title = "kubeadm configuration with the etcd shim as external etcd"

    def plan(self, ctx: Context) -> list[Change]:
        cfg = ctx.config
        kconfig.api_version(cfg.kubernetes.version)  # fail early on unsupported versions
        cri, cri_note = node.cri_socket(ctx.host, cfg)
        addr, addr_note = node.advertise_address(ctx.host, cfg)
        ctx.console.print(f"  CRI socket {cri} ({cri_note}); advertise address {addr} ({addr_note})",
                          highlight=False, markup=False)
        endpoint, endpoint_note = kconfig.control_plane_endpoint(cfg, addr)
        ctx.console.print(f"  controlPlaneEndpoint {endpoint} ({endpoint_note})", highlight=False, markup=False)
        text = kconfig.render(cfg, advertise_address=addr, cri_socket=cri)
        config_write = file_change(ctx.host, cfg.paths.kubeadm_config, text.encode(), 0o600, owner="root",
                                   group="root")
        if config_write and not cfg.node.cri_socket and not node.cri_socket_present(ctx.host, cri):
            config_write.note = pending_note(f"prereqs installs and starts {cfg.kubernetes.container_runtime}")
        changes = [
            config_write,
            file_change(ctx.host, posixpath.join(cfg.paths.patches_dir, sidecar.PATCH_FILE),
                        sidecar.patch_text(cfg).encode(), 0o600, owner="root", group="root"),
        ]
        return [c for c in changes if c is not None]

    def verify(self, ctx: Context) -> None:
        """Raises:
            K8sSqlError: no container runtime socket where the configuration says (the
                runtime is not installed or not running).
        """
        if not ctx.config.node.cri_socket:  # a configured socket is the user's to vouch for
            node.require_cri_socket(ctx.host, node.cri_socket(ctx.host, ctx.config)[0])
