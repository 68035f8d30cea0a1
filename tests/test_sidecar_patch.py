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
    for name in ("ca.crt", "shim-server.crt", "shim-server.key", "shim-postgres-client.crt",
                 "shim-postgres-client.key"):
        vol = {"name": "k8s-sql-" + name.replace(".", "-"), "hostPath": {"path": f"{PKI}/{name}", "type": "File"}}
        assert vol in pod["spec"]["volumes"]
    assert len(pod["spec"]["volumes"]) == 5 + 5  # kubeadm's five, one per file the sidecar reads


def test_sidecar_security_and_resources():
    c = yamlio.plain(sidecar.container(Cluster()))
    assert c["securityContext"] == {
        "runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532, "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
    }
    assert c["resources"]["requests"] == {"cpu": "100m", "memory": "128Mi"}
    assert c["volumeMounts"] == [{"name": "k8s-sql-" + name.replace(".", "-"), "mountPath": f"{PKI}/{name}",
                                  "readOnly": True}
                                 for name in ("ca.crt", "shim-server.crt", "shim-server.key",
                                              "shim-postgres-client.crt", "shim-postgres-client.key")]
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
        "--compaction-interval": cfg.shim.compaction_interval,
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
    """Kine keeps its own compaction when k8s-sql's interval is 0 (kube-apiserver compacts):
    older Kine releases ignore kube-apiserver's Compact and some panic on a zero interval."""
    cfg = Cluster()
    assert cfg.shim.compaction_interval == "0"
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
    }
    assert c["livenessProbe"]["tcpSocket"] == {"host": "127.0.0.1", "port": 2379}
    cfg.shim.compaction_interval = "10m"
    assert "--compact-interval=10m" in yamlio.plain(sidecar.container(cfg))["args"]


def test_pki_dir_outside_kubeadm_mount_is_mounted_into_apiserver():
    cfg = Cluster()
    cfg.paths.pki_dir = "/srv/k8s-sql/pki"
    path = LOCAL / "kube-apiserver-1.34.yaml"
    pod = yamlio.plain(manifest.apply_patch_file(path.read_text(), sidecar.patch_text(cfg), str(path)))
    kubernetes_validate.validate(pod, "1.34.0", strict=True)
    mounts = containers(pod)["kube-apiserver"]["volumeMounts"]
    assert mounts[5:] == [{"name": "k8s-sql-" + name.replace(".", "-"), "mountPath": f"/srv/k8s-sql/pki/{name}",
                           "readOnly": True} for name in ("ca.crt", "apiserver-shim-client.crt",
                                                          "apiserver-shim-client.key")]
    assert len(mounts) == 8  # kubeadm's five kept
    hostpaths = {v["name"]: v["hostPath"] for v in pod["spec"]["volumes"] if "hostPath" in v}
    for m in mounts[5:]:
        assert hostpaths[m["name"]] == {"path": m["mountPath"], "type": "File"}
    assert len(pod["spec"]["volumes"]) == 5 + 5 + 2  # the CA certificate's volume serves both containers


def test_strategic_merge_replaces_an_existing_sidecar():
    cfg = Cluster()
    path = LOCAL / "kube-apiserver-1.30.yaml"
    once = yamlio.dump(manifest.apply_patch_file(path.read_text(), sidecar.patch_text(cfg), str(path)))
    cfg.shim.image = "registry.example/shim:2"
    twice = yamlio.plain(manifest.apply_patch_file(once, sidecar.patch_text(cfg), "once"))
    assert [c["name"] for c in twice["spec"]["containers"]] == ["kube-apiserver", "etcd-shim"]
    assert containers(twice)["etcd-shim"]["image"] == "registry.example/shim:2"
    assert len(twice["spec"]["volumes"]) == 10


def _paths_in_args(args: list[str]) -> set[str]:
    """Every file a sidecar command line names: the values of its file flags and the
    sslrootcert/sslcert/sslkey of its libpq URI."""
    out = set()
    for arg in args:
        name, _, value = arg.partition("=")
        if name.endswith("-file"):
            out.add(value)
        elif name == "--datastore":
            query = parse_qs(urlsplit(value).query)
            out |= {query[k][0] for k in ("sslrootcert", "sslcert", "sslkey") if k in query}
    return out


