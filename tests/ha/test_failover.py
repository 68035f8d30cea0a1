"""The datastore survives the loss of a node: pg_auto_failover (a monitor and three keepers,
each a separate ``pg_autoctl run`` with its own PostgreSQL, in temp dirs, TLS and client
certificates only, as the installer sets them up) under two shims ("two control planes") on
the multi-host URI with ``target_session_attrs=read-write``; writers, readers and a watcher
on each shim.

1. The primary's keeper and PostgreSQL are SIGKILLed (a lost machine): a standby is promoted
   by the monitor with no manual step; writes resume (the time is measured and printed);
   later the old primary's keeper is started again ("the host returns") and it rejoins as a
   standby (fenced: it does not come back as a second primary).
2. The primary is cut off from the monitor and the other keepers (network namespaces, the
   link set down): the minority side acknowledges nothing that is later lost (synchronous
   replication: its commits cannot complete), a standby is promoted, and after the link is
   back the old primary rejoins as a standby.

Checked after each: every failed request failed with UNAVAILABLE (calls have a 30 s
deadline so the shim must answer, not the client give up); 0 acknowledged puts lost (each
in the final Range with its value and mod_revision); each watcher saw every acknowledged
put exactly once, revisions strictly increasing (no event missed or repeated); both shims
answer the same final Range and header revision; both shim processes are still alive (they
reconnected by themselves); /health of a shim reported the datastore down while there was
no primary. Nothing is stood in. With -s each test prints its counts and measured times.
"""

from __future__ import annotations

import os
import threading
import time
import urllib.error
import urllib.request

import pytest

from support import pg_auto_failover_missing, shim_support
from etcd_server import make_tls
from formation import Formation
from test_faults import (Reader, Watcher, Writer, acked_since, check_acked, current_revision, final_range,
                         stop_threads, summary)

pytestmark = [pytest.mark.slow, pytest.mark.skipif(pg_auto_failover_missing() is not None,
                                                   reason=pg_auto_failover_missing() or "")]

CALL_TIMEOUT = 30.0


