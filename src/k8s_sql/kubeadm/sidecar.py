"""The etcd shim as a sidecar container of the kube-apiserver static pod — its one
definition, used by the kubeadm patch and by ``k8s-sql patch-manifest``.

The skeleton (name, resources, securityContext, probe timings, the shape of its volumes)
is ``templates/shim/sidecar.yaml``; this module fills image, command line, probes and
volumes for the chosen shim (``shim.kind``).

Least privilege: the sidecar mounts exactly the files it reads (:data:`SIDECAR_FILES`: the
CA certificate, its serving pair, its PostgreSQL client pair), each read-only as its own
hostPath volume of type ``File`` at its path in ``paths.pkiDir`` — never the directory, so
never the CA key or PostgreSQL's server key. Its keys are readable by ``shim.runAsUser``
because the pki phase makes that uid their owner (mode 0600).

The shims:

* ``k8s-sql``: our shim, with etcd's flag names (``--listen-client-urls``, ``--cert-file``,
  ``--trusted-ca-file``, ``--client-cert-auth``...) and HTTP ``/health`` on the loopback
  metrics address.
* ``kine``: upstream Kine (k3s-io/kine), with its own flag names. ``--trusted-ca-file``
  (client-certificate auth on its etcd endpoint) exists only in recent Kine releases;
  older ones refuse it as an unknown flag, so ``shim.kineImage`` must be such a release.
  Kine has no HTTP health endpoint, and its metrics listener takes the server TLS
  settings (client certificates included) unless ``--metrics-ignore-tls-config``, so an
  HTTP probe cannot reach it: its probes are ``tcpSocket`` on its client port.
"""

from __future__ import annotations

import posixpath
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from ruamel.yaml.comments import CommentedMap, CommentedSeq

from k8s_sql.config import Cluster
from k8s_sql.kubeadm import files, yamlio
from k8s_sql.kubeadm.config import SHIM_ENDPOINT_HOST
from k8s_sql.resources import template_path
from k8s_sql.shim.settings import go_duration

#: Name of the sidecar container in the kube-apiserver pod.
CONTAINER_NAME = "etcd-shim"
#: The volume of earlier releases: the whole pki directory (CA key included). ``patch-manifest``
#: removes it, and the mounts of it.
LEGACY_VOLUME_NAME = "k8s-sql-pki"
#: The files the sidecar reads, each mounted on its own (both shims read the same ones).
SIDECAR_FILES = (files.CA_CERT, files.SHIM_SERVER_CERT, files.SHIM_SERVER_KEY, files.SHIM_PG_CLIENT_CERT,
                 files.SHIM_PG_CLIENT_KEY)
#: The files kube-apiserver reads to reach the shim; mounted into it (the same way) only when
#: ``paths.pkiDir`` is outside kubeadm's ``/etc/kubernetes/pki`` mount.
APISERVER_FILES = (files.CA_CERT, files.APISERVER_CLIENT_CERT, files.APISERVER_CLIENT_KEY)
#: The kube-apiserver container's certificate mount made by kubeadm (``k8s-certs``).
KUBEADM_PKI_MOUNT = "/etc/kubernetes/pki"
#: File name of the kubeadm patch (target ``kube-apiserver``, strategic merge).
PATCH_FILE = "kube-apiserver+strategic.yaml"


def _template() -> CommentedMap:
    path = template_path("shim", "sidecar.yaml")
    return yamlio.load(path.read_text(), str(path), keep_quotes=False)


def datastore_uri(cfg: Cluster) -> str:
    """libpq URI the shim connects with: certificate login as ``postgres.role``,
    ``sslmode=verify-full`` against the datastore CA. No password, ever.

    For ``postgres.mode: external`` the host, port and database of ``postgres.uri`` are
    kept and its TLS parameters replaced by the shim's files (a multi-host URI keeps every
    host and its ``target_session_attrs``). With ``postgres.ha.enabled`` every node of
    ``postgres.ha.nodes`` with ``target_session_attrs=read-write`` (:func:`k8s_sql.pg.ha.shim_uri`).
    """
    pki = cfg.paths.pki_dir
    tls = {
        "sslmode": "verify-full",
        "sslrootcert": files.pki(pki, files.CA_CERT),
        "sslcert": files.pki(pki, files.SHIM_PG_CLIENT_CERT),
        "sslkey": files.pki(pki, files.SHIM_PG_CLIENT_KEY),
    }
    role = quote(cfg.postgres.role)
    if cfg.postgres.mode == "external" and cfg.postgres.uri:
        u = urlsplit(cfg.postgres.uri)
        hostport = u.netloc.rsplit("@", 1)[-1]
        query = {k: v for k, v in parse_qsl(u.query) if k not in tls and k != "password"}
        query.update(tls)
        return urlunsplit(("postgresql", f"{role}@{hostport}", u.path or f"/{cfg.postgres.database}",
                           urlencode(query, safe="/"), ""))
    if cfg.postgres.ha.enabled:  # every node, libpq finds the primary (README "HA")
        from k8s_sql.pg import ha

        return ha.shim_uri([ha.parse_node(h, cfg.postgres.ha.port) for h in cfg.postgres.ha.nodes], cfg.postgres.database,
                           cfg.postgres.role, tls["sslrootcert"], tls["sslcert"], tls["sslkey"])
    host = cfg.postgres.host
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return (f"postgresql://{role}@{host}:{cfg.postgres.port}/{quote(cfg.postgres.database)}?"
            + urlencode(tls, safe="/"))


