"""Looking at a run: the terminal table, the HTML report and the interactive review."""
