"""``bench/run --quick`` end to end: real etcd 3.4, a temp PostgreSQL, shim processes, the
no-op ceiling, etcd's own benchmark tool (built from Debian's sources, cached) and pgbench;
and the other scenarios at tiny sizes: ``bench.kube`` (a real kube-apiserver v1.20.2 on etcd
and on the shim, kubectl-driven), ``bench.scale`` and ``bench.workers``.

Proves the harness works and its output parses; no timing assertions (speed belongs in the
results, not in tests).
"""

from __future__ import annotations

import csv
import math
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.report import FIGURES, PG_FIGURES  # noqa: E402


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    r = subprocess.run([os.path.join(ROOT, "bench", "run"), "--quick", "--output", str(out)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return out, r


def test_quick_run_writes_markdown_csv_and_chart(quick_run):
    out, _ = quick_run
    names = sorted(os.listdir(out))
    assert [n.rsplit(".", 1)[1] for n in names] == ["csv", "md", "png"], names
    with open(out / [n for n in names if n.endswith(".png")][0], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_markdown_has_a_row_per_workload_with_both_columns_and_a_ratio(quick_run):
    out, r = quick_run
    md = (out / [n for n in os.listdir(out) if n.endswith(".md")][0]).read_text()
    assert "plaintext gRPC" in md and "fsync=on" in md and "synchronous_commit=on" in md
    for f in FIGURES:
        row = next(line for line in md.splitlines() if f"(`{f.name}`)" in line)
        cells = [c.strip() for c in row.strip("|").split("|")]
        etcd, shim = cells[2], cells[3]
        assert "n/a" not in etcd and "n/a" not in shim, row
        if f.target:
            assert cells[6] in ("pass", "FAIL"), row
        if f.name.endswith(("_rate", "_cpu_us")) or f.name in ("put_1_p50_ms", "range_1_p50_ms"):
            noop, of_noop = cells[7], cells[8]  # the physical limit column and shim/no-op
            assert noop and "n/a" not in noop and of_noop and "n/a" not in of_noop, row
    for f in PG_FIGURES:
        assert re.search(rf"`{f.name}`\) \| tx/s \| [0-9,.]+ /", md), f.name
    assert md in r.stdout  # the table is printed, too


def test_csv_has_values_for_etcd_shim_postgres_and_ratios(quick_run):
    out, _ = quick_run
    with open(out / [n for n in os.listdir(out) if n.endswith(".csv")][0]) as f:
        rows = list(csv.DictReader(f))
    by = {(row["figure"], row["system"]): float(row["value"]) for row in rows}
    for f in FIGURES:
        assert (f.name, "etcd") in by and (f.name, "shim") in by, f.name
        if by[(f.name, "etcd")] > 0:
            assert math.isclose(by[(f.name, "ratio")], by[(f.name, "shim")] / by[(f.name, "etcd")])
    for f in PG_FIGURES:
        assert by[(f.name, "postgres")] > 0
    # CPU time per request: every server used some, the no-op ceiling too
    for name in ("put_64_cpu_us", "range_64_cpu_us"):
        assert by[(name, "etcd")] > 0 and by[(name, "shim")] > 0 and by[(name, "noop")] > 0
        assert math.isclose(by[(name, "ratio_noop")], by[(name, "shim")] / by[(name, "noop")])
    # the k8s-shaped run's watcher saw every update and delete on both systems
    assert by[("k8s_watch_events_missing", "etcd")] == 0 and by[("k8s_watch_events_missing", "shim")] == 0


def test_parse_report_reads_the_tools_summary():
    from bench.tooldriver import parse_report
    text = ("Summary:\n  Total:\t1.0000 secs.\n  Average:\t0.0020 secs.\n  Requests/sec:\t500.5\n\n"
            "Latency distribution:\n  10% in 0.0010 secs.\n  50% in 0.0015 secs.\n  99% in 0.0090 secs.\n")
    assert parse_report(text) == {"rate": 500.5, "avg": 2.0, "p50": 1.5, "p99": 9.0}
    with pytest.raises(ValueError):
        parse_report("Error: context deadline exceeded")


def _run_module(module: str, out, *args: str, timeout: float = 900) -> str:
    r = subprocess.run([sys.executable, "-m", module, "--output", str(out), *args], capture_output=True, text=True,
                       timeout=timeout, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def _table(md: str) -> dict[str, list[str]]:
    """Rows of the first Markdown table, by the figure name in backticks."""
    rows = {}
    for line in md.splitlines():
        m = re.search(r"\(`(\w+)`\)", line)
        if line.startswith("|") and m:
            rows[m.group(1)] = [c.strip() for c in line.strip("|").split("|")]
    return rows


def test_kube_quick_run_drives_kube_apiserver_on_etcd_and_on_the_shim(tmp_path):
    """16 ConfigMaps through a real kube-apiserver on each datastore, kubectl-driven."""
    from bench.kube import FIGURES as KUBE_FIGURES
    _run_module("bench.kube", tmp_path, "--quick", timeout=1200)
    md = next(tmp_path.glob("*-kube-quick.md")).read_text()
    rows = _table(md)
    for f in KUBE_FIGURES:
        etcd, shim = rows[f.name][2:4]
        assert "n/a" not in etcd and "n/a" not in shim, rows[f.name]
    # the kubectl watcher saw every ADDED, MODIFIED and DELETED event on both
    assert rows["kube_watch_missing"][2:4] == ["0 / 0 / 0", "0 / 0 / 0"]
    assert next(tmp_path.glob("*-kube-quick.png")).read_bytes()[:4] == b"\x89PNG"


def test_scale_quick_run_compares_a_large_database_with_a_small_one(tmp_path):
    _run_module("bench.scale", tmp_path, "--quick")
    md = next(tmp_path.glob("*-scale-quick.md")).read_text()
    rows = _table(md)
    for fig in ("list_p50_ms", "list_p99_ms", "put_p50_ms", "put_p99_ms"):
        assert "n/a" not in "".join(rows[fig][2:5]) and rows[fig][6] in ("pass", "FAIL"), rows[fig]
    with open(next(tmp_path.glob("*-scale-quick.csv"))) as f:
        facts = {(r["database"], r["figure"]): float(r["value"]) for r in csv.DictReader(f) if not r["round"]}
    assert facts[("large", "compactions")] >= 1 and facts[("large", "populate_s")] > 0
    # compaction bounds the log: far fewer rows than the 6,000 revisions written
    assert facts[("large", "log_rows")] < 6000 and facts[("large", "kv_rows")] >= 2000


def test_workers_run_measures_each_count(tmp_path):
    out = _run_module("bench.workers", tmp_path, "--max", "2", "--rounds", "1", "--total", "200")
    rows = [line for line in out.splitlines() if re.match(r"\| [12] \|", line)]
    assert len(rows) == 2 and "n/a" not in "".join(rows), out
