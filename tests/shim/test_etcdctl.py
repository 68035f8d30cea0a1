"""etcdctl (Debian's etcd-client 3.4, ``ETCDCTL_API=3``) end to end over mTLS.

Every test runs twice: against the shim (the ``shim`` fixture: a real ``k8s-sql shim serve``
process on a temp PostgreSQL) and against a real etcd 3.4 started with the same kind of
TLS (``--cert-file --key-file --trusted-ca-file --client-cert-auth``). Both must give the
same answers, so the assertions check etcd's behaviour as a user sees it through etcdctl,
not whatever the shim happens to do. Nothing is stood in.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass

import pytest

from etcd_server import ETCDCTL, EtcdServer, make_tls


@dataclass
class Target:
    """An etcd-API endpoint and the client files etcdctl needs."""

    kind: str  # "etcd" or "shim"
    endpoint: str
    ca_file: str
    cert_file: str
    key_file: str
    version: str  # what Status.version must say

    def argv(self, *args: str, cert: bool = True) -> list[str]:
        argv = [ETCDCTL, "--endpoints", self.endpoint, "--cacert", self.ca_file,
                "--dial-timeout", "5s", "--command-timeout", "15s"]
        if cert:
            argv += ["--cert", self.cert_file, "--key", self.key_file]
        return argv + list(args)

    def run(self, *args: str, input: str | None = None, check: bool = True, cert: bool = True):
        res = subprocess.run(self.argv(*args, cert=cert), input=input, capture_output=True, text=True,
                             env=dict(os.environ, ETCDCTL_API="3"), timeout=60)
        if check and res.returncode != 0:
            raise AssertionError(f"etcdctl {' '.join(args)} failed ({res.returncode}) on {self.kind}:\n"
                                 f"{res.stdout}{res.stderr}")
        return res

    def json(self, *args: str):
        return json.loads(self.run(*args, "-w", "json").stdout)

    def revision(self) -> int:
        return int(self.json("get", "k8s-sql-test/no-such-key")["header"]["revision"])


@pytest.fixture(scope="module")
def etcd_target(tmp_path_factory):
    base = tmp_path_factory.mktemp("etcd")
    server = EtcdServer(base, tls=make_tls(base / "pki")).start()
    yield Target("etcd", server.endpoint, server.ca_file, server.cert_file, server.key_file, "3.4.23")
    server.stop()


@pytest.fixture(params=["shim", "etcd"])
def ctl(request) -> Target:
    if request.param == "etcd":
        return request.getfixturevalue("etcd_target")
    shim = request.getfixturevalue("shim")
    version = getattr(shim, "emulated_etcd_version", None) or shim.settings.emulated_etcd_version
    return Target("shim", shim.endpoint, shim.ca_file, shim.cert_file, shim.key_file, version)


class Watcher:
    """``etcdctl watch ...`` in the background; a thread collects its output lines."""

    def __init__(self, ctl: Target, *args: str):
        self.lines: list[str] = []
        self.proc = subprocess.Popen(ctl.argv("watch", *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=dict(os.environ, ETCDCTL_API="3"))
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, line: str, then=None, tries: int = 300) -> list[str]:
        """Wait until ``line`` was printed (calling ``then()`` between polls); returns all lines."""
        for _ in range(tries):
            if line in self.lines:
                return list(self.lines)
            if self.proc.poll() is not None:
                self.thread.join(5)
                if line in self.lines:
                    return list(self.lines)
                raise AssertionError(f"etcdctl watch exited: {self.proc.stderr.read()}")
            if then:
                then()
            time.sleep(0.05)
        raise AssertionError(f"etcdctl watch never printed {line!r}; got {self.lines}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def prefix() -> str:
    return f"/t-{uuid.uuid4().hex[:8]}/"


def test_put_get_delete_with_prefixes(ctl, prefix):
    assert ctl.run("put", prefix + "a", "1").stdout.strip() == "OK"
    ctl.run("put", prefix + "b", "2")
    ctl.run("put", prefix + "c/d", "3")
    assert ctl.run("get", prefix + "a").stdout.splitlines() == [prefix + "a", "1"]
    assert ctl.run("get", prefix + "a", "--print-value-only").stdout.strip() == "1"
    assert ctl.run("get", prefix, "--prefix", "--keys-only").stdout.split() == [prefix + "a", prefix + "b",
                                                                                prefix + "c/d"]
    # a range [a, c) with the end key given
    assert ctl.run("get", prefix + "a", prefix + "c", "--keys-only").stdout.split() == [prefix + "a", prefix + "b"]
    assert ctl.json("get", prefix, "--prefix")["count"] == 3
    assert ctl.run("get", prefix, "--prefix", "--limit", "1", "--keys-only").stdout.split() == [prefix + "a"]
    assert ctl.run("del", prefix + "c", "--prefix").stdout.strip() == "1"
    assert ctl.run("del", prefix + "nothing").stdout.strip() == "0"
    assert ctl.run("del", prefix, "--prefix", "--prev-kv").stdout.splitlines() == ["2", prefix + "a", "1",
                                                                                   prefix + "b", "2"]
    assert ctl.run("get", prefix, "--prefix").stdout == ""


def test_get_at_revision_and_kv_metadata(ctl, prefix):
    key = prefix + "k"
    ctl.run("put", key, "v1")
    first = ctl.json("get", key)["kvs"][0]
    ctl.run("put", key, "v2")
    second = ctl.json("get", key)["kvs"][0]
    assert second["create_revision"] == first["create_revision"]
    assert second["mod_revision"] > first["mod_revision"]
    assert (first["version"], second["version"]) == (1, 2)
    old = ctl.run("get", key, "--rev", str(first["mod_revision"]), "--print-value-only").stdout.strip()
    assert old == "v1"
    ctl.run("del", key)
    assert ctl.run("get", key).stdout == ""
    assert ctl.run("get", key, "--rev", str(second["mod_revision"]), "--print-value-only").stdout.strip() == "v2"
    # a future revision is refused like etcd does
    res = ctl.run("get", key, "--rev", str(ctl.revision() + 1000), check=False)
    assert res.returncode != 0
    assert "etcdserver: mvcc: required revision is a future revision" in res.stderr


def test_txn_interactive(ctl, prefix):
    key = prefix + "x"
    ctl.run("put", key, "old")
    script = f'value("{key}") = "old"\n\nput {key} new\nput {prefix}y created\n\nput {prefix}z failure\n\n'
    out = ctl.run("txn", input=script).stdout.splitlines()
    assert out == ["SUCCESS", "", "OK", "", "OK"]
    assert ctl.run("get", key, "--print-value-only").stdout.strip() == "new"
    # the compare fails now: the else branch runs
    out = ctl.run("txn", input=script).stdout.splitlines()
    assert out == ["FAILURE", "", "OK"]
    assert ctl.run("get", prefix + "z", "--print-value-only").stdout.strip() == "failure"
    # compare on mod_revision and version, and a get inside the transaction
    mod = ctl.json("get", key)["kvs"][0]["mod_revision"]
    script = f'mod("{key}") = "{mod}"\nver("{key}") = "2"\n\nget {key}\n\n\n'
    assert ctl.run("txn", input=script).stdout.splitlines() == ["SUCCESS", "", key, "new"]


def test_watch_sees_puts_and_deletes(ctl, prefix):
    w = Watcher(ctl, prefix, "--prefix")
    try:
        # etcdctl prints nothing when the watch is created; write until an event shows up
        marker = prefix + "ready"
        w.wait_for(marker, then=lambda: ctl.run("put", marker, "1"))
        ctl.run("put", prefix + "a", "hello")
        ctl.run("del", prefix + "a")
        ctl.run("put", prefix + "end", "1")
        lines = w.wait_for(prefix + "end")
        tail = lines[lines.index(prefix + "a") - 1:]
        # etcdctl prints a DELETE event as the event type, the key and an empty value line
        assert tail[:7] == ["PUT", prefix + "a", "hello", "DELETE", prefix + "a", "", "PUT"]
    finally:
        w.stop()


def test_watch_from_revision_replays_history(ctl, prefix):
    ctl.run("put", prefix + "h", "1")
    start = ctl.revision()
    ctl.run("put", prefix + "h", "2")
    ctl.run("put", prefix + "h", "3")
    w = Watcher(ctl, prefix + "h", "--rev", str(start))
    try:
        w.wait_for("3")
        assert w.lines[:9] == ["PUT", prefix + "h", "1", "PUT", prefix + "h", "2", "PUT", prefix + "h", "3"]
    finally:
        w.stop()


def test_lease_lifecycle(ctl, prefix):
    out = ctl.run("lease", "grant", "60").stdout
    # "lease 694d7e9ae1e4c20b granted with TTL(60s)"
    words = out.split()
    assert words[0] == "lease" and words[2:5] == ["granted", "with", "TTL(60s)"], out
    lease = words[1]
    ctl.run("put", prefix + "leased", "v", "--lease", lease)
    ctl.run("put", prefix + "other", "v", "--lease", lease)
    assert ctl.run("lease", "keep-alive", "--once", lease).stdout.split()[:3] == ["lease", lease, "keepalived"]
    ttl = ctl.json("lease", "timetolive", lease, "--keys")
    assert 0 < ttl["ttl"] <= 60 and ttl["granted-ttl"] == 60
    keys = sorted(__import__("base64").b64decode(k).decode() for k in ttl["keys"])
    assert keys == [prefix + "leased", prefix + "other"]
    assert lease in ctl.run("lease", "list").stdout.split()
    assert ctl.run("lease", "revoke", lease).stdout.strip() == f"lease {lease} revoked"
    assert ctl.run("get", prefix, "--prefix").stdout == ""
    gone = ctl.run("lease", "timetolive", lease).stdout.strip()
    assert gone == f"lease {lease} already expired"
    res = ctl.run("lease", "revoke", lease, check=False)
    assert res.returncode != 0 and "etcdserver: requested lease not found" in res.stderr
    res = ctl.run("put", prefix + "x", "v", "--lease", lease, check=False)
    assert res.returncode != 0 and "etcdserver: requested lease not found" in res.stderr


def test_compaction(ctl, prefix):
    key = prefix + "c"
    ctl.run("put", key, "1")
    old = ctl.revision()
    ctl.run("put", key, "2")
    now = ctl.revision()
    assert ctl.run("compaction", str(now)).stdout.strip() == f"compacted revision {now}"
    res = ctl.run("get", key, "--rev", str(old), check=False)
    assert res.returncode != 0
    assert "etcdserver: mvcc: required revision has been compacted" in res.stderr
    assert ctl.run("get", key, "--rev", str(now), "--print-value-only").stdout.strip() == "2"
    res = ctl.run("compaction", str(old), check=False)
    assert res.returncode != 0
    assert "etcdserver: mvcc: required revision has been compacted" in res.stderr


def test_endpoint_status_health_member_list(ctl, prefix):
    ctl.run("put", prefix + "s", "1")
    rev = ctl.revision()
    [status] = ctl.json("endpoint", "status")
    assert status["Endpoint"] == ctl.endpoint
    st = status["Status"]
    assert st["version"] == ctl.version
    assert st["header"]["revision"] >= rev
    assert st["dbSize"] > 0
    assert st["leader"] == st["header"]["member_id"]
    assert st["raftIndex"] > 0
    assert not st.get("isLearner", False)
    health = ctl.run("endpoint", "health")
    health = health.stdout + health.stderr  # etcdctl 3.4 prints the result on stderr
    assert f"{ctl.endpoint} is healthy: successfully committed proposal" in health
    members = ctl.json("member", "list")
    [member] = members["members"]
    assert member["ID"] == st["header"]["member_id"]
    assert member["clientURLs"] == [ctl.endpoint]
    assert member["name"]
    line = ctl.run("member", "list").stdout.strip()
    assert line.split(", ")[2] == member["name"] and line.split(", ")[1] == "started"


def test_client_without_certificate_is_refused(ctl, prefix):
    res = ctl.run("put", prefix + "nocert", "1", cert=False, check=False)
    assert res.returncode != 0
    assert ctl.run("get", prefix + "nocert").stdout == ""


def test_maintenance_and_membership_of_a_single_member(ctl):
    assert ctl.run("alarm", "list").stdout == ""
    assert ctl.run("alarm", "disarm").stdout == ""
    assert ctl.run("defrag").stdout.strip() == f"Finished defragmenting etcd member[{ctl.endpoint}]"
    me = "%x" % ctl.json("member", "list")["members"][0]["ID"]
    assert ctl.run("move-leader", me).stdout.strip() == f"Leadership transferred from {me} to {me}"
    for args, message in [
        (("move-leader", "1234"), "etcdserver: bad leader transferee"),
        (("member", "remove", "1234"), "etcdserver: member not found"),
        (("member", "promote", "1234"), "etcdserver: member not found"),
        (("member", "promote", me), "etcdserver: can only promote a learner member"),
        (("member", "update", "1234", "--peer-urls=http://127.0.0.1:1"), "etcdserver: member not found"),
    ]:
        res = ctl.run(*args, check=False)
        assert res.returncode != 0 and res.stderr.rstrip().endswith(f"Error: {message}"), (args, res.stderr[-300:])
