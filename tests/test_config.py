"""The configuration file (apiVersion k8s-sql.io/v1alpha1, kind Cluster) and the CLI's
exit codes, through the real ``k8s-sql`` console script."""

from __future__ import annotations

import subprocess
import sys

import pytest

from k8s_sql import config


def cli(*args: str, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "k8s_sql", *args], capture_output=True, text=True, input=input,
                          timeout=60)


def test_print_defaults_round_trips_and_validates(tmp_path):
    r = cli("config", "print-defaults")
    assert r.returncode == 0
    body = "".join(line + "\n" for line in r.stdout.splitlines() if not line.startswith("#"))
    assert body.startswith("apiVersion: k8s-sql.io/v1alpha1\nkind: Cluster\n")
    f = tmp_path / "c.yaml"
    f.write_text(r.stdout)
    v = cli("config", "validate", "--config", str(f))
    # validate prints the effective configuration: the defaults, the node name filled in
    effective = config.Cluster()
    effective.node.name = config.host_node_name()
    assert v.returncode == 0 and v.stdout == config.dump(effective)
    assert config.load(v.stdout) == effective
    assert config.dump(config.Cluster(), notes=True) == r.stdout


def test_every_field_has_a_default():
    cfg = config.load(None)
    assert cfg.kubernetes.version.startswith("v1.")
    assert cfg.shim.port == 2379 and cfg.shim.kind == "k8s-sql" and cfg.postgres.mode == "local"
    assert cfg.paths.pki_dir == "/etc/kubernetes/pki/k8s-sql"


@pytest.mark.parametrize("text,where,words", [
    ("apiVersion: k8s-sql.io/v1alpha1\nkind: Cluster\nshim:\n  prot: 2379\n", ":4", ["shim.prot", "port"]),
    ("apiVersion: k8s-sql.io/v1alpha1\nkind: Cluster\nkubernetes:\n  version: banana\n", ":4", ["version"]),
    ("apiVersion: k8s-sql.io/v1alpha1\nkind: Cluster\nshim:\n  port: many\n", ":4", ["port"]),
    ("apiVersion: k8s-sql.io/v9\nkind: Cluster\n", ":1", ["apiVersion"]),
    ("apiVersion: k8s-sql.io/v1alpha1\nkind: Cluster\npostgres:\n  clientAddresses: [192.0.2.11, cp2]\n", ":4",
     ["postgres.clientAddresses", "'cp2'", "10.0.0.0/24"]),
    ("apiVersion: k8s-sql.io/v1alpha1\nkind: Cluster\npostgres:\n  clientAddresses: 192.0.2.11\n", ":4",
     ["clientAddresses must be a list"]),
    ("apiVersion: k8s-sql.io/v1alpha1\nkind: Cluster\nshim: [\n", "", ["YAML"]),
])
def test_invalid_file_names_file_line_and_hint(tmp_path, text, where, words):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    r = cli("config", "validate", "--config", str(f))
    assert r.returncode == 1, r.stdout + r.stderr
    err = " ".join(r.stderr.split())
    assert str(f) + where in err
    for w in words:
        assert w in err
    assert "Traceback" not in r.stderr


def test_client_addresses_are_a_list_of_addresses_or_networks():
    cfg = config.load("apiVersion: k8s-sql.io/v1alpha1\nkind: Cluster\n"
                      "postgres: {clientAddresses: [192.0.2.11, '2001:db8::/64', 10.0.0.0/24]}\n")
    assert cfg.postgres.client_addresses == ["192.0.2.11", "2001:db8::/64", "10.0.0.0/24"]
    assert [config.client_network(a) for a in cfg.postgres.client_addresses] == \
        ["192.0.2.11/32", "2001:db8::/64", "10.0.0.0/24"]
    assert config.client_network("10.0.0.5/24") is None  # host bits set
    assert "clientAddresses: []" in config.dump(config.load(None))


def test_flags_override_the_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("apiVersion: k8s-sql.io/v1alpha1\nkind: Cluster\nkubernetes:\n  version: v1.30.4\n")
    cfg = config.load_file(str(f))
    assert cfg.kubernetes.version == "v1.30.4"
    config.set_value(cfg, "kubernetes.version", "v1.33.1")
    assert cfg.kubernetes.version == "v1.33.1"


def test_exit_codes():
    assert cli("version").returncode == 0 and cli("version").stdout.startswith("k8s-sql ")
    assert cli("no-such-command").returncode == 2
    assert cli("config", "validate", "--config").returncode == 2
    assert cli("config", "validate", "--config", "/nonexistent.yaml").returncode == 1
    assert cli("init", "phase", "no-such-phase", "--dry-run").returncode in (1, 2)


@pytest.mark.parametrize("cmd", [[], ["init"], ["init", "phase"], ["config"], ["shim", "serve"], ["patch-manifest"]])
def test_help_reads_like_a_man_page(cmd):
    r = cli(*cmd, "--help")
    assert r.returncode == 0
    assert "Usage:" in r.stdout and len(r.stdout.splitlines()) > 5
