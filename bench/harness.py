"""``bench/run``: etcd 3.4 and the shim side by side on loopback, rounds interleaved.

Per round, each workload runs against etcd and the shim back to back (the order flips every
round so machine noise hits both alike), then pgbench measures PostgreSQL's own ceiling on
the same server. Results go to ``bench/results/<date>-<host>.{md,csv,png}``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from bench import k8s_run, tooldriver
from bench.report import Results
from bench.services import EtcdServer, NoopServer, Shim, cpu_seconds, start_postgres
from bench.tool import build_benchmark, etcd_source_version

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

SIZES = {  # requests per run, objects in the k8s run, seconds of pgbench
    "full": dict(rounds=3, put_1=2000, put_64=20000, txn_64=20000, range_1=5000, range_64=20000,
                 watch=1000, watch_rate=200, watch2=500, k8s=10000, pgbench_s=8),
    "quick": dict(rounds=1, put_1=200, put_64=200, txn_64=200, range_1=200, range_64=200,
                  watch=100, watch_rate=200, watch2=50, k8s=200, pgbench_s=2),
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _cmd(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def stop_all(shims, etcd, pg, work: str) -> None:
    """Stop the shims and etcd, destroy the temporary PostgreSQL cluster and remove the
    scratch directory ``work``; ``None`` entries (never started) are passed over."""
    for shim in shims:
        if shim:
            shim.stop()
    if etcd:
        etcd.stop()
    if pg:
        pg.destroy()
    shutil.rmtree(work, ignore_errors=True)


def git_version(root: str) -> str:
    """``<short commit>``, plus " with uncommitted changes" when the work tree differs from it."""
    dirty = _cmd(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"])
    return _cmd(["git", "-C", root, "rev-parse", "--short", "HEAD"]) + (" with uncommitted changes" if dirty else "")


def machine_info(args, pg, sizes) -> dict[str, str]:
    """Header facts: machine, versions, sizes, transport."""
    import grpc
    import psycopg
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "host": socket.gethostname(),
        "machine": f"{os.cpu_count()} CPUs ({cpu}), {mem:.1f} GiB RAM, {platform.platform()}",
        "etcd": _cmd(["etcd", "--version"]).splitlines()[0] if _cmd(["etcd", "--version"]) else "?",
        "benchmark tool": f"etcd {etcd_source_version()} tools/benchmark (Debian source, GOPATH build)",
        "PostgreSQL": pg.psql("SHOW server_version") + " (temp cluster, fsync=" + pg.psql("SHOW fsync") +
                      ", synchronous_commit=" + pg.psql("SHOW synchronous_commit") + ")",
        "shim": f"k8s-sql @ {git_version(root)}, --workers "
                f"{args.shim_workers}, Python {platform.python_version()}, grpcio {grpc.__version__}, "
                f"psycopg {psycopg.__version__}",
        "transport": "loopback, plaintext gRPC (http://) for both etcd and the shim",
        "no-op ceiling": f"bench/noop.py: etcd KV on grpc.aio + uvloop answering from memory, --workers "
                         f"{args.shim_workers} (the shim's process model)",
        "mode": f"{'quick' if args.quick else 'full'}: {sizes}",
    }


def _put_key(endpoint: str, key: bytes) -> None:
    import grpc
    from k8s_sql.shim.etcdpb import rpc_pb2, rpc_pb2_grpc

    async def go():
        async with grpc.aio.insecure_channel(endpoint) as ch:
            await rpc_pb2_grpc.KVStub(ch).Put(rpc_pb2.PutRequest(key=key, value=b"r" * 256))
    asyncio.run(go())


def run(args) -> tuple[str, Results]:
    sizes = dict(SIZES["quick" if args.quick else "full"])
    if args.rounds:
        sizes["rounds"] = args.rounds
    binary = build_benchmark(log=log)
    work = tempfile.mkdtemp(prefix="k8s-sql-bench-")
    os.chmod(work, 0o755)
    res = Results()
    etcd = pg = None
    shims: list[Shim] = []
    try:
        log(f"starting etcd, PostgreSQL and shims in {work}")
        etcd = EtcdServer(os.path.join(work, "etcd")).start()
        pg = start_postgres(os.path.join(work, "pg"))
        dsn = pg.create_database("kubernetes")
        pg.create_database("pgbench")
        extra = ["--compaction-interval", "0"]
        workers = args.shim_workers
        shim = Shim(dsn, os.path.join(work, "shim-a.log"), workers, extra).start()
        shim_b = Shim(dsn, os.path.join(work, "shim-b.log"), 1, extra).start()
        noop = NoopServer("", os.path.join(work, "noop.log"), workers).start()
        shims = [shim, shim_b, noop]
        eps = {"etcd": etcd.endpoint.split("://", 1)[1], "shim": shim.endpoint, "noop": noop.endpoint}
        pids = {"etcd": lambda: [etcd.proc.pid], "shim": shim.pids, "noop": noop.pids}
        res.meta = machine_info(args, pg, sizes)
        if args.note:
            res.meta["conditions"] = args.note
        range_key = b"/bench/range-key"
        for ep in eps.values():
            _put_key(ep, range_key)
        b = binary
        # (name, figure prefix, requests, fn): run on etcd, the shim and the no-op ceiling, with the
        # server's CPU time per request (<prefix>_cpu_us) from /proc/<pid>/stat of all its processes
        tool_workloads = [
            ("put-1", "put_1", sizes["put_1"], lambda ep: {
                "put_1_p50_ms": (r := tooldriver.put(b, ep, sizes["put_1"], 1, 1))["p50"], "put_1_rate": r["rate"]}),
            ("put-64", "put_64", sizes["put_64"], lambda ep: {
                "put_64_rate": (r := tooldriver.put(b, ep, sizes["put_64"], 64, 8))["rate"],
                "put_64_p99_ms": r["p99"]}),
            ("txn-put-64", "txn_put_64", sizes["txn_64"], lambda ep: {
                "txn_put_64_rate": tooldriver.txn_put(b, ep, sizes["txn_64"], 64, 8)["rate"]}),
            ("range-1", "range_1", sizes["range_1"], lambda ep: {"range_1_p50_ms": (r := tooldriver.range_one(
                b, ep, range_key.decode(), sizes["range_1"], 1, 1))["p50"], "range_1_rate": r["rate"]}),
            ("range-64", "range_64", sizes["range_64"], lambda ep: {"range_64_rate": tooldriver.range_one(
                b, ep, range_key.decode(), sizes["range_64"], 64, 8)["rate"]}),
        ]
        watch = lambda ep: {"watch_p50_ms": (r := tooldriver.watch_latency(  # noqa: E731
            b, ep, sizes["watch"], sizes["watch_rate"]))["p50"], "watch_p99_ms": r["p99"]}
        for rnd in range(1, sizes["rounds"] + 1):
            order = ["etcd", "shim", "noop"][rnd % 3:] + ["etcd", "shim", "noop"][:rnd % 3]
            for name, prefix, total, fn in tool_workloads:
                for system in order:
                    log(f"round {rnd}: {name} on {system}")
                    procs = pids[system]()
                    c0 = cpu_seconds(procs)
                    for fig, v in fn(eps[system]).items():
                        res.add(system, fig, v)
                    res.add(system, f"{prefix}_cpu_us", (cpu_seconds(procs) - c0) * 1e6 / total)
            for system in [x for x in order if x != "noop"]:
                log(f"round {rnd}: watch-latency on {system}")
                for fig, v in watch(eps[system]).items():
                    res.add(system, fig, v)
            order = [x for x in order if x != "noop"]
            for system in order:
                log(f"round {rnd}: watch across connections/processes on {system}")
                w_ep, r_ep = (eps["etcd"], eps["etcd"]) if system == "etcd" else (shim_b.endpoint, shim.endpoint)
                r = k8s_run.watch_lag(w_ep, r_ep, sizes["watch2"], sizes["watch_rate"], f"r{rnd}")
                res.add(system, "watch2_p50_ms", r["p50"])
                res.add(system, "watch2_p99_ms", r["p99"])
            for system in order:
                log(f"round {rnd}: kubernetes-shaped run ({sizes['k8s']} objects) on {system}")
                for fig, v in k8s_run.kubernetes_run(eps[system], sizes["k8s"], f"r{rnd}").items():
                    if fig != "k8s_watch_missing_prev_kv" or v:
                        res.add(system, fig, v)
            for clients in (1, 64):
                log(f"round {rnd}: pgbench, {clients} clients, {sizes['pgbench_s']} s")
                res.add("postgres", f"pgbench_{clients}_tps", tooldriver.pgbench(
                    pg, "pgbench", clients, sizes["pgbench_s"], work))
    finally:
        stop_all(shims, etcd, pg, work)
    stem = results_stem(args.output, socket.gethostname() + ("-quick" if args.quick else ""))
    res.write_markdown(stem + ".md")
    res.write_csv(stem + ".csv")
    res.write_chart(stem + ".png")
    return stem, res


def results_stem(output: str, name: str) -> str:
    """``<output or bench/results>/<UTC date>-<name>``, the directory made: where a scenario
    writes its ``.md``/``.csv``/``.png``."""
    out_dir = output or RESULTS
    os.makedirs(out_dir, exist_ok=True)
    return os.path.join(out_dir, f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d}-{name}")


def run_and_print(run, args, written: str = ".md, .csv") -> int:
    """A scenario's ``main`` after its flags: SIGTERM unwinds like Ctrl-C (so etcd, the shims
    and PostgreSQL are stopped), ``run(args)`` returns the results' stem, whose Markdown is
    printed; returns exit status 0."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    stem = run(args)
    with open(stem + ".md") as f:
        print(f.read())
    log(f"wrote {stem}{written}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes, one round: proves the harness end to end")
    p.add_argument("--rounds", type=int, default=0, help="override the number of rounds")
    p.add_argument("--shim-workers", default="auto",
                   help="--workers of the measured shim and of the no-op ceiling (default auto, as the shim)")
    p.add_argument("--output", default="", help="directory for the .md/.csv/.png (default bench/results)")
    p.add_argument("--note", default="", help="conditions of the run, written into the results")
    args = p.parse_args(argv)
    from k8s_sql.shim.workers import parse_workers
    args.shim_workers = parse_workers(args.shim_workers).workers
    return run_and_print(lambda a: run(a)[0], args, ".md, .csv, .png")
