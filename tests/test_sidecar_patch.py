"""The shim sidecar as a kubeadm patch (``kube-apiserver+strategic.yaml``).

kubeadm cannot run here: :func:`k8s_sql.kubeadm.manifest.strategic_merge` stands in for
kubeadm's strategic merge of the patch into the manifests kubeadm writes — real kubeadm
1.20 output and hand-built 1.30/1.34 manifests — and kubernetes-validate checks each
result against the Pod schema of its Kubernetes version."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import kubernetes_validate
import pytest
import yaml

from k8s_sql.config import Cluster
from k8s_sql.kubeadm import manifest, sidecar, yamlio

SHARED = Path(__file__).parents[2] / "shared/fixtures/kubeadm-1.20"
LOCAL = Path(__file__).parent / "fixtures/manifests"
MANIFESTS = [
    (SHARED / "kube-apiserver.stacked.yaml", "1.25.0"),  # oldest schema kubernetes-validate ships
    (SHARED / "kube-apiserver.seed-http.yaml", "1.25.0"),
    (LOCAL / "kube-apiserver-1.30.yaml", "1.30.0"),
    (LOCAL / "kube-apiserver-1.34.yaml", "1.34.0"),
]
PKI = "/etc/kubernetes/pki/k8s-sql"


def containers(pod) -> dict:
    return {c["name"]: c for c in pod["spec"]["containers"]}


@pytest.mark.parametrize("path, schema", MANIFESTS, ids=lambda v: getattr(v, "name", v))
@pytest.mark.parametrize("kind", ["k8s-sql", "kine"])
def test_patch_applies_to_kubeadm_manifest(path, schema, kind):
    cfg = Cluster()
    cfg.shim.kind = kind
    pod = yamlio.plain(manifest.apply_patch_file(path.read_text(), sidecar.patch_text(cfg), str(path)))
    assert manifest.schema_version(containers(pod)["kube-apiserver"]["image"]) == schema
    kubernetes_validate.validate(pod, schema, strict=True)
    by_name = containers(pod)
    assert list(by_name) == ["kube-apiserver", "etcd-shim"]
    # kube-apiserver untouched by the patch (kubeadm sets its etcd flags from the config)
    original = containers(yaml.safe_load(path.read_text()))["kube-apiserver"]
    assert by_name["kube-apiserver"] == original
    assert {"name": "k8s-sql-pki", "hostPath": {"path": PKI, "type": "Directory"}} in pod["spec"]["volumes"]
    assert len(pod["spec"]["volumes"]) == 6


def test_sidecar_security_and_resources():
    c = yamlio.plain(sidecar.container(Cluster()))
    assert c["securityContext"] == {
        "runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532, "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
    }
    assert c["resources"]["requests"] == {"cpu": "100m", "memory": "128Mi"}
    assert c["volumeMounts"] == [{"name": "k8s-sql-pki", "mountPath": PKI, "readOnly": True}]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"host": "127.0.0.1", "path": "/health", "port": 2381, "scheme": "HTTP"}


def test_k8s_sql_shim_flags_use_etcd_names():
    cfg = Cluster()
    c = yamlio.plain(sidecar.container(cfg))
    assert c["image"] == cfg.shim_image and c["command"] == ["k8s-sql"]
    args = c["args"]
    assert args[:2] == ["shim", "serve"]
    flags = dict(a.split("=", 1) if "=" in a else (a, None) for a in args[2:])
    assert flags == {
        "--listen-client-urls": "https://127.0.0.1:2379",
        "--cert-file": f"{PKI}/shim-server.crt",
        "--key-file": f"{PKI}/shim-server.key",
        "--trusted-ca-file": f"{PKI}/ca.crt",
        "--client-cert-auth": None,
        "--datastore": flags["--datastore"],
        "--metrics-addr": "http://127.0.0.1:2381",
        "--watch-progress-notify-interval": "5s",
        "--compaction-interval": "5m",
    }
    uri = urlsplit(flags["--datastore"])
    assert (uri.scheme, uri.username, uri.password, uri.hostname, uri.port, uri.path) == \
        ("postgresql", "k8s_sql", None, "127.0.0.1", 5432, "/kubernetes")
    assert parse_qs(uri.query) == {"sslmode": ["verify-full"], "sslrootcert": [f"{PKI}/ca.crt"],
                                   "sslcert": [f"{PKI}/shim-postgres-client.crt"],
                                   "sslkey": [f"{PKI}/shim-postgres-client.key"]}
    assert "password" not in sidecar.patch_text(cfg).lower()


def test_external_postgres_keeps_host_drops_password():
    cfg = Cluster()
    cfg.postgres.mode = "external"
    cfg.postgres.uri = "postgresql://admin:secret@db.example:6432/k8s?sslmode=require&connect_timeout=5"
    u = urlsplit(sidecar.datastore_uri(cfg))
    assert (u.username, u.password, u.hostname, u.port, u.path) == ("k8s_sql", None, "db.example", 6432, "/k8s")
    q = parse_qs(u.query)
    assert q["sslmode"] == ["verify-full"] and q["connect_timeout"] == ["5"]
    assert "secret" not in sidecar.patch_text(cfg)


def test_kine_flags_and_tcp_probes():
    cfg = Cluster()
    cfg.shim.kind = "kine"
    c = yamlio.plain(sidecar.container(cfg))
    assert c["image"] == cfg.shim.kine_image and "command" not in c
    flags = dict(a.split("=", 1) for a in c["args"])
    assert flags == {
        "--listen-address": "127.0.0.1:2379",
        "--endpoint": "postgres://k8s_sql@127.0.0.1:5432/kubernetes?sslmode=verify-full",
        "--ca-file": f"{PKI}/ca.crt",
        "--cert-file": f"{PKI}/shim-postgres-client.crt",
        "--key-file": f"{PKI}/shim-postgres-client.key",
        "--server-cert-file": f"{PKI}/shim-server.crt",
        "--server-key-file": f"{PKI}/shim-server.key",
        "--trusted-ca-file": f"{PKI}/ca.crt",
        "--metrics-bind-address": "127.0.0.1:2381",
        "--watch-progress-notify-interval": "5s",
        "--compact-interval": "5m",
    }
    assert c["livenessProbe"]["tcpSocket"] == {"host": "127.0.0.1", "port": 2379}


def test_pki_dir_outside_kubeadm_mount_is_mounted_into_apiserver():
    cfg = Cluster()
    cfg.paths.pki_dir = "/srv/k8s-sql/pki"
    path = LOCAL / "kube-apiserver-1.34.yaml"
    pod = yamlio.plain(manifest.apply_patch_file(path.read_text(), sidecar.patch_text(cfg), str(path)))
    kubernetes_validate.validate(pod, "1.34.0", strict=True)
    mounts = containers(pod)["kube-apiserver"]["volumeMounts"]
    assert mounts[-1] == {"mountPath": "/srv/k8s-sql/pki", "name": "k8s-sql-pki", "readOnly": True}
    assert len(mounts) == 6  # kubeadm's five kept


def test_strategic_merge_replaces_an_existing_sidecar():
    cfg = Cluster()
    path = LOCAL / "kube-apiserver-1.30.yaml"
    once = yamlio.dump(manifest.apply_patch_file(path.read_text(), sidecar.patch_text(cfg), str(path)))
    cfg.shim.image = "registry.example/shim:2"
    twice = yamlio.plain(manifest.apply_patch_file(once, sidecar.patch_text(cfg), "once"))
    assert [c["name"] for c in twice["spec"]["containers"]] == ["kube-apiserver", "etcd-shim"]
    assert containers(twice)["etcd-shim"]["image"] == "registry.example/shim:2"
    assert len(twice["spec"]["volumes"]) == 6
