"""``k8s-sql status``: one look at every part of a node, each probed on its own.

Every probe runs through the node's :class:`~k8s_sql.host.Host` (so ``--host`` works) and
turns any failure into ``up: False`` with a reason; nothing here raises for a part that is
down. Sources:

- PostgreSQL: ``psql`` as the ``postgres`` OS user over the Unix socket
  (``postgres.socketDir``/``port``): ``SHOW ssl``, ``pg_database_size``, and the shim's
  tables (``kv`` keys, ``log`` rows = revisions kept, ``meta`` revision/compact_revision);
- the shim: its HTTP endpoint on ``127.0.0.1:shim.metricsPort`` — ``/health`` and
  ``/version`` as etcd serves them, and the revisions from ``/metrics``
  (``etcd_debugging_mvcc_current_revision``, ``..._compact_revision``);
- the API server: ``kubectl get --raw /readyz`` and ``kubectl get nodes -o json`` with
  ``paths.kubeconfig``;
- certificates: the datastore certificates as ``k8s-sql certs check-expiration`` reads
  them, and every ``*.crt`` of kubeadm's ``/etc/kubernetes/pki`` with its notAfter.

Which parts must be up depends on the node (:func:`node_role`, read from its files): on a
control-plane node the shim and the API server, and PostgreSQL when it is this node's; on a
worker none of them. ``collect()["down"]`` lists the expected parts that are not up — what
makes ``k8s-sql status`` exit 1.
"""

from __future__ import annotations

import datetime as dt
import json
import posixpath
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from k8s_sql.config import Cluster
from k8s_sql.errors import K8sSqlError
from k8s_sql.host import Host, Result
from k8s_sql.kubeadm import sidecar, yamlio
from k8s_sql.pg.cluster import psql
from k8s_sql.pki import files
from k8s_sql.pki.expiry import inspect as inspect_datastore_certs
from k8s_sql.pki.expiry import load_certificate

KUBEADM_PKI = "/etc/kubernetes/pki"
#: The parts ``status`` probes, as keys of :func:`collect`'s dict, in the order it shows them.
PARTS = ("postgres", "shim", "apiserver")


@dataclass(frozen=True)
class NodeRole:
    """What k8s-sql runs on a node, read from the node's files by :func:`node_role`.

    ``kind``: ``control-plane`` (kubeadm's kube-apiserver static pod is there), ``worker``
    (kubeadm's ``kubelet.conf`` without that pod) or ``new`` (neither: nothing is set up
    yet, so everything ``k8s-sql init`` would run is expected). ``postgres``: where the
    shim's PostgreSQL is — ``local`` (this node's), ``remote`` (another node's, as after
    ``k8s-sql join --control-plane``; ``postgres_host`` names it), ``external``
    (``postgres.mode: external``) or ``none`` (a worker has no shim).
    """

    kind: str
    postgres: str
    postgres_host: str | None = None

    @property
    def expected(self) -> tuple[str, ...]:
        """The parts (of :data:`PARTS`) that must be up on this node."""
        if self.kind == "worker":
            return ()
        return tuple(p for p in PARTS if p != "postgres" or self.postgres == "local")

    @property
    def needed_certificates(self) -> frozenset[str]:
        """The datastore certificates (file names) this node uses: none on a worker; all but
        PostgreSQL's serving certificate when PostgreSQL is not this node's (``join
        --control-plane`` does not copy it)."""
        if self.kind == "worker":
            return frozenset()
        return frozenset(n for n in files.ALL_CERTS if n != files.POSTGRES_SERVER_CERT or self.postgres == "local")

    def absent(self, part: str) -> str:
        """Why ``part`` is not expected here (shown instead of probing it)."""
        if self.kind == "worker":
            return "not on this node: a worker (kubelet.conf, no kube-apiserver static pod)"
        if self.postgres == "external":
            return "external server (postgres.uri): not probed from the node"
        return f"not on this node: the shim's PostgreSQL is on {self.postgres_host}"


