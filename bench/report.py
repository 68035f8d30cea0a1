"""Results of a benchmark run: per-round figures, ratios shim/etcd, targets; Markdown, CSV, PNG.

``Results.values[system][figure]`` holds one value per round (``system``: etcd, shim,
postgres). A ratio is shim/etcd computed within each round, then summarised min/median/max.
"""

from __future__ import annotations

import csv
import math
import statistics
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Figure:
    """One measured figure: ``name``, ``unit``, what it is, and an optional target.

    ``target``: (kind, op, bound) with kind "ratio" (median shim/etcd) or "shim" (the shim's
    median itself), op "<=" or ">=", e.g. ("ratio", ">=", 0.5).
    """
    name: str
    unit: str
    label: str
    target: tuple[str, str, float] | None = None


FIGURES = [
    Figure("put_1_p50_ms", "ms", "put, 1 client: p50 latency", ("ratio", "<=", 2.0)),
    Figure("put_1_rate", "req/s", "put, 1 client: throughput"),
    Figure("put_64_rate", "req/s", "put, 64 clients / 8 conns: throughput", ("ratio", ">=", 0.25)),
    Figure("put_64_p99_ms", "ms", "put, 64 clients: p99 latency"),
    Figure("txn_put_64_rate", "req/s", "txn-put, 64 clients / 8 conns: throughput", ("ratio", ">=", 0.35)),
    Figure("range_1_p50_ms", "ms", "range 1 key (linearizable), 1 client: p50 latency", ("ratio", "<=", 3.0)),
    Figure("range_1_rate", "req/s", "range 1 key, 1 client: throughput"),
    Figure("range_64_rate", "req/s", "range 1 key, 64 clients / 8 conns: throughput", ("ratio", ">=", 0.3)),
    Figure("put_1_cpu_us", "µs", "put, 1 client: server CPU time per request"),
    Figure("put_64_cpu_us", "µs", "put, 64 clients: server CPU time per request"),
    Figure("txn_put_64_cpu_us", "µs", "txn-put, 64 clients: server CPU time per request"),
    Figure("range_1_cpu_us", "µs", "range, 1 client: server CPU time per request"),
    Figure("range_64_cpu_us", "µs", "range, 64 clients: server CPU time per request"),
    Figure("watch_p50_ms", "ms", "watch-latency (put to event), one process: p50"),
    Figure("watch_p99_ms", "ms", "watch-latency, one process: p99", ("shim", "<=", 10.0)),
    Figure("watch2_p50_ms", "ms", "watch latency, write via the other shim process: p50"),
    Figure("watch2_p99_ms", "ms", "watch latency, write via the other shim process: p99", ("shim", "<=", 25.0)),
    Figure("k8s_create_s", "s", "k8s run: create N objects (create-if-absent txns)"),
    Figure("k8s_list_s", "s", "k8s run: list N objects, pages of 500, one revision", ("ratio", "<=", 2.0)),
    Figure("k8s_update_s", "s", "k8s run: update each (compare mod_revision)"),
    Figure("k8s_delete_s", "s", "k8s run: delete each (compare mod_revision)"),
    Figure("k8s_watch_lag_p99_ms", "ms", "k8s run: watcher lag behind acked writes, p99"),
    Figure("k8s_watch_lag_max_ms", "ms", "k8s run: watcher lag, max"),
    Figure("k8s_watch_events_missing", "events", "k8s run: events the watcher missed", ("shim", "<=", 0.0)),
]
PG_FIGURES = [
    Figure("pgbench_1_tps", "tx/s", "pgbench, 1 single-row insert per tx, 1 client"),
    Figure("pgbench_64_tps", "tx/s", "pgbench, 1 single-row insert per tx, 64 clients"),
]


def _stats(vals: list[float]) -> tuple[float, float, float]:
    vals = [v for v in vals if v is not None and not math.isnan(v)]
    if not vals:
        return (math.nan, math.nan, math.nan)
    return (min(vals), statistics.median(vals), max(vals))


def _fmt(v: float) -> str:
    if v is None or math.isnan(v):
        return "n/a"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}" if v else "0"


