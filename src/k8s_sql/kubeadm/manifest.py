"""The kube-apiserver static pod manifest: applying the shim patch, editing an existing
manifest (``k8s-sql patch-manifest``, :func:`patch_file`) and validating the result.

:func:`strategic_merge` does the part of Kubernetes' strategic merge patch that the shim
patch uses (maps merge; ``containers``/``volumes`` merge by ``name``, ``volumeMounts`` by
``mountPath``; other lists are replaced) — what kubeadm does with
``kube-apiserver+strategic.yaml``, so the patch can be checked without kubeadm.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ruamel.yaml.comments import CommentedMap, CommentedSeq

from k8s_sql.config import Cluster
from k8s_sql.errors import K8sSqlError
from k8s_sql.host import Host
from k8s_sql.kubeadm import files, sidecar, yamlio
from k8s_sql.kubeadm.config import SHIM_ENDPOINT_HOST, shim_endpoint
from k8s_sql.phases.base import backup_path, unified_diff

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

    import kubernetes_validate  # the installer's dependency only: the shim image leaves it out

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
    spec = data.get("spec") if isinstance(data, dict) else None
    containers = spec.get("containers") if isinstance(spec, dict) else None
    for c in containers if isinstance(containers, list) else []:
        if isinstance(c, dict) and c.get("name") == "kube-apiserver":
            image = str(c.get("image") or "")
    version = schema_version(image)
    import kubernetes_validate  # the installer's dependency only: the shim image leaves it out

    try:
        kubernetes_validate.validate(data, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        path = ".".join(str(p) for p in getattr(e, "path", []) or [])
        raise K8sSqlError(f"not a valid Pod for Kubernetes {version}: {path + ': ' if path else ''}{e.message}",
                          where=source, hint="fix the manifest (or restore it from its backup) and run again") \
            from None
    except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.InvalidSchemaError, KeyError, TypeError,
            OSError) as e:  # the library indexes apiVersion/kind and opens a schema file named after them
        raise K8sSqlError(f"cannot validate against Kubernetes {version}: {e!r}", where=source,
                          hint="pass a Pod manifest with apiVersion: v1 and kind: Pod") from None
    return version


def load_pod(text: str, source: str):
    """Parse and validate a kube-apiserver static pod manifest (as kubeadm writes it).

    Raises:
        K8sSqlError: not valid YAML, empty or not a mapping, not a valid Pod.
    """
    hint = "pass the kube-apiserver static pod, e.g. /etc/kubernetes/manifests/kube-apiserver.yaml"
    pod = yamlio.load_mapping(text, source, "the kube-apiserver static pod (kind: Pod)", hint)
    if pod.get("kind") != "Pod" or pod.get("apiVersion") != "v1":
        raise K8sSqlError(f"not a Pod manifest (apiVersion: {pod.get('apiVersion')!s:.40}, kind: "
                          f"{pod.get('kind')!s:.40}; a static pod has apiVersion: v1, kind: Pod)",
                          where=source, hint=hint)
    validate(pod, source)
    return pod


def apiserver_container(pod, source: str):
    """The ``kube-apiserver`` container of a kubeadm manifest.

    Raises:
        K8sSqlError: the document is not the kube-apiserver static pod.
    """
    if not isinstance(pod, dict) or pod.get("kind") != "Pod":
        raise K8sSqlError("not a Pod manifest", where=source,
                          hint="pass the kube-apiserver static pod, e.g. /etc/kubernetes/manifests/kube-apiserver.yaml")
    spec = pod.get("spec")
    containers = spec.get("containers") if isinstance(spec, dict) else None
    for c in containers if isinstance(containers, list) else []:
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
    sidecar.add_to_pod(pod["spec"], api, cfg)


def patch_text(text: str, cfg: Cluster, source: str) -> tuple[str, str]:
    """Patch the manifest ``text``; returns ``(new_text, schema_version)``. The input is
    validated first (a broken manifest is reported as such), the result after.

    Raises:
        K8sSqlError: invalid YAML, not a kube-apiserver Pod, or a schema violation.
    """
    pod = load_pod(text, source)
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


# --- k8s-sql patch-manifest ---------------------------------------------------------------

#: What every refusal that is about data says (patch-manifest only edits the manifest).
NO_DATA_MOVED = "patch-manifest does not move data"
#: The flag that accepts starting kube-apiserver on an empty datastore.
ALLOW_EMPTY_FLAG = "--allow-empty-datastore"
#: Files in ``paths.pki_dir`` the sidecar (its serving pair, its PostgreSQL client pair, the
#: CA) and kube-apiserver (its client pair for the shim) mount: they must exist before the
#: kubelet starts the patched pod.
REQUIRED_PKI = tuple(dict.fromkeys(sidecar.SIDECAR_FILES + sidecar.APISERVER_FILES))
#: kubeadm's file name for the stacked etcd static pod.
ETCD_MANIFEST = "etcd.yaml"
#: Largest file in a manifests directory that is parsed while looking for an etcd pod.
_MAX_SCAN_BYTES = 1 << 20


@dataclass(frozen=True)
class EtcdPod:
    """An etcd static pod found in a manifests directory: its file and the ports its
    ``--listen-*-urls`` flags bind (client, peer, metrics), ``(address, port)`` each."""

    path: str
    listens: tuple[tuple[str, int], ...] = ()


@dataclass
class PatchResult:
    """What :func:`patch_file` did. ``status``: ``"already patched"``, ``"would patch"``
    (dry run) or ``"patched"``. ``diff``: unified diff of the change (``""`` when none);
    ``backup``: where the previous manifest was saved (``"patched"`` only); ``notes``:
    lines the user should read (what was not moved, flags removed)."""

    status: str
    path: str
    version: str = ""
    diff: str = ""
    backup: str = ""
    notes: list[str] = field(default_factory=list)


def flag_value(container, name: str) -> str | None:
    """Value of ``--name=value`` in a container's ``command`` list, or ``None``."""
    argv = container.get("command") if isinstance(container, dict) else None
    for arg in argv if isinstance(argv, list) else []:
        key, _, value = str(arg).partition("=")
        if key == name:
            return value
    return None


