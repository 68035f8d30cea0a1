"""``python3 -m bench.scale``: does the shim slow down as its database grows? (Kine's users
report queries slowing down after months or years.)

Two databases on one PostgreSQL, each served by its own ``k8s-sql shim serve`` (``--workers
auto``, compaction off: it is the client's, as kube-apiserver runs it):

- large: ``--objects`` keys (default 100,000) written ``--revisions`` times in all (default
  1,000,000 puts of 1 KiB, etcd's ``benchmark put --sequential-keys``, 64 clients over 8
  connections) while a compactor does what kube-apiserver's does every 5 minutes of its
  clock: compact to the revision it saw one interval earlier (``--compact-every``, default
  300 s). How long the populate step takes is measured.
- small: ``--small-objects`` keys (default 1,000; more than a page) written twice each, the same way.

Then, in interleaved rounds: a list page (Range over all keys, limit 500, linearizable, with
the count kube-apiserver asks for: what each page of a paginated list costs) and a serial
put (etcd's ``benchmark put``, 1 client, into the existing keys), p50 and p99 each, large ÷
small within the round; and the ``log`` and ``kv`` tables' rows and size (bounded by
compaction: the log keeps the versions since the last compaction plus one per live key).
Results go to ``bench/results/<date>-scale[-quick].{md,csv}``. Timings are never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import datetime
import math
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time

from bench import tooldriver
from bench.harness import git_version, results_stem, run_and_print
from bench.report import _fmt
from bench.services import ROOT, Shim, start_postgres
from bench.tool import build_benchmark

FULL = dict(objects=100_000, revisions=1_000_000, small_objects=1_000, compact_every=300.0, samples=1000, rounds=3)
QUICK = dict(objects=2_000, revisions=6_000, small_objects=600, compact_every=0.25, samples=100, rounds=1)
ALL_KEYS = b"\x00"  # key and range_end "\0": every key (etcd's convention)
TARGET = 1.2


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _pct(values: list[float], p: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))] if v else math.nan


class Compactor:
    """kube-apiserver's compaction loop against ``endpoint``: every ``interval`` seconds,
    compact to the revision seen at the previous tick. ``compactions`` counts them."""

    def __init__(self, endpoint: str, interval: float):
        self.endpoint, self.interval = endpoint, interval
        self.compactions = 0
        self.last = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        import grpc
        from k8s_sql.shim.etcdpb import rpc_pb2, rpc_pb2_grpc
        with grpc.insecure_channel(self.endpoint) as ch:
            kv = rpc_pb2_grpc.KVStub(ch)
            previous = None
            while not self._stop.wait(self.interval):
                current = kv.Range(rpc_pb2.RangeRequest(key=b"compact_rev_key")).header.revision
                if previous:
                    kv.Compact(rpc_pb2.CompactionRequest(revision=previous))
                    self.compactions += 1
                    self.last = previous
                previous = current

    def start(self) -> "Compactor":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(120)


def populate(binary: str, endpoint: str, objects: int, revisions: int, compact_every: float) -> dict[str, float]:
    """``revisions`` puts of 1 KiB over ``objects`` sequential keys with the compactor running.
    Returns populate_s, populate_rate (puts/s), compactions, compacted_to."""
    compactor = Compactor(endpoint, compact_every).start()
    t = time.monotonic()
    try:
        text = tooldriver.run_tool(binary, endpoint, ["put", "--total", str(revisions), "--val-size", "1024",
                                                      "--key-space-size", str(objects), "--sequential-keys"],
                                   64, 8, timeout=6 * 3600)
    finally:
        compactor.stop()
    elapsed = time.monotonic() - t
    return {"populate_s": elapsed, "populate_rate": tooldriver.parse_report(text)["rate"],
            "compactions": compactor.compactions, "compacted_to": compactor.last}


async def _list_pages(endpoint: str, samples: int) -> list[float]:
    import grpc
    from k8s_sql.shim.etcdpb import rpc_pb2, rpc_pb2_grpc
    async with grpc.aio.insecure_channel(endpoint, options=[("grpc.max_receive_message_length", 64 << 20)]) as ch:
        kv = rpc_pb2_grpc.KVStub(ch)
        out = []
        for _ in range(samples):
            t = time.perf_counter()
            r = await kv.Range(rpc_pb2.RangeRequest(key=ALL_KEYS, range_end=ALL_KEYS, limit=500))
            out.append((time.perf_counter() - t) * 1000)
            if len(r.kvs) != 500 and r.count > 500:
                raise RuntimeError(f"list page gave {len(r.kvs)} keys")
        return out


def measure(binary: str, endpoint: str, objects: int, samples: int) -> dict[str, float]:
    """List-page and serial-put latencies (ms) against one shim."""
    lists = asyncio.run(_list_pages(endpoint, samples))
    put = tooldriver.parse_report(tooldriver.run_tool(
        binary, endpoint, ["put", "--total", str(samples), "--val-size", "1024", "--key-space-size", str(objects)]))
    return {"list_p50_ms": _pct(lists, 50), "list_p99_ms": _pct(lists, 99), "put_p50_ms": put["p50"],
            "put_p99_ms": put.get("p99", math.nan)}


def table_sizes(pg, db: str) -> dict[str, float]:
    """Rows and total bytes (with indexes and TOAST) of ``log`` and ``kv``; the revision."""
    out = {}
    for t in ("log", "kv"):
        rows, size = pg.psql(f"SELECT count(*), pg_total_relation_size('{t}') FROM {t}", db=db).split("|")
        out[f"{t}_rows"], out[f"{t}_mb"] = float(rows), float(size) / 2**20
    return out


FIGURES = [("list_p50_ms", "ms", "list page (500 keys + count), p50"),
           ("list_p99_ms", "ms", "list page (500 keys + count), p99"),
           ("put_p50_ms", "ms", "serial put, p50"), ("put_p99_ms", "ms", "serial put, p99")]


def _cell(vals: list[float]) -> str:
    vals = [v for v in vals if not math.isnan(v)]
    if not vals:
        return "n/a"
    return " / ".join(_fmt(v) for v in (min(vals), statistics.median(vals), max(vals)))


def write_results(stem: str, meta: dict, rows: list[dict], facts: dict[str, dict]) -> None:
    """``rows``: one per (round, database) with FIGURES; ``facts``: per database, populate and
    table figures. Writes ``stem``.md and .csv."""
    with open(stem + ".csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["round", "database", "figure", "value"])
        for r in rows:
            for k, v in r.items():
                if k not in ("round", "db"):
                    w.writerow([r["round"], r["db"], k, repr(v)])
        for db, f in facts.items():
            for k, v in f.items():
                w.writerow(["", db, k, repr(v)])
    lines = ["# Scale: the shim on a large database vs a small one", ""]
    lines += [f"- **{k}**: {v}" for k, v in meta.items()]
    lines += ["", "Each cell is min / median / max over the rounds; the ratio large ÷ small is computed within "
              f"each round. Target: ratio ≤ {TARGET}.", "",
              "| figure | unit | small | large | ratio large/small | target | verdict |",
              "|---|---|---|---|---|---|---|"]
    for fig, unit, label in FIGURES:
        small = [r[fig] for r in rows if r["db"] == "small"]
        large = [r[fig] for r in rows if r["db"] == "large"]
        ratios = [b / a for a, b in zip(small, large) if a]
        med = statistics.median(ratios) if ratios else math.nan
        verdict = "pass" if med <= TARGET else "FAIL"
        lines.append(f"| {label} (`{fig}`) | {unit} | {_cell(small)} | {_cell(large)} | {_cell(ratios)} | "
                     f"≤ {TARGET} | {verdict} |")
    lines += ["", "## Populate and table sizes", "", "| figure | small | large |", "|---|---|---|"]
    labels = [("objects", "key space (--objects)"), ("revisions", "puts written"), ("populate_s", "populate time (s)"),
              ("populate_rate", "populate rate (puts/s, 64 clients)"), ("compactions", "compactions while populating"),
              ("compacted_to", "last compaction revision"), ("log_rows", "log rows after populate"),
              ("log_mb", "log table size after populate (MiB, with indexes)"), ("kv_rows", "live keys (kv rows)"),
              ("kv_mb", "kv table size (MiB, with indexes)"), ("log_rows_end", "log rows at the end"),
              ("log_mb_end", "log table size at the end (MiB)")]
    for key, label in labels:
        cells = [facts.get(db, {}).get(key, math.nan) for db in ("small", "large")]
        lines.append(f"| {label} | " + " | ".join(f"{v:,.1f}" if isinstance(v, float) and v % 1 else f"{v:,.0f}"
                                                    for v in cells) + " |")
    lines += ["", "The log holds the versions written since the last compaction plus one version of each live "
              "key, so its size follows the compaction interval and the write rate, not the database's age. "
              "Live keys exceed the key space a little: etcd's benchmark tool writes a key's varint into a "
              "reused 8-byte buffer, so a short number after a long one keeps stale bytes (a new key).", ""]
    with open(stem + ".md", "w") as fh:
        fh.write("\n".join(lines))


def run(args) -> str:
    binary = build_benchmark(log=log)
    work = tempfile.mkdtemp(prefix="k8s-sql-bench-scale-")
    os.chmod(work, 0o755)
    pg = None
    shims: dict[str, Shim] = {}
    rows: list[dict] = []
    facts: dict[str, dict] = {}
    from k8s_sql.shim.workers import auto_workers
    workers = auto_workers().workers
    try:
        pg = start_postgres(os.path.join(work, "pg"))
        sizes = {"small": (args.small_objects, args.small_objects * 2), "large": (args.objects, args.revisions)}
        for db in ("small", "large"):
            dsn = pg.create_database(db)
            shims[db] = Shim(dsn, os.path.join(work, f"shim-{db}.log"), workers,
                             ["--compaction-interval", "0"]).start()
        for db, (objects, revisions) in sizes.items():
            log(f"populating {db}: {objects:,} keys, {revisions:,} puts, compaction every {args.compact_every:g} s")
            facts[db] = dict(objects=objects, revisions=revisions,
                             **populate(binary, shims[db].endpoint, objects, revisions, args.compact_every))
            facts[db].update(table_sizes(pg, db))
            log(f"  {facts[db]}")
            pg.psql("VACUUM ANALYZE", db=db)  # autovacuum would get there; measure a settled table
        for rnd in range(1, args.rounds + 1):
            for db in (["small", "large"] if rnd % 2 else ["large", "small"]):
                log(f"round {rnd}: list pages and serial puts on {db}")
                rows.append(dict(measure(binary, shims[db].endpoint, sizes[db][0], args.samples), round=rnd, db=db))
        for db in sizes:
            end = table_sizes(pg, db)
            facts[db].update(log_rows_end=end["log_rows"], log_mb_end=end["log_mb"])
        meta = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                "machine": f"{os.cpu_count()} CPUs, {os.uname().release}",
                "PostgreSQL": pg.psql("SHOW server_version") + " (temp cluster, default durability)",
                "shim": f"k8s-sql @ {git_version(ROOT)}, --workers {workers} (auto), --compaction-interval 0; compaction by the client every "
                        f"{args.compact_every:g} s (kube-apiserver: 300 s), to the revision of the previous tick",
                "sizes": f"large {args.objects:,} keys / {args.revisions:,} puts of 1 KiB; small "
                         f"{args.small_objects:,} keys / {args.small_objects * 2:,} puts; {args.samples} samples a "
                         f"figure, {args.rounds} interleaved rounds",
                "full-size command": "python3 -m bench.scale (defaults: 100,000 keys, 1,000,000 revisions, 300 s)"}
        if args.note:
            meta["conditions"] = args.note
    finally:
        for s in shims.values():
            s.stop()
        if pg:
            pg.destroy()
        shutil.rmtree(work, ignore_errors=True)
    stem = results_stem(args.output, "scale" + ("-quick" if args.quick else ""))
    write_results(stem, meta, rows, facts)
    return stem


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m bench.scale", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help=f"tiny sizes: {QUICK}")
    for k, v in FULL.items():
        p.add_argument("--" + k.replace("_", "-"), type=type(v), default=None, help=f"default {v}")
    p.add_argument("--note", default="", help="conditions of the run, written into the results")
    p.add_argument("--output", default="", help="directory for the .md/.csv (default bench/results)")
    args = p.parse_args(argv)
    for k, v in (QUICK if args.quick else FULL).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    return run_and_print(run, args)


if __name__ == "__main__":
    sys.exit(main())
