"""The kube-apiserver static pod manifest: applying the shim patch, editing an existing
manifest (``k8s-sql patch-manifest``) and validating the result.

:func:`strategic_merge` does the part of Kubernetes' strategic merge patch that the shim
patch uses (maps merge; ``containers``/``volumes`` merge by ``name``, ``volumeMounts`` by
``mountPath``; other lists are replaced) — what kubeadm does with
``kube-apiserver+strategic.yaml``, so the patch can be checked without kubeadm.
"""

from __future__ import annotations

import re

import kubernetes_validate
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from k8s_sql.config import Cluster
from k8s_sql.errors import K8sSqlError
from k8s_sql.kubeadm import files, sidecar, yamlio
from k8s_sql.kubeadm.config import shim_endpoint

#: Patch merge keys of the Pod fields the shim patch touches (from the Kubernetes API's
#: x-kubernetes-patch-merge-key).
MERGE_KEYS = {"containers": "name", "initContainers": "name", "volumes": "name", "volumeMounts": "mountPath",
              "env": "name", "ports": "containerPort"}


def strategic_merge(base, patch, key: str | None = None):
    """``base`` with ``patch`` merged in, strategic-merge style (in place for mappings;
    returns the result). ``key`` is the field name of the value being merged."""
    if isinstance(base, dict) and isinstance(patch, dict):
        for k, v in patch.items():
            base[k] = strategic_merge(base[k], v, k) if k in base else v
        return base
    if isinstance(base, list) and isinstance(patch, list) and key in MERGE_KEYS:
        mk = MERGE_KEYS[key]
        for item in patch:
            match = next((b for b in base if isinstance(b, dict) and b.get(mk) == item.get(mk)), None)
            if match is None:
                base.append(item)
            else:
                strategic_merge(match, item)
        return base
    return patch


def schema_version(image: str) -> str:
    """The Kubernetes schema version (``"1.30.0"``) kubernetes-validate should use for a
    kube-apiserver ``image`` (its tag's minor version, clamped to the schemas the library
    ships: the Pod v1 fields used by kubeadm are the same in all of them)."""
    m = re.search(r":v?1\.(\d+)", image or "")
    minor = int(m.group(1)) if m else None
    available = sorted(int(v.split(".")[1]) for v in _schema_versions())
    if minor is None:
        minor = available[-1]
    minor = min(max(minor, available[0]), available[-1])
    return f"1.{minor}.0"


def _schema_versions() -> list[str]:
    import os

    base = os.path.join(os.path.dirname(kubernetes_validate.__file__), "kubernetes-json-schema")
    return [d[1:].split("-")[0] for d in os.listdir(base) if d.endswith("-local-strict")]


def validate(pod, source: str) -> str:
    """Validate a Pod against the Kubernetes schema (strict: unknown fields are errors)
    of its kube-apiserver image's version; returns that version.

    Raises:
        K8sSqlError: the document does not match the schema (field path and message).
    """
    data = yamlio.plain(pod)
    image = ""
    for c in data.get("spec", {}).get("containers", []) or []:
        if isinstance(c, dict) and c.get("name") == "kube-apiserver":
            image = c.get("image", "")
    version = schema_version(image)
    try:
        kubernetes_validate.validate(data, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        path = ".".join(str(p) for p in getattr(e, "path", []) or [])
        raise K8sSqlError(f"not a valid Pod for Kubernetes {version}: {path + ': ' if path else ''}{e.message}",
                          where=source, hint="fix the manifest (or restore it from its backup) and run again") \
            from None
    except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.InvalidSchemaError) as e:
        raise K8sSqlError(f"cannot validate against Kubernetes {version}: {e}", where=source) from None
    return version


def apiserver_container(pod, source: str):
    """The ``kube-apiserver`` container of a kubeadm manifest.

    Raises:
        K8sSqlError: the document is not the kube-apiserver static pod.
    """
    if not isinstance(pod, dict) or pod.get("kind") != "Pod":
        raise K8sSqlError("not a Pod manifest", where=source,
                          hint="pass the kube-apiserver static pod, e.g. /etc/kubernetes/manifests/kube-apiserver.yaml")
    for c in (pod.get("spec") or {}).get("containers") or []:
        if isinstance(c, dict) and c.get("name") == "kube-apiserver":
            return c
    raise K8sSqlError("the Pod has no container named kube-apiserver", where=source,
                      hint="pass the kube-apiserver static pod made by kubeadm")


