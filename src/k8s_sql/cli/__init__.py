"""The ``k8s-sql`` command line (Typer). One module per command or command group."""

from __future__ import annotations

import sys

import typer
from rich.markup import escape

from k8s_sql import __version__
from k8s_sql.cli import backup as backup_cmd
from k8s_sql.cli import certs as certs_cmd
from k8s_sql.cli import config as config_cmd
from k8s_sql.cli import init as init_cmd
from k8s_sql.cli import join as join_cmd
from k8s_sql.cli import migrate as migrate_cmd
from k8s_sql.cli import patch_manifest as patch_manifest_cmd
from k8s_sql.cli import reset as reset_cmd
from k8s_sql.cli import render as render_cmd
from k8s_sql.cli import shim as shim_cmd
from k8s_sql.cli import status as status_cmd
from k8s_sql.cli import upgrade as upgrade_cmd
from k8s_sql.cli.common import err_console
from k8s_sql.errors import K8sSqlError

app = typer.Typer(
    name="k8s-sql",
    help="Run vanilla kubeadm Kubernetes with its state in PostgreSQL instead of etcd.\n\n"
    "k8s-sql prepares PostgreSQL with TLS and certificate authentication, writes a kubeadm configuration "
    "whose external etcd is an etcd v3 API shim running beside kube-apiserver, and runs kubeadm init.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(init_cmd.app)
app.add_typer(config_cmd.app)
app.add_typer(patch_manifest_cmd.app)
app.add_typer(render_cmd.app)
app.add_typer(shim_cmd.app)
app.add_typer(status_cmd.app)
app.add_typer(reset_cmd.app)
app.add_typer(join_cmd.app)
app.add_typer(certs_cmd.app)
app.add_typer(upgrade_cmd.app)
app.add_typer(migrate_cmd.app)
app.add_typer(backup_cmd.app)


@app.command("version")
def version() -> None:
    """Print the version of k8s-sql."""
    typer.echo(f"k8s-sql {__version__}")


#: Set to 1 to see the Python traceback of an unexpected error (a bug) instead of one line.
DEBUG_ENV = "K8S_SQL_DEBUG"


def main() -> None:
    """Console entry point: exit 0 on success, 1 on a failure, 2 on a usage error.

    Typer's standalone mode handles usage errors (exit 2); a :class:`K8sSqlError` from a
    command is printed without a traceback and exits 1. Any other exception is a bug in
    k8s-sql: it is printed as one line naming the exception, with a hint to report it, and
    exits 1; with ``K8S_SQL_DEBUG=1`` in the environment it is re-raised (traceback).
    """
    import os

    try:
        app()
    except K8sSqlError as e:
        err_console.print(f"[bold red]error:[/bold red] {escape(str(e))}", highlight=False)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - the last line of defence: never a traceback for a user
        if os.environ.get(DEBUG_ENV) == "1":
            raise
        detail = " ".join(str(e).split()) or "no message"
        err_console.print(f"[bold red]error:[/bold red] unexpected {escape(type(e).__name__)}: {escape(detail)}\n"
                          f"  hint: this is a bug in k8s-sql; please report it with the command you ran and "
                          f"this message (run again with {DEBUG_ENV}=1 for the traceback)", highlight=False)
        sys.exit(1)
