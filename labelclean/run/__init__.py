"""The run folder: its schema (:mod:`.schema`), its writer (:mod:`.writer`) and reader (:class:`Run`)."""

from labelclean.run.folder import Run

__all__ = ["Run"]
