"""``python3 -m bench.kube``: the datastore as users feel it — through a real kube-apiserver.

kube-apiserver v1.20.2 (built and cached by ``tests/kube/build-kubernetes.sh``) runs with
kubeadm's flags twice, side by side: on etcd 3.4 (mTLS, as kubeadm's stacked etcd) and on the
shim deployed as k8s-sql deploys it (``init phase pki`` + ``init phase postgres``, the sidecar's
command line, so ``--workers auto``); ``tests/kube/kube.py`` starts both. Then, in interleaved
rounds (the order flips every round), kubectl drives each through one namespace per round:

- create: N ConfigMaps of 1 KiB, 8 ``kubectl create -f`` in parallel (N/8 objects each);
- list: ``kubectl get configmaps -o name`` (pages of 500), median of 3;
- update: ``kubectl label configmaps --all`` (one PATCH after the other);
- delete: ``kubectl delete configmaps --all --wait=false`` (one DELETE after the other; with
  the default --wait kubectl 1.20 then waits for each object in turn, ~0.2 s each on both
  datastores alike, which would hide the datastore);
- watch: ``kubectl get configmaps --watch --output-watch-events`` from before the create; its
  lag is how long after the label command returned it printed the last MODIFIED event, and it must
  see every ADDED, MODIFIED and DELETED event. (kubectl delete waits for the deletions, so
  the lag is taken after the update.)

Also the datastore's CPU time per ConfigMap over the four phases (all its processes,
/proc/<pid>/stat). Ratios shim/etcd are computed within each round. Results go to
``bench/results/<date>-kube.{md,csv,png}``. Timings are never asserted.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.harness import git_version, results_stem, run_and_print
from bench.report import Figure, Results
from bench.services import ROOT, cpu_seconds, process_tree

sys.path.insert(0, os.path.join(ROOT, "tests", "kube"))
#: Where tests/kube/build-kubernetes.sh caches its build (its K8S_SQL_KUBE_CACHE default).
CACHE = os.path.join(os.environ.get("K8S_SQL_KUBE_CACHE", "/var/cache/k8s-sql-tests"),
                     "kubernetes-1.20.5+really1.20.2-1.1+deb12u1")

FIGURES = [
    Figure("kube_create_s", "s", "kubectl create N ConfigMaps (8 parallel kubectl)", ("ratio", "<=", 1.25)),
    Figure("kube_list_s", "s", "kubectl get configmaps (N objects, pages of 500)", ("ratio", "<=", 1.25)),
    Figure("kube_update_s", "s", "kubectl label --all (sequential PATCH)", ("ratio", "<=", 1.25)),
    Figure("kube_delete_s", "s", "kubectl delete --all --wait=false (sequential DELETE)", ("ratio", "<=", 1.25)),
    Figure("kube_watch_lag_s", "s", "kubectl watch: last MODIFIED event after label returned"),
    Figure("kube_watch_missing", "events", "kubectl watch: events not seen (of 3 N)", ("shim", "<=", 0.0)),
    Figure("kube_cpu_ms_per_object", "ms", "datastore CPU time per ConfigMap (create+list+update+delete)"),
]

NOTES = """## Notes

- Both kube-apiservers run all the time (kubeadm's flags, loopback); each phase is timed from
  the start of kubectl to its exit, so kubectl's own start-up (the same on both) is included.
- kube-apiserver's etcd client keeps one gRPC connection to its datastore, so on the shim one
  worker process serves each kube-apiserver (the kernel spreads connections, not requests).
- The machine is shared with other work (see the conditions above); ratios are computed within
  each round, which is what makes them comparable.
"""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def configmaps(ns: str, first: int, count: int) -> str:
    """YAML of ``count`` ConfigMaps ``cm-<i>`` in ``ns`` with 1 KiB of data each."""
    docs = []
    for i in range(first, first + count):
        docs.append(f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm-{i:05d}\n  namespace: {ns}\n"
                    f"data:\n  payload: \"{'x' * 1024}\"\n")
    return "---\n".join(docs)


class Watcher:
    """``kubectl get configmaps --watch --output-watch-events --no-headers`` in ``ns``; counts
    events by type with the time each was read."""

    def __init__(self, kubectl, ns: str):
        self.proc = kubectl.popen("get", "configmaps", "-n", ns, "--watch", "--output-watch-events", "--no-headers")
        self.events: dict[str, list[float]] = {}
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            kind = line.split(" ", 1)[0].strip()
            self.events.setdefault(kind, []).append(time.monotonic())

    def count(self, kind: str) -> int:
        return len(self.events.get(kind, []))

    def wait(self, kind: str, n: int, timeout: float) -> float | None:
        """Time the ``n``-th ``kind`` event was read (monotonic), None when not within ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while self.count(kind) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.events[kind][n - 1] if self.count(kind) >= n else None

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def one_round(kubectl, pids, ns: str, n: int, work: Path) -> dict[str, float]:
    """The five phases against one kube-apiserver in namespace ``ns``; figures as FIGURES."""
    kubectl("create", "namespace", ns)
    files = []
    per = -(-n // 8)
    for j in range(8):
        count = min(per, n - j * per)
        if count > 0:
            files.append(work / f"{ns}-{j}.yaml")
            files[-1].write_text(configmaps(ns, j * per, count))
    watcher = Watcher(kubectl, ns)
    time.sleep(1.0)  # the watch is established before the first create
    out = {}
    procs = pids()
    c0 = cpu_seconds(procs)
    t = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda f: kubectl("create", "-f", str(f), timeout=600), files))
    out["kube_create_s"] = time.monotonic() - t
    lists = []
    for _ in range(3):
        t = time.monotonic()
        names = kubectl("get", "configmaps", "-n", ns, "-o", "name", timeout=300).stdout.split()
        lists.append(time.monotonic() - t)
        if len(names) != n:
            raise RuntimeError(f"list in {ns} gave {len(names)} ConfigMaps, not {n}")
    out["kube_list_s"] = statistics.median(lists)
    t = time.monotonic()
    kubectl("label", "configmaps", "--all", "-n", ns, "bench=updated", timeout=1200)
    done = time.monotonic()
    out["kube_update_s"] = done - t
    last = watcher.wait("MODIFIED", n, 60)
    out["kube_watch_lag_s"] = max(0.0, last - done) if last else float("nan")
    t = time.monotonic()
    kubectl("delete", "configmaps", "--all", "-n", ns, "--wait=false", timeout=1200)
    out["kube_delete_s"] = time.monotonic() - t
    out["kube_cpu_ms_per_object"] = (cpu_seconds(procs) - c0) * 1000 / n
    watcher.wait("DELETED", n, 60)
    watcher.stop()
    out["kube_watch_missing"] = float(sum(max(0, n - watcher.count(k)) for k in ("ADDED", "MODIFIED", "DELETED")))
    kubectl("delete", "namespace", ns, "--wait=false")
    return out