class HealthPoller(threading.Thread):
    """GETs a shim's /health every 0.2 s; keeps (monotonic time, status code)."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.seen = url + "/health", []
        self.stop_ = threading.Event()

    def run(self):
        while not self.stop_.is_set():
            try:
                with urllib.request.urlopen(self.url, timeout=5) as r:
                    code = r.status
            except urllib.error.HTTPError as e:
                code = e.code
            except OSError:
                code = 0
            self.seen.append((time.monotonic(), code))
            self.stop_.wait(0.2)


@pytest.fixture
def formation():
    f = Formation(3)
    try:
        f.create()
        f.grant_shim()
        yield f
    finally:
        f.destroy()


def _shims(formation: Formation, tmp_path):
    tls = make_tls(tmp_path / "shim-pki")
    uri = formation.shim_uri()
    return [shim_support.ShimProcess(uri, tls).start(), shim_support.ShimProcess(uri, tls).start()]


def _run_fault(formation: Formation, shims, fault, heal, name: str, minority_deadline: bool = False) -> None:
    """Load on both shims; ``fault()`` -> the node that failed; wait for a new primary and
    for writes; ``heal(node)``; wait for it to be a standby; check everything.
    ``minority_deadline``: shim B is on the cut-off side, where a put may wait for the
    synchronous standby until the link is back, past the 30 s deadline (not acknowledged
    either way); shim A's requests must still fail only with UNAVAILABLE."""
    a, b = shims
    start = current_revision(a.channel) + 1
    watchers = [Watcher(a.channel, start), Watcher(b.channel, start)]
    writers = [Writer(s.channel, f"{tag}{i}", call_timeout=CALL_TIMEOUT) for s, tag in ((a, "a"), (b, "b"))
               for i in range(2)]
    readers = [Reader(a.channel, writers, CALL_TIMEOUT), Reader(b.channel, writers, CALL_TIMEOUT)]
    health = HealthPoller(a.metrics_url)
    try:
        for wt in watchers:
            wt.start()
            assert wt.created.wait(10), "watch not created"
        for t in writers + readers + [health]:
            t.start()
        time.sleep(2.0)
        before = acked_since(writers, 0)
        old = formation.primary()
        t_fault = time.monotonic()
        fault(old)
        new = _wait_new_primary(formation, old, timeout=90)
        t_promoted = time.monotonic()
        deadline = time.monotonic() + 60
        while not acked_since(writers, t_promoted) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert acked_since(writers, t_promoted), (
            f"no put acknowledged within 60 s after the promotion ({name}): states {formation.states()}, "
            f"put errors {[e for w in writers for e in w.errors][-6:]}\n"
            + "\n".join(f"--- {k.name}\n" + "\n".join(k.log[-12:]) for k in [formation.monitor, *formation.keepers]))
        time.sleep(2.0)
        heal(old)
        formation.wait_states({old.name: ("secondary",)}, timeout=120)
        time.sleep(1.0)
        stop_threads(writers + readers)
        health.stop_.set()
        resumed = _end_of_outage(writers, t_fault)
        during = sum(1 for w in writers for *_, at in w.acked if t_fault < at < t_promoted)
        acks = sorted(at for w in writers for *_, at in w.acked)
        gaps = sorted(((b - a, a - t_fault, b - t_fault) for a, b in zip(acks, acks[1:])), reverse=True)[:3]
        print(f"{name}: longest gaps without an ack (length, from, to; s after the fault): "
              + ", ".join(f"({g:.1f}, {a:.1f}, {b:.1f})" for g, a, b in gaps))
        print(f"{name}: {old.name} lost, {new} promoted after {t_promoted - t_fault:.1f} s, "
              f"writes resumed after {resumed - t_fault:.1f} s ({during} puts acked in between); "
              f"{old.name} rejoined as standby")

        errors = [e for t in writers + readers for e in t.errors]
        errors += [("DEADLINE_EXCEEDED@a", d) for t in writers[:2] + readers[:1] for c, d in t.errors
                   if c == "DEADLINE_EXCEEDED"]  # shim A (majority side) must answer
        allowed = ("UNAVAILABLE", "DEADLINE_EXCEEDED") if minority_deadline else ("UNAVAILABLE",)
        assert all(code in allowed for code, _ in errors), f"failures other than {allowed}: {errors[:10]}"
        for r in readers:
            assert not r.wrong, r.wrong[:5]
        assert before > 0 and acked_since(writers, resumed) > 0
        for s in shims:
            assert s.proc.poll() is None, "a shim exited:\n" + "\n".join(s.log[-30:])
        last = max(rev for w in writers for _, _, rev, _ in w.acked)
        for wt in watchers:
            assert wt.wait_for(last, 30), f"watcher stuck at {wt.next_rev - 1} < {last}; breaks {wt.breaks}"
        ra, rb = final_range(a.channel), final_range(b.channel)
        assert [(k.key, k.value, k.mod_revision) for k in ra.kvs] == [(k.key, k.value, k.mod_revision)
                                                                      for k in rb.kvs]
        assert ra.header.revision == rb.header.revision
        for wt in watchers:
            check_acked(writers, wt, ra)
            assert not wt.cancels, wt.cancels
        assert [ev for ev in watchers[0].events if ev[0] <= last] == [ev for ev in watchers[1].events
                                                                       if ev[0] <= last]
        window = [code for at, code in health.seen if t_fault + 0.5 < at < t_promoted]
        assert any(code != 200 for code in window) or t_promoted - t_fault < 1.5, (
            f"/health said 200 all along while there was no primary: {window}")
        assert formation.primary() is not old
        _check_status(formation, old)
    finally:
        for t in writers + readers:
            t.stop_.set()
        health.stop_.set()
        for wt in watchers:
            wt.close()
        summary(name, writers, readers, watchers)


