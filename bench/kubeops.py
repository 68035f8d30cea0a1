"""``python3 -m bench.kubeops``: each etcd request kube-apiserver v1.20 sends per ConfigMap
create, update and delete, timed one after another on etcd and on the shim.

The request shapes are the ones traced from a real kube-apiserver v1.20.2 on the shim (the
shim's request trace, ``--log-level debug``, logger ``k8s_sql.shim.trace``):

- create: Txn(compare mod_revision(key) = 0; success put);
- update (a PATCH): Txn(compare mod_revision(key) = rev; success put; failure get);
- delete: Range(key), Range(key), then Txn(compare mod_revision(key) = rev; success
  DeleteRange(key); failure get) — the registry's Get, the store's getState, the
  guarded delete;
- a list page: Range(prefix, limit 500) with its count.

One client connection, one request at a time (as kubectl's sequential label/delete drive
kube-apiserver), 1 KiB values, while a watcher on the prefix with prev_kv (kube-apiserver's
watch cache) reads every event in another process. Interleaved rounds; per request type
the p50 and p99 (ms) on each system and the ratio shim/etcd within the round. Results go
to ``bench/results/<date>-kubeops.{md,csv}``. Timings are never asserted.
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing
import os
import sys
import tempfile
import time

import grpc

from bench.harness import git_version, log, results_stem, run_and_print, stop_all
from bench.k8s_run import _prefix_end, _watcher_main
from bench.report import Figure, Results
from bench.services import ROOT, EtcdServer, Shim, cpu_seconds, start_postgres
from k8s_sql.shim.etcdpb import rpc_pb2, rpc_pb2_grpc

OPS = ("create_txn", "update_txn", "delete_get", "delete_txn", "list_page")
LABELS = {
    "create_txn": "create: Txn(mod_revision = 0, put)",
    "update_txn": "update: Txn(mod_revision = rev, put, else get)",
    "delete_get": "delete: Range(key) (2 per delete)",
    "delete_txn": "delete: Txn(mod_revision = rev, delete, else get)",
    "list_page": "list page: Range(prefix, limit 500) + count",
}
FIGURES = [Figure(f"{op}_{p}_ms", "ms", f"{LABELS[op]}, {p}", ("ratio", "<=", 1.25) if p == "p50" else None)
           for op in OPS for p in ("p50", "p99")]
FIGURES += [Figure("update_ms", "ms", "update, all its requests, p50 sum"),
            Figure("delete_ms", "ms", "delete, all its requests, p50 sum"),
            Figure("cpu_us", "µs", "server CPU time per request (all processes)")]


def _pct(v: list[float], p: float) -> float:
    v = sorted(v)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


def one_run(endpoint: str, n: int, tag: str, pids) -> dict[str, float]:
    """The sequence above for ``n`` ConfigMaps under a fresh prefix; figures in ms."""
    channel = grpc.insecure_channel(endpoint)
    kv = rpc_pb2_grpc.KVStub(channel)
    prefix = f"/registry/configmaps/{tag}/".encode()
    keys = [prefix + f"cm-{i:05d}".encode() for i in range(n)]
    value = b"k8s\0" + b"x" * 1024
    start = kv.Range(rpc_pb2.RangeRequest(key=b"/", count_only=True)).header.revision + 1
    parent, child = multiprocessing.Pipe()
    watcher = multiprocessing.Process(target=_watcher_main, args=(child, endpoint, prefix, start, 3 * n, 600),
                                      daemon=True)
    watcher.start()
    if not parent.poll(30) or not parent.recv():
        raise RuntimeError("the watcher was not created")
    times: dict[str, list[float]] = {op: [] for op in OPS}

    def timed(op, fn, req):
        t = time.perf_counter()
        r = fn(req)
        times[op].append((time.perf_counter() - t) * 1000)
        return r

    c0, requests = cpu_seconds(pids()), 0
    mod = {}
    for k in keys:
        r = timed("create_txn", kv.Txn, rpc_pb2.TxnRequest(
            compare=[rpc_pb2.Compare(target=rpc_pb2.Compare.MOD, key=k, mod_revision=0)],
            success=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=k, value=value))]))
        if not r.succeeded:
            raise RuntimeError(f"create of {k!r} failed")
        mod[k] = r.header.revision
    for _ in range(20):
        timed("list_page", kv.Range, rpc_pb2.RangeRequest(key=prefix, range_end=_prefix_end(prefix), limit=500))
    for k in keys:
        r = timed("update_txn", kv.Txn, rpc_pb2.TxnRequest(
            compare=[rpc_pb2.Compare(target=rpc_pb2.Compare.MOD, key=k, mod_revision=mod[k])],
            success=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=k, value=value + b"u"))],
            failure=[rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=k))]))
        if not r.succeeded:
            raise RuntimeError(f"update of {k!r} failed")
        mod[k] = r.header.revision
    for k in keys:
        for _ in range(2):
            timed("delete_get", kv.Range, rpc_pb2.RangeRequest(key=k))
        r = timed("delete_txn", kv.Txn, rpc_pb2.TxnRequest(
            compare=[rpc_pb2.Compare(target=rpc_pb2.Compare.MOD, key=k, mod_revision=mod[k])],
            success=[rpc_pb2.RequestOp(request_delete_range=rpc_pb2.DeleteRangeRequest(key=k))],
            failure=[rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=k))]))
        if not r.succeeded:
            raise RuntimeError(f"delete of {k!r} failed")
    requests = sum(len(v) for v in times.values())
    cpu = cpu_seconds(pids()) - c0
    received = parent.recv() if parent.poll(60) else ([], 0)
    watcher.join(10)
    channel.close()
    if len(received[0]) != 3 * n:
        raise RuntimeError(f"the watcher saw {len(received[0])} events of {3 * n}")
    out = {}
    for op, v in times.items():
        out[f"{op}_p50_ms"], out[f"{op}_p99_ms"] = _pct(v, 50), _pct(v, 99)
    out["update_ms"] = out["update_txn_p50_ms"]
    out["delete_ms"] = 2 * out["delete_get_p50_ms"] + out["delete_txn_p50_ms"]
    out["cpu_us"] = cpu * 1e6 / requests
    return out


def run(args) -> str:
    from k8s_sql.shim.workers import auto_workers

    work = tempfile.mkdtemp(prefix="k8s-sql-bench-kubeops-")
    os.chmod(work, 0o755)
    workers = args.workers or auto_workers().workers
    res = Results(figures=FIGURES, title="kube-apiserver's requests, one at a time: the shim vs etcd")
    etcd = pg = None
    shims = []
    try:
        etcd = EtcdServer(os.path.join(work, "etcd")).start()
        pg = start_postgres(os.path.join(work, "pg"))
        shim = Shim(pg.create_database("kubernetes"), os.path.join(work, "shim.log"), workers,
                    ["--compaction-interval", "0"]).start()
        shims.append(shim)
        eps = {"etcd": etcd.endpoint.split("://", 1)[1], "shim": shim.endpoint}
        pids = {"etcd": lambda: [etcd.proc.pid], "shim": shim.pids}
        res.meta = {
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{os.cpu_count()} CPUs, {os.uname().release}, load average {os.getloadavg()[0]:.1f}",
            "shim": f"k8s-sql @ {git_version(ROOT)}, --workers {workers}, PostgreSQL {pg.major} (temp cluster)",
            "sizes": f"{args.objects} ConfigMaps of 1 KiB a run, {args.rounds} interleaved rounds",
        }
        if args.note:
            res.meta["conditions"] = args.note
        for rnd in range(1, args.rounds + 1):
            for system in (["etcd", "shim"] if rnd % 2 else ["shim", "etcd"]):
                log(f"round {rnd}: {system}")
                for fig, v in one_run(eps[system], args.objects, f"r{rnd}", pids[system]).items():
                    res.add(system, fig, v)
                log("  update %.2f ms, delete %.2f ms" % (res.values[system]["update_ms"][-1],
                                                          res.values[system]["delete_ms"][-1]))
    finally:
        stop_all(shims, etcd, pg, work)
    stem = results_stem(args.output, "kubeops")
    res.write_markdown(stem + ".md")
    res.write_csv(stem + ".csv")
    return stem


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m bench.kubeops", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--objects", type=int, default=300, help="ConfigMaps a run (default 300)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--workers", type=int, default=0, help="shim worker processes (default: auto)")
    p.add_argument("--note", default="", help="conditions of the run, written into the results")
    p.add_argument("--output", default="", help="directory for the .md/.csv (default bench/results)")
    args = p.parse_args(argv)
    return run_and_print(run, args)


if __name__ == "__main__":
    sys.exit(main())