@pytest.mark.parametrize("kind", ["k8s-sql", "kine"])
@pytest.mark.parametrize("pki_dir", [PKI, "/srv/k8s-sql/pki"])
def test_sidecar_mounts_exactly_the_files_it_reads(kind, pki_dir):
    """Least privilege: one read-only hostPath File volume per file the sidecar's command
    line names — never the pki directory, the CA key or PostgreSQL's key."""
    cfg = Cluster()
    cfg.shim.kind = kind
    cfg.paths.pki_dir = pki_dir
    patch = yamlio.plain(yamlio.load(sidecar.patch_text(cfg), "patch"))
    shim = containers(patch)["etcd-shim"]
    volumes = {v["name"]: v for v in patch["spec"]["volumes"]}
    assert all(m["readOnly"] is True for m in shim["volumeMounts"])
    mounted = {m["mountPath"] for m in shim["volumeMounts"]}
    assert mounted == _paths_in_args(shim["args"])
    assert mounted == {f"{pki_dir}/{n}" for n in ("ca.crt", "shim-server.crt", "shim-server.key",
                                                   "shim-postgres-client.crt", "shim-postgres-client.key")}
    for m in shim["volumeMounts"]:
        assert volumes[m["name"]]["hostPath"] == {"path": m["mountPath"], "type": "File"}
    paths = {v["hostPath"]["path"] for v in volumes.values()}
    assert pki_dir not in paths
    assert not paths & {f"{pki_dir}/ca.key", f"{pki_dir}/postgres-server.key", f"{pki_dir}/postgres-server.crt"}


def test_sidecar_keys_are_readable_by_its_uid_only(tmp_path):
    """The files the rendered patch mounts, as the pki phase writes them (through the CLI,
    in a scratch pki directory): there, the sidecar's keys owned by ``shim.runAsUser`` and
    not readable by anyone else (0600), certificates 0644."""
    import os
    import subprocess
    import sys

    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(f"apiVersion: k8s-sql.io/v1alpha1\nkind: Cluster\n"
                        f"paths: {{pkiDir: {tmp_path}/pki, stateFile: {tmp_path}/state.json}}\n"
                        "node: {advertiseAddress: 192.0.2.10}\n")
    r = subprocess.run([sys.executable, "-m", "k8s_sql", "init", "phase", "pki", "-c", str(cfg_file)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    cfg = Cluster()
    cfg.paths.pki_dir = str(tmp_path / "pki")
    patch = yamlio.plain(yamlio.load(sidecar.patch_text(cfg), "patch"))
    shim = containers(patch)["etcd-shim"]
    uid = shim["securityContext"]["runAsUser"]
    assert uid == 65532
    volumes = {v["name"]: v["hostPath"]["path"] for v in patch["spec"]["volumes"]}
    for m in shim["volumeMounts"]:
        path = volumes[m["name"]]
        st = os.stat(path)  # type File: it must exist, as a file
        if path.endswith(".key"):
            assert (st.st_uid, st.st_mode & 0o777) == (uid, 0o600), path
        else:
            assert st.st_mode & 0o777 == 0o644, path
    # kube-apiserver's own key (mounted into kube-apiserver only: the pki dir is outside kubeadm's) stays root's
    st = os.stat(volumes["k8s-sql-apiserver-shim-client-key"])
    assert (st.st_uid, st.st_mode & 0o777) == (0, 0o600)


def test_patch_manifest_replaces_the_legacy_pki_directory_volume():
    """A manifest patched by an earlier release (the whole pki directory as volume
    ``k8s-sql-pki``, mounted into both containers) keeps none of it after patching again,
    and patching is idempotent."""
    cfg = Cluster()
    cfg.paths.pki_dir = "/srv/k8s-sql/pki"
    path = LOCAL / "kube-apiserver-1.34.yaml"
    pod = yamlio.load(path.read_text(), str(path))
    legacy = {"name": "k8s-sql-pki", "mountPath": "/srv/k8s-sql/pki", "readOnly": True}
    api = containers(pod)["kube-apiserver"]
    api["volumeMounts"].append(dict(legacy))
    old_shim = yamlio.plain(sidecar.container(cfg))
    old_shim["volumeMounts"] = [dict(legacy)]
    pod["spec"]["containers"].append(old_shim)
    pod["spec"]["volumes"].append({"name": "k8s-sql-pki", "hostPath": {"path": "/srv/k8s-sql/pki",
                                                                      "type": "Directory"}})
    text, _ = manifest.patch_text(yamlio.dump(pod), cfg, "legacy")
    assert "k8s-sql-pki" not in text
    new = yamlio.plain(yamlio.load(text, "new"))
    names = [v["name"] for v in new["spec"]["volumes"]]
    assert "k8s-sql-pki" not in names and len(names) == len(set(names)) == 5 + 5 + 2
    assert all(m["name"] != "k8s-sql-pki" for c in new["spec"]["containers"] for m in c.get("volumeMounts", []))
    assert [m["mountPath"] for m in containers(new)["kube-apiserver"]["volumeMounts"][5:]] == \
        [f"/srv/k8s-sql/pki/{n}" for n in ("ca.crt", "apiserver-shim-client.crt", "apiserver-shim-client.key")]
    again, _ = manifest.patch_text(text, cfg, "again")
    assert again == text
