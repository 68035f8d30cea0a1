"""Validation of the configuration (k8s_sql.validation): every bad value is refused with
file:line, what is wrong and a hint, before any phase plans anything; flags go through
the same checks and a bad flag value is a usage error (exit 2).

The tables use ``config.load`` (the loader ``config validate``, ``init`` and ``render``
share); the findings of issue #9 also go through the real ``k8s-sql`` console script.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import typer.main

from k8s_sql import config
from k8s_sql.errors import ConfigError, FlagError
from k8s_sql.shim.settings import DEFAULT_COMPACTION_INTERVAL, go_duration, parse_duration

HEAD = "apiVersion: k8s-sql.io/v1alpha1\nkind: Cluster\n"  # the body below starts on line 3
SRC = "c.yaml"


def cli(*args: str) -> subprocess.CompletedProcess:
    """The console script with output to pipes, as in a script or CI log. The environment is
    passed explicitly: GNU readline (loaded by pytest) exports COLUMNS=80 to child
    processes behind os.environ's back, which no user's pipe has."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "TERMINAL_WIDTH")}
    return subprocess.run([sys.executable, "-m", "k8s_sql", *args], capture_output=True, text=True, timeout=60,
                          env=env)


def error_of(body: str) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        config.load(HEAD + body, SRC)
    return e.value


