"""The etcd shim as a sidecar container of the kube-apiserver static pod — its one
definition, used by the kubeadm patch and by ``k8s-sql patch-manifest``.

The skeleton (name, resources, securityContext, probe timings, the read-only pki volume)
is ``templates/shim/sidecar.yaml``; this module fills image, command line and probes for
the chosen shim (``shim.kind``):

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

#: Name of the sidecar container and of its pki volume in the kube-apiserver pod.
CONTAINER_NAME = "etcd-shim"
VOLUME_NAME = "k8s-sql-pki"
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
    kept and its TLS parameters replaced by the shim's files.
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
    host = cfg.postgres.host
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return (f"postgresql://{role}@{host}:{cfg.postgres.port}/{quote(cfg.postgres.database)}?"
            + urlencode(tls, safe="/"))


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
            f"--compact-interval={s.compaction_interval}",
        ]
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
    c["volumeMounts"][0]["mountPath"] = cfg.paths.pki_dir
    for name, timing in t["probes"].items():
        probe = _probe_action(cfg)
        probe.update(timing)
        c[name] = probe
    return c


def volume(cfg: Cluster) -> CommentedMap:
    """The read-only hostPath volume of ``paths.pki_dir`` (a Kubernetes ``Volume``)."""
    v = _template()["volume"]
    v["hostPath"]["path"] = cfg.paths.pki_dir
    return v


def apiserver_mount(cfg: Cluster) -> CommentedMap:
    """The mount kube-apiserver needs for its shim client certificate (same volume)."""
    return CommentedMap(mountPath=cfg.paths.pki_dir, name=VOLUME_NAME, readOnly=True)


def covered(path: str, mounts: list[str]) -> bool:
    """Whether ``path`` is inside one of the ``mounts`` (mount paths)."""
    path = posixpath.normpath(path)
    return any(path == m or path.startswith(m.rstrip("/") + "/") for m in map(posixpath.normpath, mounts))


def patch(cfg: Cluster) -> CommentedMap:
    """The kubeadm patch for target ``kube-apiserver`` (a partial Pod, strategic merge):
    adds the sidecar and its volume; mounts the volume into kube-apiserver too when
    ``paths.pki_dir`` is outside kubeadm's ``/etc/kubernetes/pki`` mount."""
    containers = CommentedSeq([container(cfg)])
    if not covered(cfg.paths.pki_dir, [KUBEADM_PKI_MOUNT]):
        containers.append(CommentedMap(name="kube-apiserver", volumeMounts=CommentedSeq([apiserver_mount(cfg)])))
    doc = CommentedMap()
    doc["apiVersion"] = "v1"
    doc["kind"] = "Pod"
    doc["metadata"] = CommentedMap(name="kube-apiserver", namespace="kube-system")
    doc["spec"] = CommentedMap(containers=containers, volumes=CommentedSeq([volume(cfg)]))
    return doc


def patch_text(cfg: Cluster) -> str:
    """:func:`patch` as the text of ``<patches_dir>/kube-apiserver+strategic.yaml``."""
    head = ("# Written by k8s-sql: adds the etcd shim sidecar to the kube-apiserver static pod.\n"
            "# kubeadm applies it (init, upgrade) when it writes the manifest.\n")
    return head + yamlio.dump(patch(cfg))
