"""labelclean: find and fix wrong labels in image-classification datasets.

The heavy parts (PyTorch) load on first use, so ``import labelclean`` and the command line's
``--help`` stay fast: ``labelclean.audit`` and ``labelclean.AuditResult`` (from :mod:`labelclean.pipeline`) import on
access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from labelclean.config import RunConfig
from labelclean.errors import ConfigError, DataError, LabelcleanError, UsageError
from labelclean.version import __version__

if TYPE_CHECKING:
    from labelclean.pipeline import AuditResult, audit

__all__ = ["AuditResult", "ConfigError", "DataError", "LabelcleanError", "RunConfig", "UsageError",
           "__version__", "audit"]


def __getattr__(name: str) -> Any:
    if name in ("audit", "AuditResult"):
        from labelclean import pipeline as module

        return getattr(module, name)
    raise AttributeError(f"module 'labelclean' has no attribute {name!r}")
