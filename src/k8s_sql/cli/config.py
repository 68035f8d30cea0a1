"""``k8s-sql config``: the configuration file."""

from __future__ import annotations

import typer

from k8s_sql import config as configmod
from k8s_sql.cli import common

app = typer.Typer(name="config", help="Show and check the k8s-sql configuration file.", no_args_is_help=True)


@app.command("print-defaults")
def print_defaults() -> None:
    """Print the configuration with every field at its default value.

    Save it, edit what you need, and pass it to `k8s-sql init --config FILE`. The output is
    the same on every machine: fields left empty (node.name, node.advertiseAddress, ...)
    are filled in on the node at init time, as their comments say.
    """
    typer.echo(configmod.dump(configmod.Cluster(), notes=True), nl=False)


@app.command("validate")
def validate(config: common.ConfigOpt = None) -> None:
    """Check a configuration file; print the effective configuration on success (with
    node.name filled in from this machine's host name when it is empty)."""
    cfg = common.load_config(config)
    typer.echo(configmod.dump(cfg), nl=False)