def _listens(pod) -> tuple[tuple[str, int], ...]:
    """``(host, port)`` of every ``--listen-*-urls`` URL in an etcd pod's containers."""
    out = []
    for c in (pod.get("spec") or {}).get("containers") or []:
        argv = c.get("command") if isinstance(c, dict) else None
        for arg in argv if isinstance(argv, list) else []:
            key, _, value = str(arg).partition("=")
            if key.startswith("--listen-") and key.endswith("-urls"):
                for url in value.split(","):
                    try:
                        u = urlsplit(url.strip())
                        if u.port:
                            out.append((u.hostname or "", u.port))
                    except ValueError:
                        continue
    return tuple(out)


def _is_etcd_pod(doc) -> bool:
    if not isinstance(doc, dict) or doc.get("kind") != "Pod" or not isinstance(doc.get("spec"), dict):
        return False
    containers = doc["spec"].get("containers")
    for c in containers if isinstance(containers, list) else []:
        if not isinstance(c, dict):
            continue
        argv = c.get("command") if isinstance(c.get("command"), list) else []
        if c.get("name") == "etcd" or (argv and posixpath.basename(str(argv[0])) == "etcd"):
            return True
    return False


def etcd_static_pods(host: Host, manifests_dir: str) -> list[EtcdPod]:
    """Static pods in ``manifests_dir`` that run etcd: kubeadm's ``etcd.yaml`` whatever it
    holds, and any other file the kubelet would start (every non-hidden file) whose Pod has
    a container named ``etcd`` or running ``etcd``. Unreadable or unparseable files other
    than ``etcd.yaml`` are skipped (they are not pods the kubelet runs)."""
    found = []
    for name in host.listdir(manifests_dir):
        if name.startswith("."):
            continue  # the kubelet ignores hidden files
        path = posixpath.join(manifests_dir, name)
        doc = None
        try:
            info = host.stat(path)
            if info is not None and info.size <= _MAX_SCAN_BYTES:
                data = host.read_bytes(path)
                doc = yamlio.load(data.decode(), path) if data is not None else None
        except (K8sSqlError, UnicodeDecodeError):
            doc = None
        if name == ETCD_MANIFEST or _is_etcd_pod(doc):
            found.append(EtcdPod(path, _listens(doc) if _is_etcd_pod(doc) else ()))
    return found