NOTES = """## Notes

- watch-latency is etcd's tools/benchmark definition: time from the put's response to the watch
  event (etcd often delivers the event before the put returns, hence its µs p50).
- "watch latency, write via the other shim process": puts through one shim process, the watch
  on another process on the same database; for etcd, writer and watcher on two connections.
- k8s run watcher lag: event received minus the write's acknowledgement (0 when earlier); the
  watcher runs in its own process, writers are 64 concurrent txns over 8 connections.
- no-op ceiling: bench/noop.py, an etcd KV service on grpc.aio + uvloop that answers from memory,
  with as many processes as the shim's --workers; the physical limit of a Python gRPC server.
- server CPU time per request: user + system time of all the server's processes
  (/proc/<pid>/stat) over the run, divided by the requests; independent of the core count.
- pgbench runs one single-row INSERT (256-byte bytea) per transaction against the same
  PostgreSQL server, so "shim put / pgbench" is the share of PostgreSQL's ceiling the shim reaches.
"""


@dataclass
class Results:
    """All figures of one run; ``meta`` is the header (machine, versions, sizes)."""
    meta: dict[str, str] = field(default_factory=dict)
    values: dict[str, dict[str, list[float]]] = field(
        default_factory=lambda: {"etcd": {}, "shim": {}, "postgres": {}, "noop": {}})
    figures: list[Figure] = field(default_factory=lambda: list(FIGURES))
    title: str = "k8s-sql shim vs etcd — benchmark run"
    notes: str = ""

    def add(self, system: str, figure: str, value: float) -> None:
        self.values[system].setdefault(figure, []).append(float(value))

    def ratios(self, figure: str, base: str = "etcd") -> list[float]:
        """shim/``base`` per round (rounds where both exist); ``base`` etcd or noop."""
        e, s = self.values[base].get(figure, []), self.values["shim"].get(figure, [])
        return [b / a if a else math.nan for a, b in zip(e, s)]

    def fractions(self) -> list[tuple[str, list[float]]]:
        """The shim's put throughput as a fraction of pgbench's, per round."""
        out = []
        for fig, pg in (("put_1_rate", "pgbench_1_tps"), ("put_64_rate", "pgbench_64_tps")):
            s, p = self.values["shim"].get(fig, []), self.values["postgres"].get(pg, [])
            out.append((f"shim {fig} / {pg}", [a / b if b else math.nan for a, b in zip(s, p)]))
        return out

    def verdict(self, f: Figure) -> str:
        """"pass", "FAIL" or "" (no target / no data)."""
        if not f.target:
            return ""
        kind, op, bound = f.target
        v = _stats(self.ratios(f.name) if kind == "ratio" else self.values["shim"].get(f.name, []))[1]
        if math.isnan(v):
            return "FAIL"
        ok = v <= bound if op == "<=" else v >= bound
        return "pass" if ok else "FAIL"

    def rows(self) -> list[dict[str, str]]:
        """Table rows: figure, unit, etcd/shim/ratio min-med-max, target, verdict."""
        rows = []
        for f in self.figures:
            e, s, r = (_stats(self.values["etcd"].get(f.name, [])), _stats(self.values["shim"].get(f.name, [])),
                       _stats(self.ratios(f.name)))
            n, rn = _stats(self.values["noop"].get(f.name, [])), _stats(self.ratios(f.name, "noop"))
            t = f"{f.target[0]} {f.target[1]} {f.target[2]:g}" if f.target else ""
            rows.append({"figure": f.name, "label": f.label, "unit": f.unit,
                         "etcd": " / ".join(_fmt(x) for x in e), "shim": " / ".join(_fmt(x) for x in s),
                         "ratio": " / ".join(_fmt(x) for x in r), "target": t, "verdict": self.verdict(f),
                         "noop": " / ".join(_fmt(x) for x in n) if self.values["noop"].get(f.name) else "",
                         "noop_ratio": " / ".join(_fmt(x) for x in rn) if self.values["noop"].get(f.name) else ""})
        return rows

    def write_markdown(self, path: str) -> None:
        lines = [f"# {self.title}", ""]
        lines += [f"- **{k}**: {v}" for k, v in self.meta.items()]
        lines += ["", "Each cell is min / median / max over the rounds. Ratio = shim / etcd, computed within "
                  "each round. Targets are floors: a ratio target applies to the median ratio, a `shim` target "
                  "to the shim's median value." + (" The no-op ceiling (physical limit) is an etcd KV service on "
                  "grpc.aio answering from memory in the shim's process model; shim/no-op is computed within "
                  "each round too." if any(self.values["noop"].values()) else ""), "",
                  "| figure | unit | etcd | shim | ratio shim/etcd | target | verdict | no-op ceiling | "
                  "shim/no-op |", "|---|---|---|---|---|---|---|---|---|"]
        for r in self.rows():
            lines.append(f"| {r['label']} (`{r['figure']}`) | {r['unit']} | {r['etcd']} | {r['shim']} | "
                         f"{r['ratio']} | {r['target']} | {r['verdict']} | {r['noop']} | {r['noop_ratio']} |")
        if not any(self.values["postgres"].values()):
            lines += ["", self.notes]
            with open(path, "w") as fh:
                fh.write("\n".join(lines))
            return
        lines += ["", "## PostgreSQL's own ceiling (pgbench, same server, same run)", "",
                  "| figure | unit | PostgreSQL (min / median / max) |", "|---|---|---|"]
        for f in PG_FIGURES:
            lines.append(f"| {f.label} (`{f.name}`) | {f.unit} | "
                         f"{' / '.join(_fmt(x) for x in _stats(self.values['postgres'].get(f.name, [])))} |")
        for name, vals in self.fractions():
            lines.append(f"| {name} | fraction | {' / '.join(_fmt(x) for x in _stats(vals))} |")
        lines += ["", NOTES]
        with open(path, "w") as fh:
            fh.write("\n".join(lines))

    def write_csv(self, path: str) -> None:
        """Long format: figure, unit, system (etcd/shim/postgres/ratio), round, value."""
        with open(path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["figure", "unit", "system", "round", "value"])
            units = {f.name: f.unit for f in self.figures + PG_FIGURES}
            for system, figs in self.values.items():
                for name, vals in figs.items():
                    for i, v in enumerate(vals, 1):
                        w.writerow([name, units.get(name, ""), system, i, repr(v)])
            for f in self.figures:
                for i, v in enumerate(self.ratios(f.name), 1):
                    w.writerow([f.name, "ratio", "ratio", i, repr(v)])
                for i, v in enumerate(self.ratios(f.name, "noop"), 1):
                    w.writerow([f.name, "ratio", "ratio_noop", i, repr(v)])

    @classmethod
    def from_csv(cls, path: str) -> "Results":
        """The per-round values back from :meth:`write_csv` (``meta`` stays empty)."""
        res = cls()
        with open(path, newline="") as fh:
            for row in csv.DictReader(fh):
                if row["system"] in res.values:
                    res.add(row["system"], row["figure"], float(row["value"]))
        return res

    def write_chart(self, path: str) -> None:
        """Horizontal bars of the median ratio shim/etcd per figure (log scale), targets marked."""
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        names, meds, lo, hi, colors, targets = [], [], [], [], [], []
        for f in self.figures:
            mn, md, mx = _stats(self.ratios(f.name))
            if math.isnan(md) or md <= 0:
                continue
            names.append(f"{f.label} [{f.unit}]")
            meds.append(md)
            lo.append(md - mn)
            hi.append(mx - md)
            lower_better = f.unit in ("ms", "s", "µs")
            colors.append("#c0504d" if lower_better else "#4f81bd")
            targets.append(f.target[2] if f.target and f.target[0] == "ratio" else None)
        fig, ax = plt.subplots(figsize=(11, 0.45 * len(names) + 1.8))
        y = list(range(len(names)))[::-1]
        ax.barh(y, meds, xerr=[lo, hi], color=colors, capsize=3)
        for yi, t in zip(y, targets):
            if t:
                ax.plot([t, t], [yi - 0.4, yi + 0.4], color="black", linewidth=2)
        for yi, m, h in zip(y, meds, hi):
            ax.text((m + h) * 1.05, yi, f"{m:.2f}×", va="center", fontsize=8)
        ax.set_yticks(y)
        ax.set_yticklabels(names, fontsize=8)
        ax.set_xscale("log")
        if meds:  # room on the right for the labels
            left = min(min(m - d for m, d in zip(meds, lo)), 1.0) / 1.5
            ax.set_xlim(left, max(m + h for m, h in zip(meds, hi)) * 1.8)
        ax.axvline(1.0, color="grey", linestyle="--", linewidth=1)
        ax.set_xlabel("shim / etcd (median over rounds; whiskers min–max; black tick = target)")
        ax.set_title(f"{self.title}\nshim relative to etcd 3.4 — blue: throughput (higher is better), "
                     "red: time/latency (lower is better)", fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