def _check_status(formation: Formation, old) -> None:
    """``k8s-sql status``'s HA part, read from the monitor as on a node: one primary, the
    old one a healthy standby, a lag for each node."""
    from k8s_sql.config import Cluster
    from k8s_sql.host import LocalHost
    from k8s_sql.status import postgres_ha_status

    cfg = Cluster()
    cfg.paths.pki_dir = os.path.dirname(formation.tls.ca_file)
    cfg.postgres.ha.enabled = True
    cfg.postgres.ha.nodes = [formation.monitor.address]
    cfg.postgres.ha.monitor_port = formation.monitor.port
    host = LocalHost()
    if formation.monitor.netns:  # run as the node would, inside the monitor's namespace
        host.run = _in_netns(host.run, formation.monitor.netns)
    st = postgres_ha_status(host, cfg)
    assert st["up"], st
    roles = {n["name"]: n["role"] for n in st["nodes"]}
    assert sorted(roles.values()) == ["primary", "standby", "standby"] and roles[old.name] == "standby", st
    assert all(n["healthy"] and n["lag_bytes"] is not None for n in st["nodes"]), st


def _in_netns(run, ns: str):
    def wrapped(argv, user=None, **kw):
        inner = ["runuser", "-u", user, "--", *argv] if user else list(argv)
        return run(["ip", "netns", "exec", ns, *inner], **kw)
    return wrapped


def _end_of_outage(writers, t_fault: float) -> float:
    """When writes resumed: the end of the longest interval without an acknowledged put
    that overlaps the fault (acks just after it are puts the old primary had committed)."""
    acks = sorted(at for w in writers for *_, at in w.acked)
    gaps = [(b - a, b) for a, b in zip(acks, acks[1:]) if b > t_fault]
    return max(gaps)[1]


def _wait_new_primary(formation: Formation, old, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            st = formation.states()
        except RuntimeError:
            time.sleep(0.2)
            continue
        for name, (rep, asg) in st.items():
            if name != old.name and rep == asg and rep in ("primary", "wait_primary"):
                return name
        time.sleep(0.2)
    raise TimeoutError(f"no standby promoted within {timeout} s: {formation.states()}")


def test_primary_killed_then_returns(formation, tmp_path):
    shims = _shims(formation, tmp_path)
    try:
        _run_fault(formation, shims, fault=formation.kill, heal=formation.start_service, name="primary SIGKILL")
    finally:
        for s in shims:
            s.stop()


class NsShim(shim_support.ShimProcess):
    """A shim run in a network namespace, listening on ``listen_ip`` there (its server
    certificate names localhost, so channels check that name)."""

    def __init__(self, datastore, tls, netns: str, listen_ip: str):
        self.netns, self.listen_ip = netns, listen_ip
        super().__init__(datastore, tls)

    endpoint = property(lambda self: f"https://{self.listen_ip}:{self.port}")
    address = property(lambda self: f"{self.listen_ip}:{self.port}")
    metrics_url = property(lambda self: f"http://{self.listen_ip}:{self.metrics_port}")

    def argv(self) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *super().argv()]

    def channel(self):
        import grpc
        return grpc.secure_channel(self.address, self.credentials(),
                                   options=[("grpc.ssl_target_name_override", "localhost")])


def test_primary_cut_off_then_returns(tmp_path):
    """Shim A runs with the monitor on the majority side; shim B in the primary's own
    namespace, so while the primary is cut off B can reach only it: B's puts must not be
    acknowledged (synchronous replication to a standby it cannot reach), its reads must not
    go stale against A's acknowledged puts, and after the link is back B reaches the new
    primary by itself."""
    from netns import HUB_CLIENT, NODE1_CLIENT, Net

    net = Net(3).create()
    f = None
    shims = []
    try:
        f = Formation(3, addresses=net.addresses, netns=net.nodes, monitor_address=net.monitor_address,
                      monitor_netns=net.hub)
        f.create()
        f.grant_shim()
        assert f.primary() is f.keepers[0], f.states()
        tls = make_tls(tmp_path / "shim-pki")
        uri = f.shim_uri()
        shims = [NsShim(uri, tls, net.hub, HUB_CLIENT[1]).start(), NsShim(uri, tls, net.nodes[0],
                                                                           NODE1_CLIENT[1]).start()]

        def cut(node):
            assert node is f.keepers[0]
            net.cut(0)

        _run_fault(f, shims, fault=cut, heal=lambda node: net.heal(0), name="primary cut off",
                   minority_deadline=True)
    finally:
        for s in shims:
            s.stop()
        if f is not None:
            f.destroy()
        net.destroy()
