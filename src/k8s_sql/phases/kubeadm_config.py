"""Phase ``kubeadm-config``: write kubeadm's configuration and the kube-apiserver patch
that adds the etcd shim sidecar (kubeadm applies it in ``init`` and ``upgrade``)."""

from __future__ import annotations

import posixpath

from k8s_sql.kubeadm import config as kconfig
from k8s_sql.kubeadm import node, sidecar
from k8s_sql.phases.base import Change, Context, Phase, file_change


class KubeadmConfig(Phase):
    """Writes ``paths.kubeadm_config`` (InitConfiguration + ClusterConfiguration, 0600 root)
    and ``<paths.patches_dir>/kube-apiserver+strategic.yaml``.

    Facts handed on: ``cri_socket``, ``advertise_address``.

    Raises (from plan):
        K8sSqlError: Kubernetes older than 1.22, no CRI socket, no advertise address.
    """

    name = "kubeadm-config"
    title = "kubeadm configuration with the etcd shim as external etcd"

    def plan(self, ctx: Context) -> list[Change]:
        cfg = ctx.config
        kconfig.api_version(cfg.kubernetes.version)  # fail early on unsupported versions
        cri, cri_note = node.cri_socket(ctx.host, cfg, dry_run=ctx.dry_run)
        addr, addr_note = node.advertise_address(ctx.host, cfg)
        ctx.facts.update(cri_socket=cri, advertise_address=addr)
        ctx.console.print(f"  CRI socket {cri} ({cri_note}); advertise address {addr} ({addr_note})",
                          highlight=False, markup=False)
        text = kconfig.render(cfg, advertise_address=addr, cri_socket=cri)
        changes = [
            file_change(ctx.host, cfg.paths.kubeadm_config, text.encode(), 0o600, owner="root", group="root"),
            file_change(ctx.host, posixpath.join(cfg.paths.patches_dir, sidecar.PATCH_FILE),
                        sidecar.patch_text(cfg).encode(), 0o600, owner="root", group="root"),
        ]
        return [c for c in changes if c is not None]
