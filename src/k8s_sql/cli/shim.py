"""``k8s-sql shim serve``: the etcd v3 API served from PostgreSQL.

Flags use etcd's names where etcd has them; the datastore is one libpq connection URI.
"""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from k8s_sql.shim.settings import (DEFAULT_MAX_REQUEST_BYTES, DEFAULT_MAX_TXN_OPS, MAX_MAX_REQUEST_BYTES)
from k8s_sql.shim.settings import (DEFAULT_COMPACTION_INTERVAL, DEFAULT_ETCD_VERSION,
                                   DEFAULT_WATCH_PROGRESS_NOTIFY_INTERVAL, ShimSettings, parse_duration)
from k8s_sql.shim.workers import parse_workers

def _workers_value(text: str) -> str:
    """--workers: "auto" or 1..64, else a usage error (exit 2) saying what is allowed."""
    from k8s_sql.errors import K8sSqlError

    try:
        parse_workers(text)
    except K8sSqlError as e:
        raise typer.BadParameter(f"{text!r}: {e.hint}") from None
    return text


app = typer.Typer(name="shim", help="The etcd v3 API shim that stores Kubernetes' state in PostgreSQL.",
                  no_args_is_help=True)


@app.command("serve")
def serve(
    listen_client_urls: Annotated[str, typer.Option(
        "--listen-client-urls", help="Comma-separated URLs to serve the etcd v3 gRPC API on: https://IP:PORT "
        "(TLS), http://IP:PORT (plain, local testing only: warned about unless on loopback), unix:///path or "
        "unixs:///path.")]
        = "https://127.0.0.1:2379",
    cert_file: Annotated[str, typer.Option("--cert-file", help="Server certificate (PEM) for https:// URLs.")] = "",
    key_file: Annotated[str, typer.Option("--key-file", help="Server private key (PEM) for https:// URLs.")] = "",
    trusted_ca_file: Annotated[str, typer.Option(
        "--trusted-ca-file", help="CA bundle (PEM) that signs client certificates.")] = "",
    client_cert_auth: Annotated[bool, typer.Option(
        "--client-cert-auth", help="Require a client certificate signed by --trusted-ca-file (mTLS).")] = False,
    datastore: Annotated[str, typer.Option(
        "--datastore", envvar="K8S_SQL_DATASTORE", show_envvar=True,
        help="libpq connection URI of the shim's PostgreSQL database, e.g. "
        "'postgresql://k8s_sql@127.0.0.1/kubernetes?sslmode=verify-full&sslrootcert=ca.crt&sslcert=c.crt&sslkey=c.key'. "
        "Empty: the libpq environment (PGHOST, PGDATABASE, PGSSLMODE, ...). A password here is refused (ps shows "
        "it): use certificate authentication or a password file (PGPASSFILE, ~/.pgpass).")] = "",
    datastore_timeout: Annotated[str, typer.Option(
        "--datastore-timeout", help="How long to wait for PostgreSQL at start before exiting with status 1 "
        "(longer than a failover, README \"HA\").")] = "60s",
    compaction_interval: Annotated[str, typer.Option(
        "--compaction-interval", help="Automatic compaction period keeping that much history, e.g. 5m; 0 = off "
        "(kube-apiserver compacts on its own every 5 minutes).")] = DEFAULT_COMPACTION_INTERVAL,
    watch_progress_notify_interval: Annotated[str, typer.Option(
        "--watch-progress-notify-interval", help="Period of progress notifications to watchers that ask for them; "
        "kube-apiserver's watch cache relies on them.")] = DEFAULT_WATCH_PROGRESS_NOTIFY_INTERVAL,
    emulated_etcd_version: Annotated[str, typer.Option(
        "--emulated-etcd-version", help="etcd version reported by Status and /version; >= 3.5.13 makes "
        "kube-apiserver use watch progress requests.")] = DEFAULT_ETCD_VERSION,
    metrics_addr: Annotated[str, typer.Option(
        "--metrics-addr", help="http://IP:PORT for /health, /version and Prometheus /metrics; empty = off.")]
        = "http://127.0.0.1:2381",
    name: Annotated[str, typer.Option("--name", help="Member name reported by member list.")] = "default",
    workers: Annotated[str, typer.Option(
        "--workers", help="Processes serving the same ports (SO_REUSEPORT; PostgreSQL coordinates them): "
        "1 to 64, or auto = one per CPU the shim may use: its cgroup's CPU quota rounded up (a sidecar with "
        "a CPU limit), else the CPUs of its affinity mask.", callback=_workers_value)] = "auto",
    max_request_bytes: Annotated[int, typer.Option(
        "--max-request-bytes", min=1, max=MAX_MAX_REQUEST_BYTES, help="etcd's limit on a write request in bytes "
        "(larger ones fail with 'request is too large'); gRPC accepts 512 KiB more, and fragmenting watchers "
        "get responses split at that size.")] = DEFAULT_MAX_REQUEST_BYTES,
    max_txn_ops: Annotated[int, typer.Option(
        "--max-txn-ops", min=1, help="etcd's limit on the operations in each list of a txn.")] = DEFAULT_MAX_TXN_OPS,
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning or error.")] = "info",
) -> None:
    """Serve the etcd v3 API (KV, Watch, Lease, Maintenance, Cluster) from PostgreSQL.

    The schema is created or migrated on start. Runs until SIGTERM or SIGINT. Exit status 1
    when PostgreSQL cannot be reached or a listener cannot be opened, and before contacting
    PostgreSQL when --datastore carries a password or a TLS file cannot work (unreadable,
    not PEM, a key that does not belong to its certificate). Warns about a plaintext or
    unauthenticated listener on an address other than loopback.

    Example (what the kube-apiserver sidecar runs):

      k8s-sql shim serve --listen-client-urls https://127.0.0.1:2379 \\
        --cert-file shim-server.crt --key-file shim-server.key \\
        --trusted-ca-file ca.crt --client-cert-auth \\
        --datastore 'postgresql://k8s_sql@127.0.0.1:5432/kubernetes?sslmode=verify-full&...'
    """
    from k8s_sql.shim.server import run

    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("psycopg.pool").setLevel(logging.WARNING)
    count = parse_workers(workers)
    settings = ShimSettings(
        listen_client_urls=[u.strip() for u in listen_client_urls.split(",") if u.strip()],
        cert_file=cert_file, key_file=key_file, trusted_ca_file=trusted_ca_file, client_cert_auth=client_cert_auth,
        datastore=datastore, datastore_timeout=parse_duration(datastore_timeout, "--datastore-timeout"),
        compaction_interval=parse_duration(compaction_interval, "--compaction-interval"),
        watch_progress_notify_interval=parse_duration(watch_progress_notify_interval,
                                                      "--watch-progress-notify-interval"),
        emulated_etcd_version=emulated_etcd_version, metrics_addr=metrics_addr, name=name, workers=count.workers,
        max_request_bytes=max_request_bytes, max_txn_ops=max_txn_ops)
    from k8s_sql.shim.safety import start_warnings

    for warning in start_warnings(settings):
        logging.getLogger("k8s_sql.shim").warning("%s", warning)
    logging.getLogger("k8s_sql.shim").info("%d worker process(es) (%s)", count.workers, count.reason)
    run(settings)
