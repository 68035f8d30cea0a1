"""Runtime settings of ``k8s-sql shim serve`` (flag names follow etcd where etcd has them)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from k8s_sql.errors import K8sSqlError

DEFAULT_ETCD_VERSION = "3.5.21"  # >= 3.5.13: kube-apiserver then uses watch progress requests

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str, flag: str) -> float:
    """Parse a Go-style duration ("5s", "1m30s", "250ms") or plain seconds ("5") into seconds.

    Raises K8sSqlError naming ``flag`` when the text is not a duration.
    """
    s = text.strip()
    try:
        return float(s)
    except ValueError:
        pass
    pos, total = 0, 0.0
    for m in _DURATION.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        pos = m.end()
    if pos != len(s) or not s:
        raise K8sSqlError(f"invalid duration {text!r}", where=flag, hint='use Go syntax like "5s", "500ms" or "1h30m"')
    return total


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
    """

    listen_client_urls: list[str] = field(default_factory=lambda: ["https://127.0.0.1:2379"])
    cert_file: str = ""
    key_file: str = ""
    trusted_ca_file: str = ""
    client_cert_auth: bool = False
    datastore: str = ""
    datastore_timeout: float = 30.0
    compaction_interval: float = 0.0
    watch_progress_notify_interval: float = 5.0
    emulated_etcd_version: str = DEFAULT_ETCD_VERSION
    metrics_addr: str = ""
    name: str = "default"
    member_id: int = 0x8E9E05C52164694D
    cluster_id: int = 0xCDF818194E3A8C32
    workers: int = 1

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
        if self.compaction_interval < 0 or self.watch_progress_notify_interval < 0:
            raise K8sSqlError("durations must not be negative", where="--compaction-interval/--watch-progress-notify-interval")