def binaries(work: Path, ensure_binaries) -> Path:
    """A private copy of kube-apiserver and kubectl v1.20.2 in ``work``/bin: from the cache of
    tests/kube/build-kubernetes.sh when it has them (a rebuild for other commands may swap
    that directory meanwhile), else built by it."""
    cached = Path(CACHE) / "bin"
    if not all(os.access(cached / c, os.X_OK) for c in ("kube-apiserver", "kubectl")):
        log("building kube-apiserver v1.20.2 (tests/kube/build-kubernetes.sh)")
        cached = ensure_binaries(work / "build.log")
    (work / "bin").mkdir()
    for c in ("kube-apiserver", "kubectl"):
        shutil.copy2(cached / c, work / "bin" / c)
    return work / "bin"


def run(args) -> str:
    from kube import EtcdDatastore, KubeApiserver, Kubectl, ShimDatastore, ensure_binaries, free_port
    from kubepki import make_kube_pki

    work = Path(tempfile.mkdtemp(prefix="k8s-sql-bench-kube-"))
    os.chmod(work, 0o755)
    bindir = binaries(work, ensure_binaries)
    res = Results(figures=FIGURES, title="Kubernetes level: kube-apiserver v1.20.2 on the shim vs on etcd",
                  notes=NOTES)
    stores, apis, kubectls, pids = {}, [], {}, {}
    try:
        for system in ("etcd", "shim"):
            log(f"starting {system} and a kube-apiserver on it")
            store = EtcdDatastore(work / "etcd") if system == "etcd" else ShimDatastore()
            stores[system] = store
            store.start()
            port = free_port()
            pki = make_kube_pki(work / f"pki-{system}", f"https://127.0.0.1:{port}")
            api = KubeApiserver(bindir / "kube-apiserver", pki, store, port, work / f"kube-apiserver-{system}.log")
            apis.append(api)
            api.start()
            kubectls[system] = Kubectl(bindir / "kubectl", pki.admin_conf, work / f"kubectl-cache-{system}")
            proc = store.server.proc if system == "etcd" else store.daemon.proc
            pids[system] = lambda proc=proc: process_tree(proc.pid)
        from k8s_sql.shim.workers import auto_workers
        res.meta = {
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{os.cpu_count()} CPUs, {os.uname().release}",
            "kube-apiserver": f"v1.20.2 ({bindir}), kubeadm's flags, loopback",
            "etcd": subprocess.run(["etcd", "--version"], capture_output=True, text=True).stdout.splitlines()[0],
            "shim": f"k8s-sql @ {git_version(ROOT)}: shim serve with the sidecar's command line (--workers auto = "
                    f"{auto_workers().workers} here), PostgreSQL {stores['shim'].pg.major} (temp cluster, verify-full)",
            "sizes": f"{args.objects} ConfigMaps of 1 KiB, {args.rounds} interleaved rounds",
        }
        if args.note:
            res.meta["conditions"] = args.note
        for rnd in range(1, args.rounds + 1):
            order = ["etcd", "shim"] if rnd % 2 else ["shim", "etcd"]
            for system in order:
                log(f"round {rnd}: {args.objects} ConfigMaps on {system}")
                for fig, v in one_round(kubectls[system], pids[system], f"bench-r{rnd}", args.objects, work).items():
                    res.add(system, fig, v)
                    log(f"  {fig} = {v:.3g}")
    finally:
        for api in apis:
            api.stop()
        for store in stores.values():
            store.stop()
        shutil.rmtree(work, ignore_errors=True)
    stem = results_stem(args.output, "kube" + ("-quick" if args.quick else ""))
    res.write_markdown(stem + ".md")
    res.write_csv(stem + ".csv")
    res.write_chart(stem + ".png")
    return stem


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m bench.kube", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--objects", type=int, default=800, help="ConfigMaps per round (default 800)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--quick", action="store_true", help="16 objects, 1 round: proves the scenario end to end")
    p.add_argument("--note", default="", help="conditions of the run, written into the results")
    p.add_argument("--output", default="", help="directory for the .md/.csv/.png (default bench/results)")
    args = p.parse_args(argv)
    if args.quick:
        args.objects, args.rounds = 16, 1
    return run_and_print(run, args, ".md, .csv, .png")


if __name__ == "__main__":
    sys.exit(main())
