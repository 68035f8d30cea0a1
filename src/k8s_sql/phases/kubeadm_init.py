"""Phase ``kubeadm-init``: run ``kubeadm init`` with the configuration of ``kubeadm-config``.

kubeadm applies the shim patch itself when it writes the kube-apiserver manifest, so the
sidecar is there from the first start of the static pod and ``kubeadm init`` succeeds
without ignoring its wait-for-control-plane step.

``--ignore-preflight-errors=ExternalEtcdVersion``: for an external etcd, kubeadm's preflight
GETs ``<endpoint>/version`` with the client certificate and wants etcd's JSON. At that moment
nothing can answer: the shim (ours or Kine) runs as a container of the kube-apiserver static
pod, which kubeadm writes only after preflight. So this one check is always skipped, and
only this one; every other preflight check still runs. (Our shim serves etcd's ``/version``
on its metrics address once it runs; kubeadm releases without the check accept the name.)
"""

from __future__ import annotations

import posixpath

from k8s_sql.errors import K8sSqlError
from k8s_sql.kubeadm import manifest
from k8s_sql.phases.base import Action, Change, Context, Phase, pending_note


def kubeadm_argv(ctx: Context) -> list[str]:
    """The ``kubeadm init`` command line for ``ctx.config``."""
    return ["kubeadm", "init", "--config", ctx.config.paths.kubeadm_config, "--upload-certs",
            "--ignore-preflight-errors=ExternalEtcdVersion"]


def apiserver_manifest(ctx: Context) -> str:
    return posixpath.join(ctx.config.paths.manifests_dir, "kube-apiserver.yaml")


class KubeadmInit(Phase):
    """Runs ``kubeadm init --config <paths.kubeadm_config> --upload-certs``, streaming its output.

    No change when the node is already initialised: kube-apiserver.yaml runs the
    configured shim and ``paths.kubeconfig`` (admin.conf) exists.

    Before prereqs has installed kubeadm the step is planned all the same, marked pending.

    Raises (from plan):
        K8sSqlError: the configuration file is missing; the node has a kube-apiserver
            manifest without the shim (initialised some other way).
    Raises (from apply):
        K8sSqlError: kubeadm is not installed; kubeadm fails.
    """

    name = "kubeadm-init"
    title = "kubeadm init"

    def plan(self, ctx: Context) -> list[Change]:
        host, cfg = ctx.host, ctx.config
        text = host.read_text(apiserver_manifest(ctx))
        if text is not None:
            if manifest.is_patched(text, cfg):
                if host.exists(cfg.paths.kubeconfig):
                    return []
                raise K8sSqlError("kube-apiserver.yaml runs the shim but the admin kubeconfig is missing "
                                  "(an interrupted kubeadm init?)", where=cfg.paths.kubeconfig,
                                  hint="run `kubeadm reset`, then `k8s-sql init` again")
            raise K8sSqlError(
                "this node already has a kube-apiserver manifest that does not run the configured etcd shim",
                where=apiserver_manifest(ctx),
                hint="to keep the cluster, run `k8s-sql patch-manifest`; to start over, run `kubeadm reset`")
        if not host.exists(cfg.paths.kubeadm_config):
            raise K8sSqlError("the kubeadm configuration file is missing", where=cfg.paths.kubeadm_config,
                              hint="run `k8s-sql init phase kubeadm-config` first")
        description = " ".join(kubeadm_argv(ctx))
        if host.which("kubeadm") is None:
            description += f" ({pending_note('prereqs installs kubeadm')})"
        return [Action(description, self._run, detail="kubeadm writes the control-plane static pods; "
                       "its kube-apiserver+strategic.yaml patch adds the etcd shim")]

    def _run(self, ctx: Context) -> None:
        if ctx.host.which("kubeadm") is None:
            raise K8sSqlError("kubeadm is not installed", where=ctx.host.name,
                              hint="run `k8s-sql init phase prereqs`, or install kubeadm, kubelet and kubectl")
        res = ctx.host.run(kubeadm_argv(ctx), stream=True, check=False)
        if not res.ok:
            raise K8sSqlError(f"kubeadm init failed (exit {res.returncode})", where=ctx.host.name,
                              hint="see kubeadm's output above; `journalctl -u kubelet` and "
                                   "`crictl logs` of the etcd-shim container tell more; "
                                   "`kubeadm reset` before trying again")

    def verify(self, ctx: Context) -> None:
        text = ctx.host.read_text(apiserver_manifest(ctx))
        if text is None or not manifest.is_patched(text, ctx.config):
            raise K8sSqlError("after kubeadm init, kube-apiserver.yaml does not contain the etcd shim sidecar",
                              where=apiserver_manifest(ctx),
                              hint=f"check that {ctx.config.paths.patches_dir} holds kube-apiserver+strategic.yaml "
                                   "and that the kubeadm configuration names it in patches.directory")
        if not ctx.host.exists(ctx.config.paths.kubeconfig):
            raise K8sSqlError("kubeadm init did not write the admin kubeconfig", where=ctx.config.paths.kubeconfig)