# (body after apiVersion/kind, line of the error, fragments of the message and hint)
BAD = [
    # IP addresses
    ("node: {advertiseAddress: 300.1.2.3}\n", 3, ["node.advertiseAddress", "'300.1.2.3'", "not an IP address"]),
    ("node:\n  name: cp1\n  advertiseAddress: 0.0.0.0\n", 5, ["cannot be advertised", "default route"]),
    ("node: {advertiseAddress: '2001:db8::zz'}\n", 3, ["not an IP address"]),
    # CIDRs: prefix length, host bits (hint: the network address), overlap, sizes, dual-stack
    ("kubernetes:\n  podSubnet: 10.244.0.0/33\n", 4, ["kubernetes.podSubnet", "'10.244.0.0/33'", "not a network"]),
    ("kubernetes:\n  podSubnet: 10.244.0.1/16\n", 4, ["host bits set", "use the network address: 10.244.0.0/16"]),
    ("kubernetes:\n  podSubnet: foo\n", 4, ["not a network in CIDR notation"]),
    ("kubernetes:\n  podSubnet: 10.96.0.0/16\n", 4,
     ["kubernetes.podSubnet 10.96.0.0/16 overlaps kubernetes.serviceSubnet 10.96.0.0/12", "do not overlap"]),
    ("kubernetes:\n  serviceSubnet: 10.240.0.0/12\n", 4, ["overlaps"]),  # with the default pod subnet
    ("kubernetes: {serviceSubnet: 10.0.0.0/8}\n", 3, ["too large", "/12 or longer"]),
    ("kubernetes: {serviceSubnet: 10.96.0.0/29}\n", 3, ["too small", "10 addresses"]),
    ("kubernetes: {podSubnet: 10.244.0.0/25}\n", 3, ["smaller than one node's pod range (/24)"]),
    ("kubernetes: {podSubnet: 10.0.0.0/7}\n", 3, ["too large", "/8 or longer"]),
    ("kubernetes: {podSubnet: 'fd00::/32'}\n", 3, ["too large", "/48 or longer"]),
    ("kubernetes: {podSubnet: '10.244.0.0/16,10.245.0.0/16'}\n", 3, ["an IPv4 and an IPv6", "dual-stack"]),
    ("postgres:\n  clientAddresses:\n  - 192.0.2.11\n  - 10.0.0.5/24\n", 6,
     ["'10.0.0.5/24' has host bits set", "10.0.0.0/24"]),
    ("postgres:\n  clientAddresses:\n  - 192.0.2.11\n  - cp2\n", 6, ["'cp2' is not an IP address or network"]),
    # ports, and ports that must differ
    ("postgres:\n  port: -1\n", 4, ["postgres.port -1 is not a TCP port", "1 to 65535"]),
    ("shim:\n  port: 70000\n", 4, ["shim.port 70000 is not a TCP port"]),
    ("shim: {metricsPort: 0}\n", 3, ["shim.metricsPort 0"]),
    ("shim:\n  metricsPort: 2379\n", 4, ["shim.metricsPort 2379 is also shim.port", "its own port"]),
    ("postgres:\n  port: 2379\n", 4, ["postgres.port 2379 is also shim.port"]),
    ("shim: {port: 6443}\n", 3, ["kube-apiserver", "not 6443"]),
    # durations, exactly as the shim parses them
    ("shim:\n  compactionInterval: forever\n", 4, ["shim.compactionInterval 'forever' is not a duration", '"5s"']),
    ("shim: {compactionInterval: 5}\n", 3, ["missing unit"]),
    ("shim: {watchProgressNotifyInterval: 1d}\n", 3, ["unknown unit 'd'"]),
    ("shim: {watchProgressNotifyInterval: -5s}\n", 3, ["is negative"]),
    # certificates
    ("certificates:\n  validityDays: -5\n", 4, ["certificates.validityDays -5", "positive"]),
    ("certificates: {validityDays: 0}\n", 3, ["validityDays 0"]),
    ("certificates:\n  caValidityDays: 100\n", 4, ["validityDays 365 is longer than certificates.caValidityDays 100",
                                                   "cannot outlive the CA"]),
    ("certificates: {caValidityDays: 0}\n", 3, ["caValidityDays 0 is out of range"]),
    ("certificates: {caValidityDays: 99999999}\n", 3, ["out of range"]),
    # node names: kubeadm wants a lower-case RFC 1123 subdomain
    ("node:\n  name: Bad_Name!\n", 4, ["node.name 'Bad_Name!' is not a valid node name", "RFC 1123", "'bad-name'"]),
    ("node: {name: Node1}\n", 3, ["'Node1'", "use 'node1'"]),
    ("node: {name: -cp1}\n", 3, ["not a valid node name"]),
    (f"node: {{name: {'a' * 254}}}\n", 3, ["not a valid node name", "253"]),
    ("node: {criSocket: /var/run/crio/crio.sock.bak x}\n", 3, ["not a CRI socket"]),
    ("node: {criSocket: 'tcp://127.0.0.1:1234'}\n", 3, ["node.criSocket", "unix://"]),
    # Kubernetes versions
    ("kubernetes:\n  version: v1.10\n", 4, ["kubernetes.version 'v1.10' is too old", "1.22 and later"]),
    ("kubernetes: {version: v2.0.0}\n", 3, ["not a Kubernetes version"]),
    ("kubernetes: {version: 1.30}\n", 3, ["must be a string, got the number 1.3", "quote it"]),
    ("kubernetes: {controlPlaneEndpoint: 'bad host:6443'}\n", 3, ["not host or host:port"]),
    ("kubernetes: {controlPlaneEndpoint: 'k8s.example.com:99999'}\n", 3, ["not host or host:port"]),
    # paths: absolute, no system directory, each its own
    ("paths:\n  pkiDir: pki\n", 4, ["paths.pkiDir 'pki' is not an absolute path", "start it with /"]),
    ("paths:\n  pkiDir: /etc\n", 4, ["paths.pkiDir '/etc' is a system directory",
                                     "/etc/kubernetes/pki/k8s-sql"]),
    ("paths: {pkiDir: /etc/kubernetes/pki/k8s-sql, patchesDir: /usr}\n", 3, ["paths.patchesDir '/usr'", "system"]),
    ("paths: {backupDir: /etc/k8s-sql/../../var/lib}\n", 3, ["system directory"]),
    ("paths: {stateFile: /}\n", 3, ["system directory"]),
    ("paths: {kubeadmConfig: /home/alice}\n", 3, ["system directory"]),
    ("paths: {manifestsDir: /etc}\n", 3, ["paths.manifestsDir '/etc' is a system directory"]),
    ("paths: {pkiDir: /srv/k8s, patchesDir: /srv/k8s/}\n", 3, ["paths.patchesDir '/srv/k8s/' is the same path as "
                                                               "paths.pkiDir"]),
    ("postgres: {socketDir: run/postgresql}\n", 3, ["postgres.socketDir", "not an absolute path"]),
    ("postgres: {dataDir: data}\n", 3, ["postgres.dataDir", "leave it empty"]),
    # enum fields
    ("postgres:\n  mode: remote\n", 4, ["postgres.mode 'remote' is not one of local, external"]),
    ("shim: {kind: etcd}\n", 3, ["shim.kind 'etcd'", "k8s-sql, kine"]),
    ("kubernetes: {containerRuntime: docker}\n", 3, ["crio, containerd"]),
    # other formats
    ("postgres: {mode: external, uri: 'mysql://db'}\n", 3, ["postgres.uri does not start with postgresql://"]),
    ("postgres: {version: 12}\n", 3, ["postgres.version '12'", "13–18"]),
    ("postgres: {role: Bad-Role}\n", 3, ["postgres.role 'Bad-Role' is not a plain PostgreSQL identifier"]),
    ("postgres: {database: '" + "d" * 64 + "'}\n", 3, ["at most 63"]),
    ("postgres: {host: 'bad host'}\n", 3, ["postgres.host 'bad host'"]),
    ("postgres: {cluster: ../main}\n", 3, ["not a cluster name"]),
    ("shim:\n  listenAddress: 10.0.0.5\n", 4, ["not reachable at 127.0.0.1"]),
    ("shim: {listenAddress: localhost}\n", 3, ["not an IP address"]),
    ("shim: {runAsUser: 0}\n", 3, ["shim.runAsUser 0 is not a non-root uid"]),
    ("shim: {image: 'my image'}\n", 3, ["not an image reference"]),
    # null and wrong-type sections and values
    ("node: null\n", 3, ["node is empty (null)", "remove the line"]),
    ("node:\nkubernetes: {}\n", 3, ["node is empty (null)"]),
    ("kubernetes: 5\n", 3, ["kubernetes must be a mapping of fields, got 5"]),
    ("shim: [a, b]\n", 3, ["shim must be a mapping of fields, got a list"]),
    ("postgres:\n  port:\n", 4, ["postgres.port is empty (null)", "an integer"]),
    ("shim: {port: many}\n", 3, ["shim.port must be an integer, got 'many'"]),
    ("shim: {port: 2379.5}\n", 3, ["must be an integer"]),
    ("kubernetes: {singleNode: yes please}\n", 3, ["must be true or false"]),
    ("shim: {image: }\n", 3, ["shim.image is empty (null)", '""']),
    ("postgres: {clientAddresses: }\n", 3, ["clientAddresses is empty (null)", "[]"]),
]


