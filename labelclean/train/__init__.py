"""The one training loop shared by every method."""

from labelclean.train.loop import TrainResult, train

__all__ = ["TrainResult", "train"]