def _shim_datastore_host(manifest_text: str, source: str) -> str | None:
    """The host the etcd-shim sidecar of a kube-apiserver manifest connects to (``--datastore``
    of ours, ``--endpoint`` of Kine; ``""`` for a Unix socket), or ``None`` without a sidecar."""
    try:
        pod = yamlio.load(manifest_text, source)
    except K8sSqlError:
        return None
    spec = pod.get("spec") if isinstance(pod, dict) else None
    containers = spec.get("containers") if isinstance(spec, dict) else None
    for c in containers if isinstance(containers, list) else []:
        if not isinstance(c, dict) or c.get("name") != sidecar.CONTAINER_NAME:
            continue
        for arg in c.get("args") or []:
            name, _, value = str(arg).partition("=")
            if name in ("--datastore", "--endpoint"):
                if "://" in value:
                    return urlsplit(value).hostname or ""
                m = re.search(r"(?:^|\s)host=(\S+)", value)
                return m.group(1) if m else ""
    return None


def node_role(host: Host, cfg: Cluster) -> NodeRole:
    """What runs on the node (see :class:`NodeRole`), from kubeadm's files: the kube-apiserver
    static pod in ``paths.manifestsDir`` (and where its etcd-shim sidecar's datastore is),
    ``kubelet.conf`` beside ``paths.kubeconfig``. A datastore on loopback, a Unix socket or
    ``postgres.host`` is this node's PostgreSQL."""
    external = cfg.postgres.mode == "external"
    manifest = posixpath.join(cfg.paths.manifests_dir, "kube-apiserver.yaml")
    try:
        text = host.read_text(manifest)
    except (K8sSqlError, UnicodeDecodeError):
        text = ""  # there but unreadable: still a control plane
    if text is None:
        if host.exists(posixpath.join(posixpath.dirname(cfg.paths.kubeconfig), "kubelet.conf")):
            return NodeRole("worker", "none")
        return NodeRole("new", "external" if external else "local")
    if external:
        return NodeRole("control-plane", "external")
    where = _shim_datastore_host(text, manifest)
    if where is None or where in ("", "localhost", "127.0.0.1", "::1", cfg.postgres.host) or where.startswith("/"):
        return NodeRole("control-plane", "local")
    return NodeRole("control-plane", "remote", where)


def _reason(res: Result) -> str:
    text = " ".join(line.strip() for line in (res.stderr or res.stdout).strip().splitlines())
    return text[:300] if text else f"exit {res.returncode}"


def postgres_status(host: Host, cfg: Cluster) -> dict:
    """``{"up", "tls", "database", "database_bytes", "keys", "revisions_kept", "revision",
    "compact_revision", "reason"}`` (sizes in bytes; counts of rows)."""
    pg = cfg.postgres
    out: dict = {"up": False, "database": pg.database}
    if pg.mode == "external":
        out["reason"] = "external server (postgres.uri): not probed from the node"
        return out
    try:
        res = psql(host, cfg, f"SHOW ssl; SELECT pg_database_size(datname) FROM pg_database "
                   f"WHERE datname = '{pg.database}'", check=False)
    except K8sSqlError as e:
        out["reason"] = e.what
        return out
    if not res.ok:
        out["reason"] = _reason(res)
        return out
    lines = res.stdout.split()
    out.update(up=True, tls=lines[0] == "on")
    if len(lines) < 2:
        out["reason"] = f"database {pg.database} does not exist"
        return out
    out["database_bytes"] = int(lines[1])
    res = psql(host, cfg, "SELECT (SELECT count(*) FROM kv), (SELECT count(*) FROM log), revision, "
               "compact_revision FROM meta", db=pg.database, check=False)
    if res.ok and res.stdout.strip():
        keys, log, rev, compact = (int(v) for v in res.stdout.strip().split("|"))
        out.update(keys=keys, revisions_kept=log, revision=rev, compact_revision=compact)
    else:
        out["reason"] = "the shim's tables are not there yet (the shim creates them on its first start)"
    return out


def _curl(host: Host, url: str) -> Result:
    return host.run(["curl", "-sS", "--max-time", "5", "-o", "-", "-w", "\n%{http_code}", url], check=False,
                    timeout=15)


def _metric(text: str, name: str) -> int | None:
    m = re.search(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+]+)$", text, re.M)
    return int(float(m.group(1))) if m else None