@pytest.mark.parametrize("body,line,words", BAD, ids=[f"{i}:{b.splitlines()[-1][:40]}" for i, (b, _, _) in
                                                      enumerate(BAD)])
def test_bad_value_has_file_line_and_hint(body, line, words):
    e = error_of(body)
    text = str(e)
    assert e.where == f"{SRC}:{line}", text
    assert e.hint, text
    for w in words:
        assert w in text, text


GOOD = [
    "node: {name: cp-1.example.com, advertiseAddress: '2001:db8::10', criSocket: /run/containerd/containerd.sock}\n",
    "node: {advertiseAddress: 192.0.2.10, criSocket: 'unix:///var/run/crio/crio.sock'}\n",
    "kubernetes: {podSubnet: '10.244.0.0/16,fd00:10:244::/56', serviceSubnet: '10.96.0.0/12,fd00:10:96::/112'}\n",
    "kubernetes: {podSubnet: '', version: '1.22.0', controlPlaneEndpoint: '[2001:db8::1]:6443'}\n",
    "kubernetes: {controlPlaneEndpoint: k8s.example.com}\n",
    "paths: {pkiDir: /srv/k8s-sql/pki, manifestsDir: /etc/kubernetes/manifests/}\n",
    "postgres: {mode: external, uri: 'postgresql://db.example/k8s', port: 2379, version: 17}\n",
    "shim: {compactionInterval: 1h30m, watchProgressNotifyInterval: 1.5s, listenAddress: 0.0.0.0}\n",
    "shim: {compactionInterval: 0, port: 12379, metricsPort: 12381}\n",
    "certificates: {caValidityDays: 365, validityDays: 365}\n",
]


@pytest.mark.parametrize("body", GOOD)
def test_good_values_are_accepted(body):
    config.load(HEAD + body, SRC)


def test_name_of_this_machine_fills_an_empty_node_name(monkeypatch):
    """The host name is the one input that cannot be set here: ``socket.gethostname`` is
    replaced (a stand-in at the edge) to give a valid and an invalid host name."""
    monkeypatch.setattr(config.socket, "gethostname", lambda: "CP1.example.com")
    assert config.load(None).node.name == "cp1"
    assert config.load(HEAD + "node: {name: cp2}\n").node.name == "cp2"
    monkeypatch.setattr(config.socket, "gethostname", lambda: "my_laptop")
    with pytest.raises(ConfigError) as e:
        config.load(None)
    assert "host name 'my_laptop' is not a valid node name" in str(e.value)
    assert "--node-name, e.g. my-laptop" in str(e.value)
    assert config.load(None, flags={"node.name": ("--node-name", "cp1")}).node.name == "cp1"


