"""Errors a user can act on.

Every failure that reaches the command line is a :class:`K8sSqlError`: it says what is
wrong, where (a file and line, a host, a URL) and what to do about it. The CLI prints it
and exits with code 1; usage errors (Typer/Click) exit with 2.
"""

from __future__ import annotations


class K8sSqlError(Exception):
    """A failure with an actionable message.

    Args:
        what: what is wrong, one sentence.
        where: optional location (``file:line``, ``host``, URL).
        hint: optional next step for the user (a command to run, a flag to set).
    """

    exit_code = 1

    def __init__(self, what: str, *, where: str | None = None, hint: str | None = None):
        super().__init__(what)
        self.what = what
        self.where = where
        self.hint = hint

    def __str__(self) -> str:
        text = f"{self.where}: {self.what}" if self.where else self.what
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text


class ConfigError(K8sSqlError):
    """The configuration file or a flag value is invalid."""


class CommandError(K8sSqlError):
    """A command run on a host failed (non-zero exit, missing binary, timeout)."""


class FlagError(ConfigError):
    """A command-line flag has an invalid value: a usage error, exit code 2 (as Click's
    "Invalid value for '--flag'"), while a bad value in the configuration file exits 1."""

    exit_code = 2
