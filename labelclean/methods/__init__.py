"""Noisy-label methods, by name: ``labelclean.methods.METHODS.get("ce")``."""

from labelclean.methods import auto, ce, ieg, mlc, mlnt, mslg  # noqa: F401  (registers the methods)
from labelclean.methods.base import METHODS, Batch, Evidence, Method, TrainContext

__all__ = ["METHODS", "Batch", "Evidence", "Method", "TrainContext"]