def _kine_compaction(interval: str) -> list[str]:
    """Kine's compaction flag: ``0`` (k8s-sql's default: kube-apiserver compacts) is left
    out, so Kine keeps its own default interval. Kine releases before k3s-io/kine#513 do not
    honour kube-apiserver's Compact requests, and some panic on a zero interval."""
    return [] if go_duration(interval) == 0 else [f"--compact-interval={interval}"]


def _kine_endpoint(cfg: Cluster) -> str:
    """Kine's ``--endpoint``: the same server, with TLS files given by --ca-file etc."""
    u = urlsplit(datastore_uri(cfg))
    query = {k: v for k, v in parse_qsl(u.query) if k == "sslmode"}
    return urlunsplit(("postgres", u.netloc, u.path, urlencode(query), ""))


def command_line(cfg: Cluster) -> tuple[list[str] | None, list[str]]:
    """``(command, args)`` of the sidecar for ``shim.kind``; command ``None`` = the image's entrypoint."""
    pki = cfg.paths.pki_dir
    s = cfg.shim
    listen = f"{s.listen_address}:{s.port}"
    if s.kind == "kine":
        return None, [
            f"--listen-address={listen}",
            f"--endpoint={_kine_endpoint(cfg)}",
            f"--ca-file={files.pki(pki, files.CA_CERT)}",
            f"--cert-file={files.pki(pki, files.SHIM_PG_CLIENT_CERT)}",
            f"--key-file={files.pki(pki, files.SHIM_PG_CLIENT_KEY)}",
            f"--server-cert-file={files.pki(pki, files.SHIM_SERVER_CERT)}",
            f"--server-key-file={files.pki(pki, files.SHIM_SERVER_KEY)}",
            f"--trusted-ca-file={files.pki(pki, files.CA_CERT)}",
            f"--metrics-bind-address={SHIM_ENDPOINT_HOST}:{s.metrics_port}",
            f"--watch-progress-notify-interval={s.watch_progress_notify_interval}",
        ] + _kine_compaction(s.compaction_interval)
    return ["k8s-sql"], [
        "shim",
        "serve",
        f"--listen-client-urls=https://{listen}",
        f"--cert-file={files.pki(pki, files.SHIM_SERVER_CERT)}",
        f"--key-file={files.pki(pki, files.SHIM_SERVER_KEY)}",
        f"--trusted-ca-file={files.pki(pki, files.CA_CERT)}",
        "--client-cert-auth",
        f"--datastore={datastore_uri(cfg)}",
        f"--metrics-addr=http://{SHIM_ENDPOINT_HOST}:{s.metrics_port}",
        f"--watch-progress-notify-interval={s.watch_progress_notify_interval}",
        f"--compaction-interval={s.compaction_interval}",
    ]


def _probe_action(cfg: Cluster) -> CommentedMap:
    if cfg.shim.kind == "kine":
        return CommentedMap(tcpSocket=CommentedMap(host=SHIM_ENDPOINT_HOST, port=cfg.shim.port))
    return CommentedMap(httpGet=CommentedMap(host=SHIM_ENDPOINT_HOST, path="/health",
                                             port=cfg.shim.metrics_port, scheme="HTTP"))


def container(cfg: Cluster) -> CommentedMap:
    """The sidecar container (a Kubernetes ``Container`` mapping) for ``cfg``."""
    t = _template()
    c = t["container"]
    c["image"] = cfg.shim_image
    command, args = command_line(cfg)
    if command:
        c.insert(list(c).index("args"), "command", CommentedSeq(command))
    c["args"] = CommentedSeq(args)
    sc = c["securityContext"]
    sc["runAsUser"] = cfg.shim.run_as_user
    sc["runAsGroup"] = cfg.shim.run_as_user
    c["volumeMounts"] = CommentedSeq(_mount(cfg, name) for name in SIDECAR_FILES)
    for name, timing in t["probes"].items():
        probe = _probe_action(cfg)
        probe.update(timing)
        c[name] = probe
    return c


def volume_name(name: str) -> str:
    """The volume of file ``name`` of the pki directory: ``ca.crt`` -> ``k8s-sql-ca-crt``
    (a DNS label, as volume names must be)."""
    return "k8s-sql-" + name.replace(".", "-")


#: Every volume name k8s-sql puts in the kube-apiserver pod (the legacy one included).
VOLUME_NAMES = frozenset([LEGACY_VOLUME_NAME, *map(volume_name, SIDECAR_FILES + APISERVER_FILES)])


def _mount(cfg: Cluster, name: str) -> CommentedMap:
    m = _template()["mount"]
    m["name"] = volume_name(name)
    m["mountPath"] = files.pki(cfg.paths.pki_dir, name)
    return m