def _overlaps(a: str, b: str) -> bool:
    """Whether two listen addresses can collide on one port (equal, or one a wildcard)."""
    wild = ("", "0.0.0.0", "::", "*")
    return a in wild or b in wild or a == b or {a, b} <= {"localhost", "127.0.0.1"}


def port_conflicts(pod: EtcdPod, cfg: Cluster) -> list[str]:
    """The shim's listeners (``shim.port`` on ``shim.listenAddress``, ``shim.metricsPort`` on
    loopback) that the etcd pod already binds, as ``"shim.port 2379"`` strings."""
    wanted = [("shim.port", cfg.shim.listen_address, cfg.shim.port),
              ("shim.metricsPort", SHIM_ENDPOINT_HOST, cfg.shim.metrics_port)]
    return [f"{field_} {port}" for field_, addr, port in wanted
            if any(p == port and _overlaps(h, addr) for h, p in pod.listens)]


def missing_pki(host: Host, cfg: Cluster) -> list[str]:
    """Names of :data:`REQUIRED_PKI` files that do not exist in ``paths.pki_dir``."""
    return [name for name in REQUIRED_PKI if not host.exists(files.pki(cfg.paths.pki_dir, name))]


def check_safe(host: Host, cfg: Cluster, path: str, api, *, allow_empty_datastore: bool) -> list[str]:
    """Refuse to point kube-apiserver at the shim when that loses the cluster's state or
    cannot work; returns notes for the user when it may go ahead.

    Checked in this order: the certificates the sidecar and kube-apiserver need exist in
    ``paths.pki_dir``; no etcd static pod beside the manifest (or in
    ``paths.manifests_dir``) and no ``--etcd-servers-overrides`` (both mean the cluster's
    data is in etcd; ``allow_empty_datastore`` accepts that); no etcd static pod binding
    the shim's ports (the sidecar could not start; not overridable).

    Raises:
        K8sSqlError: the first check that fails, with what to do.
    """
    missing = missing_pki(host, cfg)
    if missing:
        raise K8sSqlError(f"the certificates the shim sidecar and kube-apiserver need are missing: "
                          f"{', '.join(missing)}", where=cfg.paths.pki_dir,
                          hint="create them with `k8s-sql init phase pki` (and the database with "
                               "`k8s-sql init phase postgres`), then run patch-manifest again")
    dirs = dict.fromkeys([posixpath.dirname(path), cfg.paths.manifests_dir])
    pods = [p for d in dirs for p in etcd_static_pods(host, d)]
    overrides = flag_value(api, "--etcd-servers-overrides")
    reasons = [f"etcd runs as a static pod ({p.path}): the cluster's state is in that etcd" for p in pods]
    if overrides is not None:
        reasons.append(f"--etcd-servers-overrides={overrides} keeps some resources in another etcd")
    if reasons and not allow_empty_datastore:
        raise K8sSqlError(
            "refusing to point kube-apiserver at the shim: " + "; ".join(reasons)
            + f". {NO_DATA_MOVED}, so kube-apiserver would start on an empty datastore", where=path,
            hint=f"{NO_DATA_MOVED}: copy the cluster's state into PostgreSQL first. To start with an empty "
                 f"datastore anyway (the etcd data stays where it is, nothing is deleted), pass {ALLOW_EMPTY_FLAG}")
    for p in pods:
        clash = port_conflicts(p, cfg)
        if clash:
            raise K8sSqlError(
                f"etcd's static pod {p.path} listens on the port the shim sidecar needs ({', '.join(clash)}): "
                "the sidecar could not start", where=p.path,
                hint="stop etcd first: move its manifest out of the manifests directory (the kubelet stops it; "
                     "its data directory stays), or set those ports to free ones in the configuration")
    notes = []
    servers = flag_value(api, "--etcd-servers")
    if servers:
        notes.append(f"the data of the previous datastore ({servers}) is not moved: kube-apiserver starts on what "
                     "the shim's database holds")
    if overrides is not None:
        notes.append(f"--etcd-servers-overrides={overrides} is removed: those resources are stored in the shim too")
    return notes


