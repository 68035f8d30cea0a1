"""``python3 -m bench.workers``: the measurement behind ``--workers auto`` (src/k8s_sql/shim/workers.py).

The shim with 1, 2, ... ``--max`` worker processes (default: CPUs + 1) on one database,
each in turn in interleaved rounds, under etcd's ``benchmark`` tool: put, txn-put and range
with 64 clients over 8 connections (throughput), and put with 1 client (p50 latency), plus
the shim's CPU time per request (all its processes, /proc/<pid>/stat). Results go to
``bench/results/<date>-workers.md``. Timings are never asserted.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import signal
import statistics
import sys
import tempfile

from bench import tooldriver
from bench.harness import _put_key, results_stem
from bench.report import _fmt
from bench.services import Shim, cpu_seconds, start_postgres
from bench.tool import build_benchmark

FIGURES = [("put_64_rate", "req/s", "put, 64 clients"), ("txn_put_64_rate", "req/s", "txn-put, 64 clients"),
           ("range_64_rate", "req/s", "range 1 key, 64 clients"), ("put_1_p50_ms", "ms", "put, 1 client, p50"),
           ("put_64_cpu_us", "µs", "shim CPU per put, 64 clients")]


def log(msg: str) -> None:
    import time
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def measure(binary: str, shim: Shim, total: int) -> dict[str, float]:
    """The figures of FIGURES for one shim."""
    ep = shim.endpoint
    _put_key(ep, b"/bench/range-key")
    procs = shim.pids()
    c0 = cpu_seconds(procs)
    put = tooldriver.put(binary, ep, total, 64, 8)
    cpu = (cpu_seconds(procs) - c0) * 1e6 / total
    return {"put_64_rate": put["rate"], "put_64_cpu_us": cpu,
            "txn_put_64_rate": tooldriver.txn_put(binary, ep, total, 64, 8)["rate"],
            "range_64_rate": tooldriver.range_one(binary, ep, "/bench/range-key", total, 64, 8)["rate"],
            "put_1_p50_ms": tooldriver.put(binary, ep, max(200, total // 10), 1, 1)["p50"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m bench.workers", description=__doc__)
    p.add_argument("--max", type=int, default=(os.cpu_count() or 1) + 1, help="most workers tried")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--total", type=int, default=10000, help="requests per 64-client run")
    p.add_argument("--note", default="", help="conditions of the run, written into the results")
    p.add_argument("--output", default="", help="directory (default bench/results)")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    binary = build_benchmark(log=log)
    work = tempfile.mkdtemp(prefix="k8s-sql-bench-workers-")
    os.chmod(work, 0o755)
    pg = None
    values: dict[int, dict[str, list[float]]] = {}
    try:
        pg = start_postgres(os.path.join(work, "pg"))
        dsn = pg.create_database("kubernetes")
        counts = list(range(1, args.max + 1))
        for rnd in range(1, args.rounds + 1):
            for n in counts[rnd % len(counts):] + counts[:rnd % len(counts)]:
                log(f"round {rnd}: --workers {n}")
                shim = Shim(dsn, os.path.join(work, f"shim-{n}.log"), n, ["--compaction-interval", "0"]).start()
                try:
                    for k, v in measure(binary, shim, args.total).items():
                        values.setdefault(n, {}).setdefault(k, []).append(v)
                finally:
                    shim.stop()
    finally:
        if pg:
            pg.destroy()
        shutil.rmtree(work, ignore_errors=True)
    from k8s_sql.shim.workers import auto_workers
    auto = auto_workers()
    lines = ["# --workers: shim throughput by number of worker processes", "",
             f"- **date**: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
             f"- **machine**: {os.cpu_count()} CPUs; `--workers auto` here = {auto.workers} ({auto.reason})",
             f"- **runs**: {args.rounds} interleaved rounds, {args.total} requests per 64-client run, PostgreSQL "
             "on the same machine (temp cluster, default durability)"]
    if args.note:
        lines.append(f"- **conditions**: {args.note}")
    lines += ["", "Median over the rounds (min–max).", "",
              "| workers | " + " | ".join(f"{label} ({unit})" for _, unit, label in FIGURES) + " |",
              "|---|" + "---|" * len(FIGURES)]
    for n in sorted(values):
        cells = []
        for fig, _, _ in FIGURES:
            v = values[n].get(fig, [])
            cells.append(f"{_fmt(statistics.median(v))} ({_fmt(min(v))}–{_fmt(max(v))})" if v else "n/a")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    path = results_stem(args.output, "workers") + ".md"
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
