"""The preflight phase: each check against a scratch node tree (``LocalHost(root=…)``:
os-release, /proc and /sys files are read under it; commands such as ``which`` and ``id``
run on this machine), and through the CLI on this machine for what needs the real thing:
a port bound by this test, the PostgreSQL socket of the session cluster; and commands run
as ``nobody`` for the non-root check."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
from rich.console import Console

from k8s_sql.config import load
from k8s_sql.errors import K8sSqlError
from k8s_sql.host import LocalHost
from k8s_sql.phases.base import Context, RunOptions
from k8s_sql.phases.preflight import Preflight, run_checks

GOOD = {
    "etc/os-release": 'ID=debian\nVERSION_ID="12"\nVERSION_CODENAME=bookworm\nPRETTY_NAME="Debian GNU/Linux 12"\n',
    "proc/swaps": "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n",
    "proc/modules": "overlay 151552 0 - Live 0x0\nbr_netfilter 32768 0 - Live 0x0\n",
    "proc/sys/net/ipv4/ip_forward": "1\n",
    "proc/sys/net/bridge/bridge-nf-call-iptables": "1\n",
    "proc/net/tcp": "  sl  local_address rem_address   st\n",
    "proc/net/tcp6": "  sl  local_address rem_address   st\n",
}


def node_tree(tmp_path, **files):
    for rel, text in {**GOOD, **files}.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return tmp_path


def ctx_for(root, config="", host=None, **options):
    cfg = load("apiVersion: k8s-sql.io/v1alpha1\nkind: Cluster\n" + config if config else None)
    return Context(host or LocalHost(root=str(root)), cfg, console=Console(file=open(os.devnull, "w")),
                   options=RunOptions(**options))


def listen_line(port: int) -> str:
    return f"   0: 0100007F:{port:04X} 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0  0 1 1\n"


def test_good_node_passes(tmp_path):
    assert Preflight().plan(ctx_for(node_tree(tmp_path))) == []


def test_every_failure_listed_with_its_fix(tmp_path):
    root = node_tree(tmp_path, **{
        "etc/os-release": 'ID=ubuntu\nVERSION_ID="20.04"\nPRETTY_NAME="Ubuntu 20.04.6 LTS"\n',
        "proc/swaps": GOOD["proc/swaps"] + "/swap.img file 2097148 0 -2\n",
        "proc/modules": "overlay 151552 0 - Live 0x0\n",
        "proc/sys/net/ipv4/ip_forward": "0\n",
        "proc/net/tcp": GOOD["proc/net/tcp"] + listen_line(2379),
    })
    os.unlink(root / "proc/sys/net/bridge/bridge-nf-call-iptables")
    with pytest.raises(K8sSqlError) as e:
        Preflight().plan(ctx_for(root))
    msg = str(e.value)
    for expected in ("6 preflight check(s) failed",
                     "[ERROR OperatingSystem]: Ubuntu 20.04.6 LTS is not supported",
                     "[ERROR Port-2379]: port 2379 (for the shim's etcd endpoint) is in use — fix: find the process "
                     "with `ss -ltnp 'sport = :2379'`",
                     "[ERROR Swap]: swap is on", "fix: swapoff -a",
                     "[ERROR KernelModule-br_netfilter]", "fix: modprobe br_netfilter",
                     "[ERROR Sysctl-net.ipv4.ip_forward]: net.ipv4.ip_forward is 0", "sysctl -w net.ipv4.ip_forward=1",
                     "[ERROR Sysctl-net.bridge.bridge-nf-call-iptables]", "modprobe br_netfilter && sysctl -w",
                     "--ignore-preflight-errors=OperatingSystem,Port-2379,Swap"):
        assert expected in msg, msg
    # ignoring some turns them into warnings; prereqs later in the same run fixes the rest
    assert Preflight().plan(ctx_for(root, ignore_preflight_errors=frozenset({"operatingsystem", "port-2379"}),
                                    phases=("preflight", "prereqs", "pki"))) == []
    assert Preflight().plan(ctx_for(root, ignore_preflight_errors=frozenset({"all"}))) == []


def test_own_services_do_not_count_as_busy_ports(tmp_path):
    """After an init, kube-apiserver (6443) and the shim (2379/2381) listen: with our
    manifest in place that is expected; the same ports without it are errors."""
    tcp = GOOD["proc/net/tcp"] + "".join(listen_line(p) for p in (6443, 2379, 2381))
    root = node_tree(tmp_path, **{"proc/net/tcp": tcp})
    names = {f.name for f in run_checks(ctx_for(root))}
    assert {"Port-6443", "Port-2379", "Port-2381"} <= names
    (root / "etc/kubernetes/manifests").mkdir(parents=True)
    (root / "etc/kubernetes/manifests/kube-apiserver.yaml").write_text("containers:\n- name: k8s-sql-shim\n")
    assert not {f.name for f in run_checks(ctx_for(root))} & {"Port-6443", "Port-2379", "Port-2381"}


def test_local_postgres_port_is_ours_when_its_socket_is_there(tmp_path, pg):
    """The session cluster listens on its port; with its socket dir configured the port
    is ours, with another socket dir it is someone else's."""
    root = node_tree(tmp_path)
    cfg = f"postgres: {{port: {pg.port}, socketDir: {pg.socket_dir}}}\n"
    ctx = Context(LocalHost(), load("apiVersion: k8s-sql.io/v1alpha1\nkind: Cluster\n" + cfg))
    assert f"Port-{pg.port}" not in {f.name for f in run_checks(ctx)}
    ctx = Context(LocalHost(), load("apiVersion: k8s-sql.io/v1alpha1\nkind: Cluster\n"
                                    f"postgres: {{port: {pg.port}, socketDir: {root}}}\n"))
    assert f"Port-{pg.port}" in {f.name for f in run_checks(ctx)}