def etcd_flags(cfg: Cluster) -> dict[str, str]:
    """kube-apiserver's flags that point it at the shim (``--etcd-servers`` and its TLS files)."""
    pki = cfg.paths.pki_dir
    return {
        "--etcd-servers": shim_endpoint(cfg),
        "--etcd-cafile": files.pki(pki, files.CA_CERT),
        "--etcd-certfile": files.pki(pki, files.APISERVER_CLIENT_CERT),
        "--etcd-keyfile": files.pki(pki, files.APISERVER_CLIENT_KEY),
    }


def _set_flags(argv: CommentedSeq, flags: dict[str, str]) -> None:
    """Replace ``--name=value`` entries in place (keeping their position), append missing ones
    in sorted position like kubeadm does."""
    todo = dict(flags)
    for i, arg in enumerate(argv):
        name = str(arg).split("=", 1)[0]
        if name in todo:
            argv[i] = f"{name}={todo.pop(name)}"
    for name, value in sorted(todo.items()):
        pos = next((i for i, a in enumerate(argv) if i > 0 and str(a).startswith("--") and str(a) > name), len(argv))
        argv.insert(pos, f"{name}={value}")


def patch_pod(pod, cfg: Cluster, source: str) -> None:
    """Add the shim sidecar, its volume and the etcd flags to a kube-apiserver Pod (in place).

    Idempotent: applying it to its own result changes nothing.

    Raises:
        K8sSqlError: as :func:`apiserver_container`; the container has no command list.
    """
    api = apiserver_container(pod, source)
    argv = api.get("command")
    if not isinstance(argv, list):
        raise K8sSqlError("the kube-apiserver container has no command list", where=source,
                          hint="pass a manifest written by kubeadm")
    _set_flags(argv, etcd_flags(cfg))
    spec = pod["spec"]
    mounts = [m.get("mountPath", "") for m in api.get("volumeMounts") or []]
    if not sidecar.covered(cfg.paths.pki_dir, mounts):
        api.setdefault("volumeMounts", CommentedSeq()).append(sidecar.apiserver_mount(cfg))
    containers = spec["containers"]
    new = sidecar.container(cfg)
    for i, c in enumerate(containers):
        if c.get("name") == sidecar.CONTAINER_NAME:
            if yamlio.plain(c) != yamlio.plain(new):
                containers[i] = new
            break
    else:
        containers.append(new)
    volumes = spec.setdefault("volumes", CommentedSeq())
    vol = sidecar.volume(cfg)
    for i, v in enumerate(volumes):
        if v.get("name") == sidecar.VOLUME_NAME:
            if yamlio.plain(v) != yamlio.plain(vol):
                volumes[i] = vol
            break
    else:
        volumes.append(vol)


def patch_text(text: str, cfg: Cluster, source: str) -> tuple[str, str]:
    """Patch the manifest ``text``; returns ``(new_text, schema_version)``. The input is
    validated first (a broken manifest is reported as such), the result after.

    Raises:
        K8sSqlError: invalid YAML, not a kube-apiserver Pod, or a schema violation.
    """
    pod = yamlio.load(text, source)
    validate(pod, source)
    patch_pod(pod, cfg, source)
    version = validate(pod, source + " (patched)")
    new = yamlio.dump(pod)
    return new, version


def is_patched(text: str, cfg: Cluster) -> bool:
    """Whether a manifest already runs this shim (sidecar and etcd flags as configured)."""
    try:
        new, _ = patch_text(text, cfg, "<manifest>")
    except K8sSqlError:
        return False
    return yamlio.plain(yamlio.load(new, "<manifest>")) == yamlio.plain(yamlio.load(text, "<manifest>"))


def apply_patch_file(manifest_text: str, patch_text_: str, source: str) -> CommentedMap:
    """What kubeadm does with a ``+strategic`` patch file: the manifest with it merged."""
    pod = yamlio.load(manifest_text, source)
    strategic_merge(pod, yamlio.load(patch_text_, "patch"))
    return pod