# --- flags: the same checks, naming the flag -------------------------------------------

def test_flags_win_over_the_file_before_validation():
    cfg = config.load(HEAD + "kubernetes: {version: v1.10}\n", SRC,
                      flags={"kubernetes.version": ("--kubernetes-version", "v1.34.2")})
    assert cfg.kubernetes.version == "v1.34.2"
    with pytest.raises(FlagError) as e:
        config.load(HEAD + "kubernetes: {version: v1.34.2}\n", SRC,
                    flags={"kubernetes.pod_subnet": ("--pod-network-cidr", "10.96.0.0/16")})
    assert str(e.value).startswith("--pod-network-cidr 10.96.0.0/16 overlaps kubernetes.serviceSubnet")
    assert e.value.exit_code == 2


@pytest.mark.parametrize("args,words", [
    (["--pod-network-cidr", "foo"], ["--pod-network-cidr 'foo' is not a network", "10.244.0.0/16"]),
    (["--pod-network-cidr", "10.244.0.1/16"], ["host bits", "10.244.0.0/16"]),
    (["--node-name", "A B"], ["--node-name 'A B' is not a valid node name", "'a-b'"]),
    (["--apiserver-advertise-address", "300.1.2.3"], ["--apiserver-advertise-address '300.1.2.3' is not an IP"]),
    (["--kubernetes-version", "v1.10"], ["--kubernetes-version 'v1.10' is too old"]),
    (["--cri-socket", "crio"], ["--cri-socket 'crio' is not a CRI socket"]),
    (["--shim", "etcd"], ["--shim 'etcd' is not one of k8s-sql, kine"]),
    (["--shim-image", "a b"], ["--shim-image 'a b' is not an image reference"]),
    (["--postgres-uri", "db.example:5432"], ["--postgres-uri does not start with postgresql://"]),
])
def test_bad_flag_is_a_usage_error_naming_the_flag(tmp_path, args, words):
    out = tmp_path / "out"
    r = cli("render", "--out", str(out), *args)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    err = " ".join(r.stderr.split())
    for w in words:
        assert w in err
    assert "hint:" in err
    assert not out.exists()  # nothing written


def test_old_kubernetes_version_stops_before_prereqs_plans_apt_sources(tmp_path):
    from test_prereqs import node

    root = node(tmp_path, "debian-12")
    r = cli("init", "phase", "prereqs", "--root", root, "--dry-run", "--kubernetes-version", "v1.10")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "--kubernetes-version 'v1.10' is too old" in " ".join(r.stderr.split())
    assert "pkgs.k8s.io" not in r.stdout + r.stderr
    cfg = tmp_path / "c.yaml"
    cfg.write_text(HEAD + "kubernetes:\n  version: v1.10\n")
    r = cli("init", "phase", "prereqs", "--root", root, "--dry-run", "-c", str(cfg))
    assert r.returncode == 1 and f"{cfg}:4: kubernetes.version 'v1.10' is too old" in r.stderr
    assert "pkgs.k8s.io" not in r.stdout


# --- the findings of issue #9 through `k8s-sql config validate` ------------------------

@pytest.mark.parametrize("body,line,words", [
    ("node:\n  advertiseAddress: 300.1.2.3\n", 4, ["not an IP address"]),
    ("kubernetes:\n  podSubnet: 10.244.0.0/33\n", 4, ["not a network"]),
    ("kubernetes:\n  podSubnet: 10.244.0.1/16\n", 4, ["host bits set", "10.244.0.0/16"]),
    ("kubernetes:\n  podSubnet: 10.96.0.0/16\n", 4, ["overlaps"]),
    ("postgres:\n  port: -1\n", 4, ["not a TCP port"]),
    ("shim:\n  port: 70000\n", 4, ["not a TCP port"]),
    ("shim:\n  compactionInterval: forever\n", 4, ["not a duration"]),
    ("paths:\n  pkiDir: pki\n", 4, ["not an absolute path"]),
    ("paths:\n  pkiDir: /etc\n  patchesDir: /usr\n", 4, ["system directory"]),
    ("node:\n  name: Bad_Name!\n", 4, ["not a valid node name"]),
    ("node: null\n", 3, ["node is empty (null)"]),
    ("certificates:\n  validityDays: -5\n", 4, ["validityDays -5"]),
])
def test_issue_findings_are_refused_by_config_validate(tmp_path, body, line, words):
    f = tmp_path / "bad.yaml"
    f.write_text(HEAD + body)
    r = cli("config", "validate", "--config", str(f))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
    first, *rest = r.stderr.strip().splitlines()
    assert first.startswith(f"error: {f}:{line}: ")  # one line each: errors are not wrapped
    assert len(rest) == 1 and rest[0].startswith("  hint: ")
    for w in words:
        assert w in r.stderr