def cli(*args):
    argv = [sys.executable, "-m", "k8s_sql", "init", "phase", "preflight", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "250"})


def test_cli_busy_port_and_ignore(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        cfg = tmp_path / "c.yaml"
        cfg.write_text(f"apiVersion: k8s-sql.io/v1alpha1\nkind: Cluster\nshim: {{port: {port}}}\n")
        r = cli("-c", str(cfg))
        assert r.returncode == 1 and f"[ERROR Port-{port}]: port {port}" in r.stderr, r.stdout + r.stderr
        assert f"ss -ltnp 'sport = :{port}'" in r.stderr
        r = cli("-c", str(cfg), "--ignore-preflight-errors", "all")
        assert r.returncode == 0 and f"[WARNING Port-{port}]" in r.stdout, r.stdout + r.stderr


class NobodyHost(LocalHost):
    """This machine, with every command run as the unprivileged ``nobody`` (``runuser``):
    the interpreter lives under /root, which nobody cannot execute, so the phase runs in
    this process and only its commands (``id -u``, ``command -v``) run as nobody."""

    def run(self, argv, **kwargs):
        kwargs.setdefault("user", "nobody")
        return super().run(argv, **kwargs)


def test_non_root(tmp_path):
    ctx = ctx_for(node_tree(tmp_path))
    ctx.host = NobodyHost(root=str(tmp_path))
    with pytest.raises(K8sSqlError) as e:
        Preflight().plan(ctx)
    assert "1 preflight check(s) failed" in str(e.value)
    assert "[ERROR IsPrivilegedUser]: k8s-sql init must run as root — fix: sudo k8s-sql init" in str(e.value)


def test_missing_modprobe_is_left_to_prereqs(tmp_path):
    """A minimal VM without kmod: modprobe is missing, and prereqs installs kmod before it
    loads modules, so within ``init`` this is a warning, as the other checks prereqs
    fixes; run alone, preflight still fails on it. The node is a ScratchHost tree holding
    every other binary preflight looks for (``which`` answers from the tree), since this
    machine has modprobe."""
    import io

    from k8s_sql.host import ScratchHost
    from k8s_sql.phases.preflight import BASE_BINARIES

    root = node_tree(tmp_path)
    (root / "usr/bin").mkdir(parents=True)
    for binary in BASE_BINARIES:
        if binary != "modprobe":
            (root / "usr/bin" / binary).write_text("")
            (root / "usr/bin" / binary).chmod(0o755)
    out = io.StringIO()
    ctx = ctx_for(root, host=ScratchHost(str(root)), phases=("preflight", "prereqs", "pki"))
    ctx.console = Console(file=out, width=300)
    assert Preflight().plan(ctx) == []
    assert ("[WARNING FileExisting-modprobe]: modprobe not found in PATH — fix: apt-get install -y kmod "
            "(prereqs runs next and fixes it)") in out.getvalue()
    with pytest.raises(K8sSqlError) as e:
        Preflight().plan(ctx_for(root, host=ScratchHost(str(root))))
    assert "1 preflight check(s) failed" in str(e.value) and "[ERROR FileExisting-modprobe]" in str(e.value)


@pytest.mark.parametrize("phases", [None, ("preflight", "prereqs", "pki"), ("preflight", "pki", "postgres")])
def test_curl_and_gpg_are_not_required(tmp_path, phases):
    """curl and gpg fetch repository keys in prereqs, which installs them first when it
    needs them; no other phase runs them. A node without them passes preflight, whether
    preflight runs alone, within init, or with prereqs skipped. The node is a ScratchHost
    tree holding the other binaries (this machine has curl and gpg)."""
    from k8s_sql.host import ScratchHost
    from k8s_sql.phases.preflight import BASE_BINARIES, INSTALLED_BINARIES

    root = node_tree(tmp_path)
    (root / "usr/bin").mkdir(parents=True)
    for binary in (*BASE_BINARIES, *INSTALLED_BINARIES, "psql"):
        (root / "usr/bin" / binary).write_text("")
        (root / "usr/bin" / binary).chmod(0o755)
    assert not (root / "usr/bin/curl").exists() and not (root / "usr/bin/gpg").exists()
    assert Preflight().plan(ctx_for(root, host=ScratchHost(str(root)), phases=phases)) == []
