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
from k8s_sql.kubeadm import sidecar, yamlio
from k8s_sql.kubeadm.config import shim_endpoint
from k8s_sql import config
from k8s_sql.phases.base import Action, Change, Context, Phase, file_change, pending_note


#: How to start over. Never plain `kubeadm reset`: it empties /etc/kubernetes/pki — the datastore
#: CA and PostgreSQL's server certificate with it, while PostgreSQL still points at them — and
#: leaves the old cluster's state in the database.
RESET_HINT = ("run `k8s-sql reset` (kubeadm's own reset, then the files k8s-sql made; the database is kept "
              "unless --delete-data), then `k8s-sql init` again")


def init_config_path(cfg) -> str:
    """Where init records the node's configuration (``cluster.yaml`` beside
    ``paths.stateFile``), so that ``join`` works with the first node's own configuration."""
    return posixpath.join(posixpath.dirname(cfg.paths.state_file), "cluster.yaml")


def kubeadm_argv(ctx: Context) -> list[str]:
    """The ``kubeadm init`` command line for ``ctx.config``."""
    return ["kubeadm", "init", "--config", ctx.config.paths.kubeadm_config, "--upload-certs",
            "--ignore-preflight-errors=ExternalEtcdVersion"]


def apiserver_manifest(ctx: Context) -> str:
    return posixpath.join(ctx.config.paths.manifests_dir, "kube-apiserver.yaml")


#: List fields matched by key rather than position (the Pod API's patch merge keys).
_MERGE_KEYS = ("name", "mountPath", "containerPort")


def _empty(value) -> bool:
    return value in (None, "", [], {}, False)


def first_difference(want, got, path: str = "") -> str | None:
    """Where ``got`` (as kubeadm wrote it) lacks what ``want`` (as k8s-sql rendered it) asks
    for: ``None`` when every field of ``want`` is in ``got`` with the same value. Fields
    ``got`` adds (kubeadm's defaults) and a different order do not count; an empty or false
    field of ``want`` may be missing (Go's omitempty); scalars compare as text (``2381`` and
    ``"2381"``); list items with a name/mountPath/containerPort are matched by it."""
    if isinstance(want, dict):
        if not isinstance(got, dict):
            return path or "."
        for key, value in want.items():
            sub = f"{path}.{key}" if path else str(key)
            if key not in got:
                if not _empty(value):
                    return sub
                continue
            problem = first_difference(value, got[key], sub)
            if problem:
                return problem
        return None
    if isinstance(want, list):
        if not isinstance(got, list):
            return path
        for i, item in enumerate(want):
            key = next((k for k in _MERGE_KEYS if isinstance(item, dict) and k in item), None)
            if key is None:
                match = got[i] if i < len(got) else None
                if match is None or first_difference(item, match, f"{path}[{i}]"):
                    return f"{path}[{i}]"
                continue
            match = next((g for g in got if isinstance(g, dict) and str(g.get(key)) == str(item[key])), None)
            if match is None:
                return f"{path}[{key}={item[key]}]"
            problem = first_difference(item, match, f"{path}[{key}={item[key]}]")
            if problem:
                return problem
        return None if len(want) == len(got) or any(isinstance(i, dict) for i in want) else path
    return None if str(want) == str(got) else path


def shim_problem(text: str, cfg) -> str | None:
    """What keeps the kube-apiserver manifest ``text`` from running the configured shim, or
    ``None``: the sidecar container must have every field k8s-sql renders (image, command,
    args, mounts, probes…) with its value, its volumes must be there, and kube-apiserver must
    use the shim as its etcd server. Compared by meaning, not bytes: kubeadm writes the
    patched manifest itself (its own field order and defaults)."""
    try:
        pod = yamlio.plain(yamlio.load(text, "kube-apiserver.yaml"))
    except K8sSqlError as e:
        return e.what
    spec = pod.get("spec") if isinstance(pod, dict) else None
    containers = (spec or {}).get("containers") or []
    by_name = {c.get("name"): c for c in containers if isinstance(c, dict)}
    side = by_name.get(sidecar.CONTAINER_NAME)
    if side is None:
        return f"no {sidecar.CONTAINER_NAME} container"
    want = yamlio.plain(sidecar.patch(cfg))["spec"]
    problem = first_difference(next(c for c in want["containers"] if c.get("name") == sidecar.CONTAINER_NAME), side,
                               f"containers[{sidecar.CONTAINER_NAME}]")
    if problem:
        return f"{problem} differs from the rendered sidecar"
    problem = first_difference(want.get("volumes") or [], spec.get("volumes") or [], "volumes")
    if problem:
        return f"{problem} differs from the rendered sidecar"
    api = by_name.get("kube-apiserver") or {}
    flags = [*(api.get("command") or []), *(api.get("args") or [])]
    etcd = f"--etcd-servers={shim_endpoint(cfg)}"
    if etcd not in flags:
        return f"kube-apiserver has no {etcd}"
    return None