def shim_status(host: Host, cfg: Cluster) -> dict:
    """``{"up", "health", "version", "cluster_version", "revision", "compact_revision",
    "endpoint", "reason"}`` from the shim's HTTP endpoint on the node."""
    base = f"http://127.0.0.1:{cfg.shim.metrics_port}"
    out: dict = {"up": False, "endpoint": f"https://{cfg.shim.listen_address}:{cfg.shim.port}"}
    try:
        res = _curl(host, base + "/health")
    except K8sSqlError as e:
        out["reason"] = e.what
        return out
    body, _, code = res.stdout.rpartition("\n")
    if not res.ok or not code.isdigit() or code == "000":
        out["reason"] = f"no answer on {base}: {_reason(res)}"
        return out
    try:
        health = json.loads(body)
    except ValueError:
        out["reason"] = f"{base}/health answered {code} without etcd's JSON"
        return out
    out["health"] = health.get("health") == "true"
    out["up"] = out["health"]
    if not out["health"]:
        out["reason"] = health.get("reason") or f"/health answered {code}"
    res = _curl(host, base + "/version")
    body, _, code = res.stdout.rpartition("\n")
    if code == "200":
        v = json.loads(body)
        out.update(version=v.get("etcdserver"), cluster_version=v.get("etcdcluster"))
    res = _curl(host, base + "/metrics")
    body, _, code = res.stdout.rpartition("\n")
    if code == "200":
        out["revision"] = _metric(body, "etcd_debugging_mvcc_current_revision")
        out["compact_revision"] = _metric(body, "etcd_debugging_mvcc_compact_revision")
    return out


def _kubectl(host: Host, cfg: Cluster, *args: str) -> Result:
    return host.run(["kubectl", "--kubeconfig", cfg.paths.kubeconfig, "--request-timeout=5s", *args],
                    check=False, timeout=30)


def apiserver_status(host: Host, cfg: Cluster) -> tuple[dict, list[dict]]:
    """``({"up", "readyz", "reason"}, [{"name", "ready", "roles", "version"}])``."""
    api: dict = {"up": False}
    if not host.exists(cfg.paths.kubeconfig):
        api["reason"] = f"{cfg.paths.kubeconfig} does not exist (kubeadm init has not run)"
        return api, []
    try:
        res = _kubectl(host, cfg, "get", "--raw", "/readyz")
    except K8sSqlError as e:
        api["reason"] = e.what
        return api, []
    api["readyz"] = res.stdout.strip() or None
    api["up"] = res.ok and res.stdout.strip() == "ok"
    if not api["up"]:
        api["reason"] = _reason(res)
        return api, []
    res = _kubectl(host, cfg, "get", "nodes", "-o", "json")
    nodes = []
    if res.ok:
        for item in json.loads(res.stdout).get("items", []):
            conds = {c["type"]: c["status"] for c in item.get("status", {}).get("conditions", [])}
            labels = item.get("metadata", {}).get("labels", {})
            roles = sorted(k.split("/", 1)[1] for k in labels if k.startswith("node-role.kubernetes.io/"))
            nodes.append({"name": item["metadata"]["name"], "ready": conds.get("Ready") == "True",
                          "roles": roles, "version": item.get("status", {}).get("nodeInfo", {}).get("kubeletVersion")})
    return api, nodes


def _listdir(host: Host, path: str) -> list[str]:
    try:
        return host.listdir(path)
    except OSError:  # a file, not a directory
        return []


