"""Every kubeadm document k8s-sql renders uses only field names kubeadm's types have for its
API version, so a typo cannot reach a node (kubeadm's strict decoding would refuse it
there, or an older release ignore it silently).

The field table, tests/fixtures/kubeadm/fields.yaml, lists the JSON field names of
kubeadm's configuration types (v1beta3, v1beta4) and the flags of the kubeadm commands
k8s-sql runs, taken from kubeadm's Go types and reference pages. Rendered here:
InitConfiguration + ClusterConfiguration (``init``) for every supported API version and
several configurations, UpgradeConfiguration (``upgrade``, v1beta4), JoinConfiguration
(``join``, worker and control plane) for every supported API version; and the flags of the
``kubeadm init``, ``join`` and ``upgrade`` command lines, including kubeadm's rule that
``--config`` mixes with few other flags."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from k8s_sql.config import Cluster
from k8s_sql.kubeadm import config as kconfig
from k8s_sql.phases import upgrade as up
from k8s_sql.phases.base import Context
from k8s_sql.host import LocalHost
from k8s_sql.phases.kubeadm_init import kubeadm_argv
from k8s_sql.phases.join import parse_join_command

TABLE = yaml.safe_load((Path(__file__).parent / "fixtures/kubeadm/fields.yaml").read_text())


def unknown_fields(doc: dict, api: str) -> list[str]:
    """Dotted paths of ``doc``'s fields that kubeadm's type for ``doc['kind']`` in ``api``
    (``v1beta3``) does not have; the kind itself when the API version has no such kind."""
    table = TABLE[api]
    if doc.get("kind") not in table["kinds"]:
        return [f"kind {doc.get('kind')}"]
    out: list[str] = []

    def walk(value, type_name: str, path: str) -> None:
        if type_name.startswith("[]"):
            for i, item in enumerate(value or []):
                walk(item, type_name[2:], f"{path}[{i}]")
            return
        fields = table["types"][type_name]
        for key, sub in (value or {}).items():
            where = f"{path}.{key}" if path else key
            if key not in fields:
                out.append(where)
            elif fields[key] is not None:
                walk(sub, fields[key], where)

    walk(doc, doc["kind"], "")
    return out


def configs() -> list[tuple[str, Cluster]]:
    out = []
    for version in ("v1.22.0", "v1.30.14", "v1.31.0", "v1.34.2"):
        for variant in ("default", "endpoint", "kine", "external"):
            cfg = Cluster()
            cfg.node.name = "cp1"
            cfg.kubernetes.version = version
            if variant == "endpoint":
                cfg.kubernetes.control_plane_endpoint = "k8s.example:6443"
            elif variant == "kine":
                cfg.shim.kind = "kine"
            elif variant == "external":
                cfg.postgres.mode, cfg.postgres.uri = "external", "postgresql://db.example:5432/kubernetes"
            out.append((f"{version}-{variant}", cfg))
    return out


@pytest.mark.parametrize("name, cfg", configs(), ids=lambda v: v if isinstance(v, str) else "")
def test_rendered_init_and_cluster_configuration(name, cfg):
    docs = list(yaml.safe_load_all(kconfig.render(cfg, advertise_address="192.168.56.10",
                                                  cri_socket="unix:///var/run/crio/crio.sock")))
    assert [d["kind"] for d in docs] == ["InitConfiguration", "ClusterConfiguration"]
    api = kconfig.api_version(cfg.kubernetes.version).split("/")[1]
    for doc in docs:
        assert doc["apiVersion"] == f"kubeadm.k8s.io/{api}"
        assert unknown_fields(doc, api) == []


@pytest.mark.parametrize("target", ["v1.31.0", "v1.34.2"])
def test_rendered_upgrade_configuration(target):
    doc = yaml.safe_load(kconfig.render_upgrade(Cluster(), target))
    assert doc["apiVersion"] == "kubeadm.k8s.io/v1beta4" and doc["kind"] == "UpgradeConfiguration"
    assert unknown_fields(doc, "v1beta4") == []
    assert doc["apply"]["patches"]["directory"] == doc["node"]["patches"]["directory"] == "/etc/k8s-sql/patches"


def test_no_upgrade_configuration_before_v1beta4():
    """v1beta3 has no UpgradeConfiguration (kubeadm 1.22–1.30 take --patches instead)."""
    assert "UpgradeConfiguration" not in TABLE["v1beta3"]["kinds"]
    assert kconfig.render_upgrade(Cluster(), "v1.30.14") is None


def test_the_check_catches_a_typo():
    cfg = Cluster()
    _, cluster = yaml.safe_load_all(kconfig.render(cfg, advertise_address="10.0.0.1", cri_socket="unix:///x"))
    cluster["controlPlaneEndPoint"] = cluster.pop("controlPlaneEndpoint")
    cluster["etcd"]["external"]["certfile"] = "x"
    assert sorted(unknown_fields(cluster, "v1beta4")) == ["controlPlaneEndPoint", "etcd.external.certfile"]
    # a v1beta4-only field in a v1beta3 document
    init = {"apiVersion": "kubeadm.k8s.io/v1beta3", "kind": "InitConfiguration", "timeouts": {}}
    assert unknown_fields(init, "v1beta3") == ["timeouts"]
    assert unknown_fields({"kind": "UpgradeConfiguration"}, "v1beta3") == ["kind UpgradeConfiguration"]


def flags(argv: list[str]) -> list[str]:
    return [a.split("=")[0] for a in argv if a.startswith("--")]


@pytest.mark.parametrize("target", ["v1.30.14", "v1.34.2"])
def test_kubeadm_flags_k8s_sql_passes(target):
    cfg = Cluster()
    cfg.kubernetes.version = target
    ctx = Context(host=LocalHost(), config=cfg)
    assert set(flags(kubeadm_argv(ctx))) <= set(TABLE["flags"]["init"])
    for mode in ("apply", "node"):
        argv = up.kubeadm_upgrade_argv(ctx, up.UpgradeOptions(mode, target))
        assert argv[:3] == ["kubeadm", "upgrade", mode]
        assert set(flags(argv)) <= set(TABLE["flags"][f"upgrade {mode}"])


JOIN_LINE = ("kubeadm join 192.0.2.10:6443 --token abcdef.0123456789abcdef "
             "--discovery-token-ca-cert-hash sha256:" + "ab" * 32)


@pytest.mark.parametrize("version", ["v1.22.0", "v1.30.14", "v1.31.0", "v1.34.2"])
@pytest.mark.parametrize("role", ["worker", "control-plane", "control-plane-default-address"])
def test_rendered_join_configuration(version, role):
    cfg = Cluster()
    cfg.kubernetes.version = version
    cp = None
    if role != "worker":
        cp = kconfig.JoinControlPlane("c0" * 32, "192.0.2.12" if role == "control-plane" else None)
    doc = yaml.safe_load(kconfig.render_join(cfg, parse_join_command(JOIN_LINE), node_name="node2",
                                             cri_socket="unix:///var/run/crio/crio.sock", control_plane=cp))
    api = kconfig.api_version(version).split("/")[1]
    assert doc["apiVersion"] == f"kubeadm.k8s.io/{api}" and doc["kind"] == "JoinConfiguration"
    assert unknown_fields(doc, api) == []
    assert doc["discovery"]["bootstrapToken"] == {"apiServerEndpoint": "192.0.2.10:6443",
                                                  "token": "abcdef.0123456789abcdef",
                                                  "caCertHashes": ["sha256:" + "ab" * 32]}
    assert doc["nodeRegistration"] == {"name": "node2", "criSocket": "unix:///var/run/crio/crio.sock"}
    if cp is None:  # a worker runs no static pod: no patches, no controlPlane
        assert "controlPlane" not in doc and "patches" not in doc
    else:
        assert doc["patches"] == {"directory": "/etc/k8s-sql/patches"}
        assert doc["controlPlane"]["certificateKey"] == "c0" * 32
        assert doc["controlPlane"]["localAPIEndpoint"] == (
            {"advertiseAddress": "192.0.2.12", "bindPort": 6443} if role == "control-plane" else {"bindPort": 6443})


def test_join_command_parsing():
    """Both spellings kubeadm accepts (``--flag value``, ``--flag=value``), hashes repeated;
    a line without a token is refused without echoing the line (it may hold a secret)."""
    d = parse_join_command("kubeadm join [2001:db8::1]:6443 --token=t.x --discovery-token-ca-cert-hash sha256:a "
                           "--discovery-token-ca-cert-hash=sha256:b")
    assert (d.api_server_endpoint, d.token, d.ca_cert_hashes) == ("[2001:db8::1]:6443", "t.x", ("sha256:a", "sha256:b"))
    from k8s_sql.errors import K8sSqlError

    with pytest.raises(K8sSqlError, match="has no --token") as e:
        parse_join_command("kubeadm join 10.0.0.1:6443 --discovery-token-ca-cert-hash sha256:secretish")
    assert "secretish" not in str(e.value)


def test_the_join_plan_runs_kubeadm_join_with_config_only(tmp_path):
    """kubeadm refuses --config mixed with the discovery, --control-plane and --patches flags:
    join passes the file alone; init passes only flags kubeadm allows beside --config."""
    from k8s_sql.phases.base import Action
    from k8s_sql.phases.join import Join

    cfg = Cluster()
    first = tmp_path / "first"
    (first / "etc/kubernetes").mkdir(parents=True)
    (first / "etc/kubernetes/admin.conf").write_text("kind: Config\n")
    cp = Context(host=LocalHost(root=str(first)), config=cfg)
    node = Context(host=LocalHost(root=str(tmp_path / "node")), config=Cluster(), dry_run=True)
    actions = [c for c in Join(cp, control_plane=False).plan(node) if isinstance(c, Action)]
    argvs = [a for c in actions for a in c.argvs if a[:2] == ["kubeadm", "join"]]
    assert argvs == [["kubeadm", "join", "--config", kconfig.join_config_path(node.config)]]
    allowed = set(TABLE["with_config"])
    for argv in (*argvs, kubeadm_argv(node)):
        assert "--config" in argv
        assert {f for f in flags(argv) if not f.startswith("--skip-")} <= allowed, argv
        assert set(flags(argv)) <= set(TABLE["flags"][argv[1]])
