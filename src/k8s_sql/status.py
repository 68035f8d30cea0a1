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
"""

from __future__ import annotations

import datetime as dt
import json
import posixpath
import re

from cryptography import x509

from k8s_sql.config import Cluster
from k8s_sql.errors import K8sSqlError
from k8s_sql.cli.certs import inspect as inspect_datastore_certs
from k8s_sql.host import Host, Result
from k8s_sql.pg.cluster import psql

KUBEADM_PKI = "/etc/kubernetes/pki"


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


def certificates(host: Host, cfg: Cluster, now: dt.datetime | None = None) -> list[dict]:
    """``[{"path", "state" (ok, missing, invalid), "not_after" (ISO 8601, UTC), "days_left"}]``:
    the datastore certificates of ``paths.pkiDir`` (``certs check-expiration``'s data, missing
    ones included), then every ``*.crt`` of kubeadm's pki dir (one level of subdirectories)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    out = []
    for row in inspect_datastore_certs(host, cfg.paths.pki_dir, now):
        secs = row["residual_seconds"]
        out.append({"path": row["path"], "state": row["state"], "not_after": row["expires"],
                    "days_left": None if secs is None else secs // 86400})
    seen = {c["path"] for c in out}
    base = KUBEADM_PKI
    dirs = [base] + [posixpath.join(base, d) for d in _listdir(host, base) if not d.endswith((".crt", ".key"))]
    for d in dirs:
        for name in _listdir(host, d):
            path = posixpath.join(d, name)
            if not name.endswith(".crt") or path in seen:
                continue
            try:
                end = x509.load_pem_x509_certificate(host.read_bytes(path) or b"").not_valid_after_utc
            except (ValueError, K8sSqlError):
                out.append({"path": path, "state": "invalid", "not_after": None, "days_left": None})
                continue
            out.append({"path": path, "state": "ok", "not_after": end.isoformat(), "days_left": (end - now).days})
    return out


def collect(host: Host, cfg: Cluster) -> dict:
    """Everything ``k8s-sql status`` shows, as one JSON-able dict (``--output json``)."""
    api, nodes = apiserver_status(host, cfg)
    return {"host": host.name, "postgres": postgres_status(host, cfg), "shim": shim_status(host, cfg),
            "apiserver": api, "nodes": nodes, "certificates": certificates(host, cfg)}