def certificates(host: Host, cfg: Cluster, now: dt.datetime | None = None, *,
                 needed: frozenset[str] = frozenset(files.ALL_CERTS), kubeadm_pki: str = KUBEADM_PKI) -> list[dict]:
    """``[{"path", "state" (ok, missing, invalid), "not_after" (ISO 8601, UTC), "days_left"}]``:
    the datastore certificates of ``paths.pkiDir`` (``certs check-expiration``'s data; a
    missing one only when it is ``needed``, see :attr:`NodeRole.needed_certificates`), then
    every ``*.crt`` of kubeadm's pki dir ``kubeadm_pki`` (one level of subdirectories).
    Certificates with serial number 0 (CAs of kubeadm before 1.28) are read like any other."""
    now = now or dt.datetime.now(dt.timezone.utc)
    out = []
    for row in inspect_datastore_certs(host, cfg.paths.pki_dir, now):
        if row["state"] == "missing" and row["name"] not in needed:
            continue
        secs = row["residual_seconds"]
        out.append({"path": row["path"], "state": row["state"], "not_after": row["expires"],
                    "days_left": None if secs is None else secs // 86400})
    seen = {c["path"] for c in out}
    base = kubeadm_pki
    dirs = [base] + [posixpath.join(base, d) for d in _listdir(host, base) if not d.endswith((".crt", ".key"))]
    for d in dirs:
        for name in _listdir(host, d):
            path = posixpath.join(d, name)
            if not name.endswith(".crt") or path in seen:
                continue
            try:
                end = load_certificate(host.read_bytes(path) or b"").not_valid_after_utc
            except (ValueError, K8sSqlError):
                out.append({"path": path, "state": "invalid", "not_after": None, "days_left": None})
                continue
            out.append({"path": path, "state": "ok", "not_after": end.isoformat(), "days_left": (end - now).days})
    return out


def postgres_ha_status(host: Host, cfg: Cluster) -> dict:
    """With ``postgres.ha.enabled``: the formation as its monitor sees it (``pg_autoctl show
    state --json`` run as the postgres OS user, which owns the node certificate):
    ``{"up": a primary is there, "primary": name, "nodes": [{"name", "host", "port", "role",
    "state", "healthy", "lag_bytes"}], "reason"}``; lag in bytes of WAL behind the primary's
    reported LSN (see :func:`k8s_sql.pg.ha.parse_state`)."""
    from k8s_sql.pg import ha

    pg, pki = cfg.postgres, cfg.paths.pki_dir
    tls = ha.node_tls(pki, files.path(pki, files.POSTGRES_SERVER_CERT), files.path(pki, files.POSTGRES_SERVER_KEY),
                      files.path(pki, files.CA_CERT))
    first = ha.parse_node(pg.ha.nodes[0], pg.ha.port)[0] if pg.ha.nodes else ""
    monitor = ha.monitor_uri(first, pg.ha.monitor_port, tls) if first else ""
    out: dict = {"up": False, "nodes": [], "monitor": f"{first}:{pg.ha.monitor_port}" if monitor else ""}
    if not monitor:
        out["reason"] = "postgres.ha.nodes is empty"
        return out
    res = host.run(ha.show_state_argv(monitor), user="postgres", check=False, timeout=30,
                   env=ha.ssl_env(tls))
    if not res.ok:
        out["reason"] = f"monitor: {_reason(res)}"
        return out
    try:
        nodes = ha.parse_state(res.stdout)
    except ValueError as e:
        out["reason"] = f"monitor: {e}"
        return out
    out["nodes"] = [{"name": n.name, "host": n.host, "port": n.port, "role": n.role,
                     "state": f"{n.reported}/{n.assigned}", "healthy": n.healthy, "lag_bytes": n.lag_bytes}
                    for n in nodes]
    primaries = [n.name for n in nodes if n.role == "primary"]
    out["up"] = len(primaries) == 1
    out["primary"] = primaries[0] if primaries else None
    if not primaries:
        out["reason"] = "no primary (a failover in progress, or too few nodes left)"
    return out


def collect(host: Host, cfg: Cluster) -> dict:
    """Everything ``k8s-sql status`` shows, as one JSON-able dict (``--output json``):
    ``host``; ``role`` (``{"kind", "postgres", "postgres_host"}``, see :class:`NodeRole`);
    ``postgres``, ``shim``, ``apiserver`` (each with ``up``, ``expected`` and a ``reason``
    when down; a part not expected on this node is not probed); ``nodes``;
    ``certificates``; ``down`` (the expected parts that are not up, in :data:`PARTS` order)."""
    role = node_role(host, cfg)
    parts: dict[str, dict] = {}
    nodes: list[dict] = []
    for part in PARTS:
        if part not in role.expected:
            parts[part] = {"up": False, "expected": False, "reason": role.absent(part)}
            continue
        if part == "postgres":
            parts[part] = postgres_status(host, cfg)
        elif part == "shim":
            parts[part] = shim_status(host, cfg)
        else:
            parts[part], nodes = apiserver_status(host, cfg)
        parts[part]["expected"] = True
    ha = {"postgres_ha": postgres_ha_status(host, cfg)} if cfg.postgres.ha.enabled and role.kind != "worker" else {}
    return {"host": host.name,
            "role": {"kind": role.kind, "postgres": role.postgres, "postgres_host": role.postgres_host},
            **parts, "nodes": nodes, **ha,
            "certificates": certificates(host, cfg, needed=role.needed_certificates),
            "down": [p for p in PARTS if parts[p]["expected"] and not parts[p]["up"]]
            + (["postgres_ha"] if ha and not ha["postgres_ha"]["up"] else [])}
