"""Errors that reach the user as one line: exit code 1 for data and user errors, 2 for usage."""

from __future__ import annotations


class LabelcleanError(Exception):
    """A data or user error. The CLI prints its message on one line and exits with 1."""

    exit_code = 1


class DataError(LabelcleanError):
    """The dataset, manifest, trusted set or a run folder is not what was expected."""


class ConfigError(LabelcleanError):
    """A setting is out of range or names something that does not exist."""


class UsageError(ConfigError):
    """An option value the command line could have refused before any work: exit code 2."""

    exit_code = 2


class GateCrossed(LabelcleanError):
    """A gate the user set (``--fail-if-noise-above``, ``--fail-if-flagged-above``) was crossed;
    the run's outputs are written."""

    exit_code = 3


class Interrupted(BaseException):
    """Ctrl-C in the CLI (raised by its SIGINT handler: Typer turns ``KeyboardInterrupt`` into a
    silent exit 130, and a ``BaseException`` passes every ``except Exception`` on its way out)."""

    exit_code = 130
