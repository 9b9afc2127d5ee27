"""Human decisions on suspects: ``decisions.csv`` in the run folder, one appended row each.

Columns: ``sample_id, given_label, decision, label, reviewer, decided_at``. ``decision`` is
``accept`` (take the suggestion), ``keep`` (the given label is right), ``relabel`` (another
label) or ``skip``. Rows are appended and flushed as they are made, so an interruption loses
nothing; the last row for a sample wins.
"""

from __future__ import annotations

import csv
import getpass
import os
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from labelclean.errors import DataError
from labelclean.io import read_table

DECISIONS = "decisions.csv"
COLUMNS = ["sample_id", "given_label", "decision", "label", "reviewer", "decided_at"]
KINDS = ("accept", "keep", "relabel", "skip")


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def reviewer() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user database entry
        return "reviewer"


def append_decision(run_dir: Path, row: dict[str, str]) -> None:
    """Append one decision and flush it to disk before returning."""
    path = Path(run_dir) / DECISIONS
    new = not path.exists()
    with path.open("a", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow({k: row.get(k, "") for k in COLUMNS})
        f.flush()
        os.fsync(f.fileno())


def load_decisions(run_dir: Path) -> pd.DataFrame:
    """All decisions of a run (empty table if none), last one per sample kept."""
    path = Path(run_dir) / DECISIONS
    if not path.exists():
        return pd.DataFrame(columns=COLUMNS)
    frame = read_table(path)
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: expected columns {', '.join(COLUMNS)}, missing {', '.join(missing)}")
    return frame.drop_duplicates("sample_id", keep="last").reset_index(drop=True)


def validate_decisions(frame: pd.DataFrame, ids: set[str], classes: list[str], source: Path) -> None:
    """Unknown ids, unknown labels and unknown decision kinds are errors naming the row."""
    problems = []
    known = set(classes)
    for i, r in frame.reset_index(drop=True).iterrows():
        where = f"{source} row {i + 1}"
        if str(r["sample_id"]) not in ids:
            problems.append(f"{where}: sample id {r['sample_id']!r} is not in the run")
        if str(r["decision"]) not in KINDS:
            problems.append(f"{where}: decision {r['decision']!r} is not one of {', '.join(KINDS)}")
        elif str(r["decision"]) != "skip" and str(r["label"]) not in known:
            problems.append(f"{where}: label {r['label']!r} is not a class "
                            f"(classes: {', '.join(classes[:20])})")
    if problems:
        from labelclean.data.dataset import raise_problems

        raise_problems(problems)
