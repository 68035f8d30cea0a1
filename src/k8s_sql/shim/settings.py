"""Runtime settings of ``k8s-sql shim serve`` (flag names follow etcd where etcd has them)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from k8s_sql.errors import K8sSqlError

DEFAULT_ETCD_VERSION = "3.5.21"  # >= 3.5.13: kube-apiserver then uses watch progress requests
#: ``--compaction-interval`` and the configuration's ``shim.compactionInterval``: off, as
#: etcd's auto-compaction; kube-apiserver compacts every 5 minutes through the etcd API, and
#: since Kubernetes 1.34 it expects to be the only one compacting (Kine too is run with 0 then).
DEFAULT_COMPACTION_INTERVAL = "0"
#: ``--watch-progress-notify-interval`` and ``shim.watchProgressNotifyInterval``.
DEFAULT_WATCH_PROGRESS_NOTIFY_INTERVAL = "5s"
#: ``--max-request-bytes``, etcd's default (1.5 MiB): most bytes of a write request.
DEFAULT_MAX_REQUEST_BYTES = 1572864
#: ``--max-txn-ops``, etcd's default: most operations in each list of a txn.
DEFAULT_MAX_TXN_OPS = 128
#: What etcd's gRPC server takes beyond ``--max-request-bytes`` (its grpcOverheadBytes): gRPC's
#: receive limit and the size at which etcd splits the responses of a fragmenting watcher.
GRPC_OVERHEAD_BYTES = 512 * 1024
#: Largest ``--max-request-bytes``: gRPC's receive limit (an int32) is that plus the overhead.
MAX_MAX_REQUEST_BYTES = 2**31 - 1 - GRPC_OVERHEAD_BYTES

#: Go's time.ParseDuration units, in nanoseconds (µ is U+00B5, μ is U+03BC; Go accepts both).
_UNIT_NS = {"ns": 1, "us": 1_000, "\u00b5s": 1_000, "\u03bcs": 1_000, "ms": 1_000_000, "s": 10**9, "m": 60 * 10**9,
            "h": 3600 * 10**9}
_ELEMENT = re.compile(r"(\d*)(?:\.(\d*))?([^\d.]*)")
_MAX_NS = 2**63 - 1  # time.Duration is an int64 of nanoseconds


def go_duration(text: str) -> float:
    """Seconds in ``text``, a duration in Go's ``time.ParseDuration`` syntax: an optional
    sign, then ``0`` or a sequence of decimal numbers each with a unit (ns, us, µs, ms, s,
    m, h), e.g. ``"5s"``, ``"1h30m"``, ``"1.5ms"``. A bare number other than ``0`` has no
    unit and is refused, as Go does. The one parser for every duration k8s-sql reads: the
    shim's flags and the configuration file (whose values reach the shim and Kine as flags).

    Raises:
        ValueError: ``text`` is not a Go duration, or its magnitude exceeds Go's int64
            nanoseconds; the message says why.
    """
    s = text
    neg = s[:1] == "-"
    if s[:1] in ("-", "+"):
        s = s[1:]
    if s == "0":
        return 0.0
    if not s:
        raise ValueError("empty duration")
    total_ns, pos = 0, 0
    while pos < len(s):
        m = _ELEMENT.match(s, pos)
        whole, frac, unit = m.group(1), m.group(2), m.group(3)
        if not whole and not frac:
            raise ValueError(f"expected a number at {s[pos:]!r}")
        if not unit:
            raise ValueError(f"missing unit after {s[pos:m.end()]!r} (ns, us, ms, s, m or h)")
        if unit not in _UNIT_NS:
            raise ValueError(f"unknown unit {unit!r} (ns, us, ms, s, m or h)")
        scale = _UNIT_NS[unit]
        total_ns += int(whole or 0) * scale
        if frac:
            total_ns += int(frac) * scale // 10 ** len(frac)  # Go truncates below a nanosecond
        if total_ns > _MAX_NS + neg:
            raise ValueError("duration out of range (at most about 2562047h)")
        pos = m.end()
    return (-total_ns if neg else total_ns) / 1e9


def parse_duration(text: str, flag: str) -> float:
    """:func:`go_duration` for a command-line flag.

    Raises:
        K8sSqlError: naming ``flag`` when the text is not a duration.
    """
    try:
        return go_duration(text)
    except ValueError as e:
        raise K8sSqlError(f"invalid duration {text!r}: {e}", where=flag,
                          hint='use Go syntax like "5s", "500ms", "1h30m", or 0') from None


@dataclass
class ShimSettings:
    """Everything the shim needs to run; built by ``cli/shim.py`` from flags.

    listen_client_urls: "https://IP:PORT", "http://IP:PORT" or "unix:///path" (etcd's --listen-client-urls).
    cert_file/key_file/trusted_ca_file: server TLS; client_cert_auth requires client certs signed by
    trusted_ca_file (etcd's --client-cert-auth).
    datastore: one libpq connection URI; "" = the libpq environment (PGHOST, PGSSLMODE, ...).
    datastore_timeout: seconds to wait for PostgreSQL at start before giving up.
    compaction_interval: seconds between automatic compactions, 0 = off.
    watch_progress_notify_interval: seconds between progress notifications (etcd default 10m; ours 5s).
    emulated_etcd_version: reported by Maintenance.Status and /version.
    metrics_addr: "http://IP:PORT" for /health, /version, /metrics; "" = off.
    member_id/cluster_id: reported in every ResponseHeader.
    max_request_bytes/max_txn_ops: etcd's request limits (--max-request-bytes, --max-txn-ops).
    workers: processes serving the same ports, 1..64; the CLI's default ``auto`` is resolved
    to a number by :func:`k8s_sql.shim.workers.auto_workers` (cgroup CPU quota, else CPUs).
    """

    listen_client_urls: list[str] = field(default_factory=lambda: ["https://127.0.0.1:2379"])
    cert_file: str = ""
    key_file: str = ""
    trusted_ca_file: str = ""
    client_cert_auth: bool = False
    datastore: str = ""
    datastore_timeout: float = 60.0  # longer than a PostgreSQL failover (README "HA": about 30 s)
    compaction_interval: float = 0.0
    watch_progress_notify_interval: float = 5.0
    emulated_etcd_version: str = DEFAULT_ETCD_VERSION
    metrics_addr: str = ""
    name: str = "default"
    member_id: int = 0x8E9E05C52164694D
    cluster_id: int = 0xCDF818194E3A8C32
    workers: int = 1
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_txn_ops: int = DEFAULT_MAX_TXN_OPS

    def validate(self) -> None:
        """Raise K8sSqlError for settings that cannot work (e.g. https without cert/key)."""
        for url in self.listen_client_urls:
            if not re.match(r"^(https?://[^/]+|unixs?://.+)$", url):
                raise K8sSqlError(f"invalid client URL {url!r}", where="--listen-client-urls",
                                  hint="use https://IP:PORT, http://IP:PORT or unix:///path")
            if url.startswith("https://") and not (self.cert_file and self.key_file):
                raise K8sSqlError(f"{url} needs a server certificate", where="--listen-client-urls",
                                  hint="pass --cert-file and --key-file (or listen on http:// for local tests)")
        if self.client_cert_auth and not self.trusted_ca_file:
            raise K8sSqlError("--client-cert-auth needs the CA that signs client certificates",
                              where="--client-cert-auth", hint="pass --trusted-ca-file")
        from k8s_sql.shim import safety  # a password in --datastore, TLS files that cannot work

        safety.check(self)
        if self.compaction_interval < 0 or self.watch_progress_notify_interval < 0:
            raise K8sSqlError("durations must not be negative", where="--compaction-interval/--watch-progress-notify-interval")
        if not 1 <= self.max_request_bytes <= MAX_MAX_REQUEST_BYTES:
            raise K8sSqlError(f"--max-request-bytes {self.max_request_bytes} is out of range",
                              where="--max-request-bytes", hint=f"use 1 to {MAX_MAX_REQUEST_BYTES} (etcd's default: "
                              f"{DEFAULT_MAX_REQUEST_BYTES})")
        if not 1 <= self.workers <= 64:
            raise K8sSqlError(f"--workers {self.workers} is out of range", where="--workers",
                              hint="use auto or 1 to 64")
        if self.max_txn_ops < 1:
            raise K8sSqlError(f"--max-txn-ops {self.max_txn_ops} is out of range", where="--max-txn-ops",
                              hint=f"use 1 or more (etcd's default: {DEFAULT_MAX_TXN_OPS})")