def _drop_flag(container, name: str) -> None:
    argv = container.get("command")
    for i in reversed(range(len(argv))):
        if str(argv[i]).partition("=")[0] == name:
            del argv[i]


def patch_file(host: Host, cfg: Cluster, path: str, *, dry_run: bool = False,
               allow_empty_datastore: bool = False) -> PatchResult:
    """``k8s-sql patch-manifest``: add the shim sidecar to the kube-apiserver static pod at
    ``path`` on ``host`` and point its etcd flags at the shim (see :func:`patch_pod`).

    Refuses what :func:`check_safe` refuses (a dry run too: it shows what a real run
    would do). Writes nothing on error, when nothing changes, or with ``dry_run``. The
    backup goes to ``paths.backup_dir`` (never the manifests directory: the kubelet would
    start it as a pod); the new file is written through a temporary file in
    ``/etc/kubernetes/tmp`` (beside the manifests directory, like kubeadm's own) and
    renamed into place, keeping the old file's mode and owner.

    Raises:
        K8sSqlError: missing or unreadable file, not text, invalid YAML, not the
            kube-apiserver Pod, schema errors, a refused check, an unwritable directory.
    """
    raw = host.read_bytes(path)
    if raw is None:
        raise K8sSqlError("the manifest does not exist", where=path,
                          hint="pass the kube-apiserver static pod with --manifest")
    try:
        old = raw.decode()
    except UnicodeDecodeError:
        raise K8sSqlError("the manifest is not a text file", where=path,
                          hint="pass the kube-apiserver static pod with --manifest") from None
    pod = load_pod(old, path)
    api = apiserver_container(pod, path)
    before = yamlio.plain(pod)
    probe = load_pod(old, path)
    patch_pod(probe, cfg, path)
    if yamlio.plain(probe) == before:
        return PatchResult("already patched", path)
    notes = check_safe(host, cfg, path, api, allow_empty_datastore=allow_empty_datastore)
    if flag_value(api, "--etcd-servers-overrides") is not None:
        _drop_flag(api, "--etcd-servers-overrides")
    patch_pod(pod, cfg, path)
    version = validate(pod, path + " (patched)")
    new = yamlio.dump(pod)
    diff = unified_diff(path, raw, new.encode())
    if dry_run:
        return PatchResult("would patch", path, version, diff, notes=notes)
    info = host.stat(path)
    try:
        backup = backup_path(host, path, raw, cfg.paths.backup_dir)
        tmp_dir = posixpath.join(posixpath.dirname(posixpath.dirname(path.rstrip("/"))) or "/", "tmp")
        host.write_bytes(path, new.encode(), mode=info.mode if info else 0o600, owner=info.owner if info else None,
                         group=info.group if info else None, tmp_dir=tmp_dir)
    except OSError as e:
        raise K8sSqlError(f"cannot write: {e.strerror}", where=getattr(e, "filename", None) or path,
                          hint="run as root, and check that the directory is writable") from None
    return PatchResult("patched", path, version, diff, backup, notes)