# --- durations: one parser for the shim and the configuration ---------------------------

@pytest.mark.parametrize("text,seconds", [
    ("0", 0), ("-0", 0), ("5s", 5), ("1m30s", 90), ("1h30m", 5400), ("250ms", 0.25), ("1.5h", 5400), (".5s", 0.5),
    ("1us", 1e-6), ("1\u00b5s", 1e-6), ("1\u03bcs", 1e-6), ("3ns", 3e-9), ("-1.5s", -1.5), ("1h1h", 7200),
])
def test_go_duration_accepts_what_go_accepts(text, seconds):
    assert go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "00", "forever", "5 s", " 5s", "5s ", "1d", ".s", "-", "1e3s", "inf",
                                  "5sm", "2562048h"])
def test_go_duration_refuses_what_go_refuses(text):
    with pytest.raises(ValueError):
        go_duration(text)
    with pytest.raises(Exception) as e:
        parse_duration(text, "--compaction-interval")
    assert "invalid duration" in str(e.value) and e.value.where == "--compaction-interval"


def test_shim_serve_refuses_the_same_duration_as_the_configuration():
    r = subprocess.run([sys.executable, "-m", "k8s_sql", "shim", "serve", "--compaction-interval", "forever",
                        "--datastore", "host=/nonexistent"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "invalid duration 'forever'" in r.stderr
    assert "expected a number at 'forever'" in r.stderr
    assert "expected a number at 'forever'" in str(error_of("shim: {compactionInterval: forever}\n"))


# --- print-defaults ------------------------------------------------------------------

def _serve_default(option: str):
    from k8s_sql.cli import app

    serve = typer.main.get_command(app).commands["shim"].commands["serve"]
    return next(p.default for p in serve.params if option in p.opts)


def test_print_defaults_is_the_same_on_every_machine_and_matches_the_shim():
    r = cli("config", "print-defaults")
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    name = next(line for line in lines if line.strip().startswith("name:"))
    assert re.fullmatch(r"  name: '' # empty: the host name of the node at init time.*", name)
    cfg = config.load(r.stdout)
    assert cfg.shim.compaction_interval == _serve_default("--compaction-interval") == DEFAULT_COMPACTION_INTERVAL
    assert cfg.shim.watch_progress_notify_interval == _serve_default("--watch-progress-notify-interval")
    assert "compactionInterval: '0' # Go duration, as the shim's --compaction-interval" in r.stdout


# --- help text -----------------------------------------------------------------------

@pytest.mark.parametrize("cmd", ["status", "reset"])
def test_plain_commands_have_no_phantom_subcommands(cmd):
    r = cli(cmd, "--help")
    assert r.returncode == 0
    assert f"k8s_sql {cmd} [OPTIONS]" in r.stdout
    assert "COMMAND [ARGS]" not in r.stdout


def test_help_is_not_cut_and_shows_defaults_in_brackets():
    r = cli("init", "phase", "--help")
    assert r.returncode == 0
    assert "…" not in r.stdout
    for opt in ("--ignore-preflight-errors", "--apiserver-advertise-address", "--ssh-known-hosts"):
        assert opt in r.stdout
    text = " ".join(r.stdout.replace("│", " ").split())
    assert "Name of this node in the cluster [default: the host name]." in text
    assert "unix:///var/run/crio/crio.sock [default: found on the node]." in text


@pytest.mark.parametrize("field,value,kind", [
    ("shim: {port: x}", "'x'", "an integer"),
    ("certificates: {validityDays: '30'}", "'30'", "an integer"),
    ("kubernetes: {singleNode: 1}", "1", "true or false"),
    ("node: {name: [a]}", "a list", "a string"),
])
def test_type_errors_read_as_english(field, value, kind):
    text = str(error_of(field + "\n"))
    assert f"must be {kind}, got {value}" in text
    assert not re.search(r"must be a (int|str|bool)\b", text)
