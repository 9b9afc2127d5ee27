"""labelclean: find and fix wrong labels in image-classification datasets."""

__version__ = "0.1.0"

from labelclean.audit import AuditResult, audit  # noqa: E402
from labelclean.config import RunConfig  # noqa: E402
from labelclean.errors import ConfigError, DataError, LabelcleanError  # noqa: E402

__all__ = ["AuditResult", "ConfigError", "DataError", "LabelcleanError", "RunConfig", "audit",
           "__version__"]