def _volume(cfg: Cluster, name: str) -> CommentedMap:
    v = _template()["volume"]
    v["name"] = volume_name(name)
    v["hostPath"]["path"] = files.pki(cfg.paths.pki_dir, name)
    return v


def apiserver_mounts(cfg: Cluster) -> list[CommentedMap]:
    """The read-only mounts of :data:`APISERVER_FILES` for the kube-apiserver container
    (needed when ``paths.pki_dir`` is not inside one of its own mounts)."""
    return [_mount(cfg, name) for name in APISERVER_FILES]


def volumes(cfg: Cluster, apiserver: bool | None = None) -> list[CommentedMap]:
    """The hostPath ``File`` volumes (Kubernetes ``Volume`` mappings) of :data:`SIDECAR_FILES`
    and, when ``apiserver`` (default: ``paths.pki_dir`` outside kubeadm's mount), of
    :data:`APISERVER_FILES` for kube-apiserver; each file once."""
    if apiserver is None:
        apiserver = not covered(cfg.paths.pki_dir, [KUBEADM_PKI_MOUNT])
    names = SIDECAR_FILES + (APISERVER_FILES if apiserver else ())
    return [_volume(cfg, name) for name in dict.fromkeys(names)]


def covered(path: str, mounts: list[str]) -> bool:
    """Whether ``path`` is inside one of the ``mounts`` (mount paths)."""
    path = posixpath.normpath(path)
    return any(path == m or path.startswith(m.rstrip("/") + "/") for m in map(posixpath.normpath, mounts))


def add_to_pod(spec, api, cfg: Cluster) -> None:
    """Put the sidecar into a kube-apiserver Pod ``spec`` whose kube-apiserver container is
    ``api`` (in place; for ``patch-manifest``): the sidecar container, its volumes, and the
    mounts of :data:`APISERVER_FILES` into ``api`` unless its own mounts cover
    ``paths.pki_dir``. Replaces what an earlier run put there (the legacy whole-directory
    volume included). Idempotent: applying it to its own result changes nothing."""
    mounts = api.setdefault("volumeMounts", CommentedSeq())
    mounts[:] = [m for m in mounts if not (isinstance(m, dict) and m.get("name") in VOLUME_NAMES)]
    apiserver = not covered(cfg.paths.pki_dir, [m.get("mountPath", "") for m in mounts if isinstance(m, dict)])
    if apiserver:
        mounts.extend(apiserver_mounts(cfg))
    containers = spec["containers"]
    new = container(cfg)
    for i, c in enumerate(containers):
        if isinstance(c, dict) and c.get("name") == CONTAINER_NAME:
            if yamlio.plain(c) != yamlio.plain(new):
                containers[i] = new
            break
    else:
        containers.append(new)
    vols = spec.get("volumes")
    if not isinstance(vols, list):
        vols = spec["volumes"] = CommentedSeq()
    wanted = {v["name"]: v for v in volumes(cfg, apiserver)}
    kept = []
    for v in vols:
        name = v.get("name") if isinstance(v, dict) else None
        if name not in VOLUME_NAMES:
            kept.append(v)
        elif name in wanted:  # keep its place (and its comments) when unchanged
            kept.append(v if yamlio.plain(v) == yamlio.plain(wanted[name]) else wanted[name])
    present = {v.get("name") for v in kept if isinstance(v, dict)}
    vols[:] = kept + [v for name, v in wanted.items() if name not in present]


def patch(cfg: Cluster) -> CommentedMap:
    """The kubeadm patch for target ``kube-apiserver`` (a partial Pod, strategic merge):
    adds the sidecar and its volumes; mounts :data:`APISERVER_FILES` into kube-apiserver
    too when ``paths.pki_dir`` is outside kubeadm's ``/etc/kubernetes/pki`` mount."""
    containers = CommentedSeq([container(cfg)])
    apiserver = not covered(cfg.paths.pki_dir, [KUBEADM_PKI_MOUNT])
    if apiserver:
        containers.append(CommentedMap(name="kube-apiserver", volumeMounts=CommentedSeq(apiserver_mounts(cfg))))
    doc = CommentedMap()
    doc["apiVersion"] = "v1"
    doc["kind"] = "Pod"
    doc["metadata"] = CommentedMap(name="kube-apiserver", namespace="kube-system")
    doc["spec"] = CommentedMap(containers=containers, volumes=CommentedSeq(volumes(cfg, apiserver)))
    return doc


def patch_text(cfg: Cluster) -> str:
    """:func:`patch` as the text of ``<patches_dir>/kube-apiserver+strategic.yaml``."""
    head = ("# Written by k8s-sql: adds the etcd shim sidecar to the kube-apiserver static pod.\n"
            "# kubeadm applies it only when given this directory: init (InitConfiguration.patches),\n"
            "# join and upgrade (--patches, or UpgradeConfiguration apply/node.patches); `k8s-sql upgrade`\n"
            "# passes it. A plain `kubeadm upgrade` writes kube-apiserver.yaml without the shim.\n")
    return head + yamlio.dump(patch(cfg))
