"""The run folder: its schema (:mod:`.schema`), its writer (:mod:`.writer`) and its reader
(:class:`labelclean.run.folder.Run`)."""
