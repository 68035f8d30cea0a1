"""Workloads run with etcd's ``benchmark`` tool and PostgreSQL's ``pgbench``; output parsing.

Each function returns a dict of figures (name -> float) for one run against one endpoint.
Units: rates in requests (or transactions) per second, latencies in milliseconds.
"""

from __future__ import annotations

import os
import re
import subprocess

_NUM = r"([0-9.]+(?:e[-+]?[0-9]+)?)"  # --precise prints e.g. 6.61e-07
_RATE = re.compile(r"Requests/sec:\s+" + _NUM)
_PCT = re.compile(r"^\s*([0-9.]+)% in " + _NUM + " secs", re.M)
_AVG = re.compile(r"Average:\s+" + _NUM + " secs")


def parse_report(text: str) -> dict[str, float]:
    """Figures from one benchmark-tool report: ``rate`` (req/s), ``avg``, ``p50``, ``p99`` (ms).

    Raises ValueError when the text has no summary (the run failed).
    """
    m = _RATE.search(text)
    if not m:
        raise ValueError(f"no benchmark summary in output: {text[-1500:]}")
    out = {"rate": float(m.group(1))}
    a = _AVG.search(text)
    if a:
        out["avg"] = float(a.group(1)) * 1000
    for pct, secs in _PCT.findall(text):
        if pct in ("50", "99", "99.9"):
            out["p" + pct.replace(".", "")] = float(secs) * 1000
    return out


def run_tool(binary: str, endpoint: str, args: list[str], clients: int = 1, conns: int = 1,
             timeout: float = 600) -> str:
    """Run ``benchmark`` against ``endpoint`` (host:port, plaintext); returns its stdout.

    Raises RuntimeError on a non-zero exit or timeout (seconds).
    """
    argv = [binary, "--endpoints", endpoint, "--clients", str(clients), "--conns", str(conns),
            "--dial-timeout", "10s", "--precise", *args]
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"benchmark {' '.join(args)} timed out after {timeout}s") from e
    if r.returncode != 0:
        raise RuntimeError(f"benchmark {' '.join(args)} failed: {r.stderr[-1500:]}")
    return r.stdout + r.stderr


def put(binary, endpoint, total, clients, conns):
    """put with 256-byte values over a 100,000-key space."""
    return parse_report(run_tool(binary, endpoint, ["put", "--total", str(total), "--val-size", "256",
                                                    "--key-space-size", "100000"], clients, conns))


def txn_put(binary, endpoint, total, clients, conns):
    """txn-put (one put per txn), 256-byte values over a 100,000-key space."""
    return parse_report(run_tool(binary, endpoint, ["txn-put", "--total", str(total), "--val-size", "256",
                                                    "--key-space-size", "100000"], clients, conns))


def range_one(binary, endpoint, key, total, clients, conns):
    """Linearizable range of one existing key."""
    return parse_report(run_tool(binary, endpoint, ["range", key, "--consistency", "l", "--total", str(total)],
                                 clients, conns))


def watch_latency(binary, endpoint, total, rate):
    """Put-to-event latency: the tool puts ``rate`` keys/s and times each watch event."""
    return parse_report(run_tool(binary, endpoint, ["watch-latency", "--total", str(total), "--put-rate",
                                                    str(rate), "--val-size", "256"]))


def pgbench(pg, db: str, clients: int, seconds: int, workdir: str) -> float:
    """pgbench with one single-row insert per transaction (custom script); returns tps.

    The table ``bench_ins`` is created in ``db`` if missing. Runs as the postgres OS user
    over the temp cluster's socket.
    """
    pg.psql("CREATE TABLE IF NOT EXISTS bench_ins (id bigserial PRIMARY KEY, v bytea)", db=db)
    script = os.path.join(workdir, "insert.sql")
    with open(script, "w") as f:
        f.write("INSERT INTO bench_ins (v) VALUES (convert_to(repeat('x', 256), 'UTF8'));\n")
    os.chmod(script, 0o644)
    argv = [os.path.join(pg.bindir, "pgbench"), "-n", "-f", script, "-c", str(clients), "-j", str(min(clients, 4)),
            "-T", str(seconds), "-h", pg.socket_dir, "-p", str(pg.port), "-U", "postgres", db]
    if os.getuid() == 0:
        argv = ["runuser", "-u", "postgres", "--", *argv]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 120)
    m = re.search(r"tps = ([0-9.]+)", r.stdout)
    if r.returncode != 0 or not m:
        raise RuntimeError(f"pgbench failed: {r.stdout[-800:]} {r.stderr[-800:]}")
    return float(m.group(1))