class KubeadmInit(Phase):
    """Runs ``kubeadm init --config <paths.kubeadm_config> --upload-certs``, streaming its output.

    No change when the node is already initialised: kube-apiserver.yaml runs the
    configured shim and ``paths.kubeconfig`` (admin.conf) exists. The configuration is
    recorded in :func:`init_config_path` (0600) for ``k8s-sql join``.

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
        record = file_change(host, init_config_path(cfg), config.dump(cfg).encode(), 0o600, owner="root",
                             group="root")
        return ([record] if record else []) + self._plan_init(ctx)

    def _plan_init(self, ctx: Context) -> list[Change]:
        host, cfg = ctx.host, ctx.config
        text = host.read_text(apiserver_manifest(ctx))
        if text is not None:
            problem = shim_problem(text, cfg)
            if problem is None:
                if host.exists(cfg.paths.kubeconfig):
                    return []
                raise K8sSqlError("kube-apiserver.yaml runs the shim but the admin kubeconfig is missing "
                                  "(an interrupted kubeadm init?)", where=cfg.paths.kubeconfig,
                                  hint=RESET_HINT)
            raise K8sSqlError(
                "this node already has a kube-apiserver manifest that does not run the configured etcd shim "
                f"({problem})",
                where=apiserver_manifest(ctx),
                hint="to keep the cluster, run `k8s-sql patch-manifest`; to start over, " + RESET_HINT)
        if not host.exists(cfg.paths.kubeadm_config):
            raise K8sSqlError("the kubeadm configuration file is missing", where=cfg.paths.kubeadm_config,
                              hint="run `k8s-sql init phase kubeadm-config` first")
        description = " ".join(kubeadm_argv(ctx))
        if host.which("kubeadm") is None:
            description += f" ({pending_note('prereqs installs kubeadm')})"
        return [Action(description, self._run, detail="kubeadm writes the control-plane static pods; "
                       "its kube-apiserver+strategic.yaml patch adds the etcd shim", argvs=[kubeadm_argv(ctx)])]

    def _run(self, ctx: Context) -> None:
        if ctx.host.which("kubeadm") is None:
            raise K8sSqlError("kubeadm is not installed", where=ctx.host.name,
                              hint="run `k8s-sql init phase prereqs`, or install kubeadm, kubelet and kubectl")
        res = ctx.host.run(kubeadm_argv(ctx), stream=True, check=False)
        if not res.ok:
            raise K8sSqlError(f"kubeadm init failed (exit {res.returncode})", where=ctx.host.name,
                              hint="see kubeadm's output above; `journalctl -u kubelet` and "
                                   "`crictl logs` of the etcd-shim container tell more; before trying again, "
                                   + RESET_HINT)

    def verify(self, ctx: Context) -> None:
        text = ctx.host.read_text(apiserver_manifest(ctx))
        problem = "it is missing" if text is None else shim_problem(text, ctx.config)
        if problem:
            raise K8sSqlError(f"after kubeadm init, kube-apiserver.yaml does not run the etcd shim sidecar: {problem}",
                              where=apiserver_manifest(ctx),
                              hint=f"check that {ctx.config.paths.patches_dir} holds kube-apiserver+strategic.yaml "
                                   "and that the kubeadm configuration names it in patches.directory")
        if not ctx.host.exists(ctx.config.paths.kubeconfig):
            raise K8sSqlError("kubeadm init did not write the admin kubeconfig", where=ctx.config.paths.kubeconfig)
