"""``bench/run --quick`` end to end: real etcd 3.4, a temp PostgreSQL, shim processes, etcd's
own benchmark tool (built from Debian's sources, cached) and pgbench.

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
        etcd, shim, ratio = cells[2], cells[3], cells[4]
        assert "n/a" not in etcd and "n/a" not in shim, row
        if f.target:
            assert cells[6] in ("pass", "FAIL"), row
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
    # the k8s-shaped run's watcher saw every update and delete on both systems
    assert by[("k8s_watch_events_missing", "etcd")] == 0 and by[("k8s_watch_events_missing", "shim")] == 0


def test_parse_report_reads_the_tools_summary():
    from bench.tooldriver import parse_report
    text = ("Summary:\n  Total:\t1.0000 secs.\n  Average:\t0.0020 secs.\n  Requests/sec:\t500.5\n\n"
            "Latency distribution:\n  10% in 0.0010 secs.\n  50% in 0.0015 secs.\n  99% in 0.0090 secs.\n")
    assert parse_report(text) == {"rate": 500.5, "avg": 2.0, "p50": 1.5, "p99": 9.0}
    with pytest.raises(ValueError):
        parse_report("Error: context deadline exceeded")
