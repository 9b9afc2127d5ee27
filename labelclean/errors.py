"""Errors that reach the user as one line and exit code 1."""

from __future__ import annotations


class LabelcleanError(Exception):
    """A data or user error. The CLI prints its message on one line and exits with 1."""


class DataError(LabelcleanError):
    """The dataset, manifest, trusted set or a run folder is not what was expected."""


class ConfigError(LabelcleanError):
    """A setting is out of range or names something that does not exist."""
