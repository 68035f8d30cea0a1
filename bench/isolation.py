"""``python3 -m bench.isolation``: what isolation in group commit costs (issue #10, item 1).

Puts from etcd's ``benchmark`` tool (64 clients over 8 connections, 256-byte values) run
against the shim (``k8s-sql shim serve``) and etcd 3.4 on loopback, in interleaved rounds,
each round in two modes:

- ``clean``: only the puts.
- ``refused``: one more client sends, one after the other, a put with a lease that was never
  granted (etcd: NOT_FOUND "requested lease not found"). The shim refuses it inside the
  write batch, before it writes, so the batch goes on.

That client has one request in flight, so a batch carries at most one bad request, and about
as many batches carry one as carry a put of any one put client.

No client can make a request fail *after* it wrote (every refusal etcd defines is checked
before; what cannot be checked, e.g. a put with ``ignore_value`` of a key deleted earlier in
the same txn, is refused as a duplicate key). That path — the batch rolled back and run
again without the request — is left to a bug or a request's own SQL error, so it is
measured in-process: the shim's storage backend (``PostgresBackend``, its ``Writer``) on the
same PostgreSQL, 64 concurrent put tasks, modes ``clean``, ``refused`` (the same put), and
``failing``: one task submitting a request that writes and then runs ``SELECT 1 / 0`` (a
stand-in for a bug in a request's handling). There the writer's counters give the batches
and the reruns exactly.

Figures: puts/s, its ratio to ``clean`` in the same round, CPU per request of the server
(the shim process or etcd from ``/proc/<pid>/stat``, all threads; in-process: this
process), innocent puts that failed (should be 0). No timing is asserted anywhere.
Results go to ``bench/results/<date>-isolation.{md,csv}``.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import math
import os
import random
import re
import statistics
import sys
import tempfile
import threading
import time

from bench import tooldriver
from bench.harness import log, machine_info, results_stem, run_and_print, stop_all
from bench.services import EtcdServer, Shim, start_postgres
from bench.tool import build_benchmark

MODES = ("clean", "refused", "failing")
#: A lease id no one granted (both systems answer NOT_FOUND).
UNKNOWN_LEASE = 0x5EED_0BAD
_ERRORS = re.compile(r"^\s*\[(\d+)\]\s+(.*)$", re.M)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` and all its threads so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def failed_requests(report: str) -> int:
    """Requests the benchmark tool counted in its "Error distribution" (0 when none)."""
    if "Error distribution" not in report:
        return 0
    return sum(int(n) for n, _ in _ERRORS.findall(report.split("Error distribution", 1)[1]))


class BadClient:
    """One gRPC client sending puts with an unknown lease to ``endpoint``, one at a time, in
    its own thread, from :meth:`start` until :meth:`stop`. ``codes`` counts the answers by
    gRPC status code name ("OK" when one was accepted)."""

    def __init__(self, endpoint: str):
        self.endpoint = endpoint
        self.codes: dict[str, int] = {}
        self._answered = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._loop()), daemon=True)

    async def _loop(self) -> None:
        import grpc
        from k8s_sql.shim.etcdpb import rpc_pb2, rpc_pb2_grpc
        request = rpc_pb2.PutRequest(key=b"/bench-isolation/refused", value=b"x", lease=UNKNOWN_LEASE)
        async with grpc.aio.insecure_channel(self.endpoint) as ch:
            stub = rpc_pb2_grpc.KVStub(ch)
            while not self._stop.is_set():
                try:
                    await stub.Put(request, timeout=30)
                    code = "OK"
                except grpc.aio.AioRpcError as e:
                    code = e.code().name
                self.codes[code] = self.codes.get(code, 0) + 1
                self._answered += 1

    def start(self) -> "BadClient":
        self._thread.start()
        return self

    def answered(self) -> int:
        """Bad requests answered so far (readable from another thread)."""
        return self._answered

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)


def measure(binary: str, endpoint: str, pid: int, mode: str, total: int) -> dict[str, float]:
    """One run of ``total`` puts (64 clients / 8 conns) over gRPC; ``mode`` "refused" adds
    the :class:`BadClient`.

    Returns put_rate (req/s), put_p99_ms, bad_rate (bad requests answered per s),
    cpu_ms_per_put, cpu_ms_per_request (puts and bad requests), puts_failed, and
    answer_<CODE> counts. Raises RuntimeError when the tool fails.
    """
    bad = BadClient(endpoint).start() if mode == "refused" else None
    time.sleep(0.2 if bad else 0)  # the bad client is connected and sending when the puts start
    c0, t0, b0 = cpu_seconds(pid), time.monotonic(), bad.answered() if bad else 0
    try:
        text = tooldriver.run_tool(binary, endpoint, ["put", "--total", str(total), "--val-size", "256",
                                                      "--key-space-size", "100000"], 64, 8)
    finally:
        c1, t1 = cpu_seconds(pid), time.monotonic()
        n_bad = bad.answered() - b0 if bad else 0  # only those answered while the puts ran
        if bad:
            bad.stop()
    r = tooldriver.parse_report(text)
    cpu_ms = (c1 - c0) * 1000
    out = {"put_rate": r["rate"], "put_p99_ms": r.get("p99", math.nan), "bad_rate": n_bad / (t1 - t0),
           "cpu_ms_per_put": cpu_ms / total, "cpu_ms_per_request": cpu_ms / (total + n_bad),
           "puts_failed": failed_requests(text)}
    for code, n in (bad.codes.items() if bad else ()):
        out[f"answer_{code}"] = n
    return out


async def _writer_run(dsn: str, mode: str, seconds: float) -> dict[str, float]:
    from k8s_sql.shim.storage.base import PutOp
    from k8s_sql.shim.storage.postgres import PostgresBackend

    backend = PostgresBackend(dsn, lease_check_interval=3600)
    await backend.open()
    value, puts, failed, bad = b"v" * 256, 0, 0, {}
    stop = time.monotonic() + seconds

    async def put_client(i: int) -> None:
        nonlocal puts, failed
        rng = random.Random(i)
        while time.monotonic() < stop:
            try:
                await backend.put(PutOp(b"/bench/%06d" % rng.randrange(100000), value))
                puts += 1
            except Exception:
                failed += 1

    async def failing(applier) -> None:  # writes, then fails with an SQL error of its own
        await applier.put(PutOp(b"/bench-isolation/failing", b"x"))
        await applier.conn.execute("SELECT 1 / 0")

    async def bad_client() -> None:
        while time.monotonic() < stop:
            try:
                if mode == "refused":
                    await backend.put(PutOp(b"/bench-isolation/refused", b"x", lease=UNKNOWN_LEASE))
                else:
                    await backend.writer.submit(failing)
                code = "OK"
            except Exception as e:
                code = type(e).__name__
            bad[code] = bad.get(code, 0) + 1

    try:
        w = backend.writer
        b0, r0 = w.batches, w.reruns
        c0, t0 = os.times(), time.monotonic()
        await asyncio.gather(*[put_client(i) for i in range(64)], *([bad_client()] if mode != "clean" else []))
        c1, t1 = os.times(), time.monotonic()
        batches, reruns = w.batches - b0, w.reruns - r0
    finally:
        await asyncio.wait_for(backend.close(), 30)
    cpu_ms = ((c1.user - c0.user) + (c1.system - c0.system)) * 1000
    n_bad = sum(bad.values())
    out = {"put_rate": puts / (t1 - t0), "bad_rate": n_bad / (t1 - t0), "cpu_ms_per_put": cpu_ms / max(puts, 1),
           "cpu_ms_per_request": cpu_ms / max(puts + n_bad, 1), "puts_failed": failed,
           "batch_size": (puts + n_bad) / max(batches, 1), "bad_per_batch": n_bad / max(batches, 1),
           "reruns": reruns}
    out.update({f"answer_{code}": n for code, n in bad.items()})
    return out


def measure_writer(dsn: str, mode: str, seconds: float) -> dict[str, float]:
    """In-process group commit for ``seconds``: 64 put tasks on the shim's PostgresBackend,
    plus for ``mode`` "refused"/"failing" one task sending that bad request one at a time.

    Returns put_rate, bad_rate (per s), cpu_ms_per_put / cpu_ms_per_request (this process),
    puts_failed, batch_size and bad_per_batch (requests per committed batch), reruns, and
    answer_<exception type> counts.
    """
    return asyncio.run(_writer_run(dsn, mode, seconds))


def _stats(vals: list[float]) -> str:
    vals = [v for v in vals if not math.isnan(v)]
    if not vals:
        return "n/a"
    fmt = (lambda v: f"{v:,.0f}") if max(abs(v) for v in vals) >= 100 else (lambda v: f"{v:.3g}")
    return " / ".join(fmt(v) for v in (min(vals), statistics.median(vals), max(vals)))


FIGURES = [("put_rate", "req/s", "puts/s (64 clients)"), ("ratio", "×", "puts/s ÷ clean, same round"),
           ("put_p99_ms", "ms", "put p99 latency"), ("bad_rate", "req/s", "bad requests answered/s"),
           ("cpu_ms_per_put", "ms", "server CPU per put"),
           ("cpu_ms_per_request", "ms", "server CPU per request (puts + bad)"),
           ("puts_failed", "req", "innocent puts failed"),
           ("batch_size", "req", "requests per committed batch"), ("bad_per_batch", "req", "bad requests per batch"),
           ("reruns", "batches", "batches run again without a failed request")]
SYSTEMS = {"shim": "the shim over gRPC (etcd's benchmark tool)", "etcd": "etcd 3.4 over gRPC (same tool)",
           "writer": "group commit in-process (the shim's PostgresBackend, 64 put tasks)"}


def write_results(stem: str, meta: dict[str, str], rows: list[dict]) -> None:
    """``rows``: one dict per run (round, system, mode, figures). Writes ``stem``.md and .csv."""
    with open(stem + ".csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["round", "system", "mode", "figure", "value"])
        for r in rows:
            for k, v in r.items():
                if k not in ("round", "system", "mode"):
                    w.writerow([r["round"], r["system"], r["mode"], k, repr(v)])
    lines = ["# Isolation in group commit: what a bad request in each batch costs", ""]
    lines += [f"- **{k}**: {v}" for k, v in meta.items()]
    lines += ["", "Each cell is min / median / max over the rounds. The ratio is a mode's puts/s divided "
              "by `clean`'s puts/s of the same system in the same round.", ""]
    for system, title in SYSTEMS.items():
        modes = [m for m in MODES if any(r["system"] == system and r["mode"] == m for r in rows)]
        lines += [f"## {title}", "", "| figure | unit | " + " | ".join(modes) + " |",
                  "|---|---|" + "---|" * len(modes)]
        for fig, unit, label in FIGURES:
            if not any(fig in r for r in rows if r["system"] == system):
                continue
            cells = [_stats([r.get(fig, math.nan) for r in rows if r["system"] == system and r["mode"] == m])
                     for m in modes]
            lines.append(f"| {label} (`{fig}`) | {unit} | " + " | ".join(cells) + " |")
        codes = sorted({k for r in rows if r["system"] == system for k in r if k.startswith("answer_")})
        for code in codes:
            cells = [str(sum(r.get(code, 0) for r in rows if r["system"] == system and r["mode"] == m))
                     for m in modes]
            lines.append(f"| bad requests answered {code[7:]} (sum over rounds) | req | " + " | ".join(cells) + " |")
        lines.append("")
    with open(stem + ".md", "w") as fh:
        fh.write("\n".join(lines))


def run(args) -> str:
    binary = build_benchmark(log=log)
    work = tempfile.mkdtemp(prefix="k8s-sql-bench-iso-")
    os.chmod(work, 0o755)
    etcd = pg = shim = None
    rows: list[dict] = []
    try:
        log(f"starting etcd, PostgreSQL and the shim in {work}")
        etcd = EtcdServer(os.path.join(work, "etcd")).start()
        pg = start_postgres(os.path.join(work, "pg"))
        dsn = pg.create_database("kubernetes")
        shim = Shim(dsn, os.path.join(work, "shim.log"), 1, ["--compaction-interval", "0"]).start()
        systems = {"shim": (shim.endpoint, shim.proc.pid), "etcd": (etcd.endpoint.split("://", 1)[1], etcd.proc.pid)}
        args.shim_workers, args.quick = 1, False
        meta = machine_info(args, pg, {})
        meta.pop("mode")
        meta["rounds"] = f"{args.rounds}, each: every system and mode once (order rotates), ~{args.seconds:g} s a run"
        writer_dsn = pg.create_database("writer")
        totals = {}
        for system, (ep, pid) in systems.items():  # size each run to about args.seconds
            rate = measure(binary, ep, pid, "clean", 1000)["put_rate"]
            totals[system] = max(200, int(rate * args.seconds))
            log(f"{system}: ~{rate:,.0f} puts/s, {totals[system]} puts per run")
        meta["puts per run"] = ", ".join(f"{s} {n}" for s, n in totals.items()) + " (about the seconds asked for)"
        for rnd in range(1, args.rounds + 1):
            order = ["shim", "etcd", "writer"][rnd % 3:] + ["shim", "etcd", "writer"][:rnd % 3]
            for system in order:
                modes = MODES if system == "writer" else MODES[:2]
                for mode in modes[rnd % len(modes):] + modes[:rnd % len(modes)]:  # a different one first
                    log(f"round {rnd}: {system}, {mode}")
                    if system == "writer":
                        r = measure_writer(writer_dsn, mode, args.seconds)
                    else:
                        r = measure(binary, *systems[system], mode, totals[system])
                    rows.append(dict(r, round=rnd, system=system, mode=mode))
                clean = next(x["put_rate"] for x in rows if x["round"] == rnd and x["system"] == system
                             and x["mode"] == "clean")
                for x in rows:
                    if x["round"] == rnd and x["system"] == system:
                        x["ratio"] = x["put_rate"] / clean
    finally:
        stop_all([shim], etcd, pg, work)
    stem = results_stem(args.output, "isolation")
    if args.note:
        meta["conditions"] = args.note
    write_results(stem, meta, rows)
    return stem


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m bench.isolation", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--seconds", type=float, default=5.0, help="about how long each run lasts (default 5)")
    p.add_argument("--output", default="", help="directory for the .md/.csv (default bench/results)")
    p.add_argument("--note", default="", help="machine conditions to state in the results (e.g. other load)")
    args = p.parse_args(argv)
    return run_and_print(run, args)


if __name__ == "__main__":
    sys.exit(main())
